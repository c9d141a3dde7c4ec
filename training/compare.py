"""Candidates compared by the mean over their seeds, and a rule written before the runs judged on them.

Why: two runs of one recipe differ by about as much as most changes tried on it (v2.12's seeds 42 and 1 on
the same dev split: rule mean 0.768 / 0.756, real Hong Kong calm_first F1 0.812 / 0.760), so a candidate's
one seed judged against the shipped seed is judged on noise, and on a biased draw when the shipped model was
itself picked as the best of its runs. Each side is therefore the mean of its seeds. And a rule is honest
only when it is written down before the runs and applied afterwards exactly as written: the rule is a file
(``Rule``, validated on load, errors naming the key) and this module applies it.

A quantity is ``GROUP:METRIC`` from the metrics ``calmfirst evaluate`` writes: GROUP one of its breakdown
groups (``real``, ``written``, ``real tw``, ``real hant``, ``source stc3``...), METRIC one of
``data.vocab.Metric``. Two more: ``rule_mean`` (the mean of real calm_first F1, QWK and type macro-F1, the
experiments' selection figure) and ``contrast_pairs`` (contrast pairs right).

    calmfirst compare v2.12=runs/eval_a/metrics.json,runs/eval_b/metrics.json \\
        v2.14=runs/eval_c,runs/eval_d --rule work/rule.yaml

A rule file (YAML or JSON)::

    baseline: v2.12
    candidate: v2.14
    criteria:
      - {name: rule mean, quantity: rule_mean, at_least_baseline: -0.0045}
      - {name: aim, quantity: ["real tw:calm_first_f1", "real hk:calm_first_f1"], at_least_baseline: 0.005}
      - {name: ECE, quantity: "real hant:calm_first_ece", at_most: 0.05, of: best_seed}

Each side is its seeds' mean unless ``of`` (candidate) or ``baseline_of`` says ``best_seed``: the run with the
highest rule mean, the one a release would ship.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from data.vocab import Metric, values
from training.config import describe

#: what ``rule_mean`` averages (the figure every experiment table of ``training/experiments`` picks by)
RULE_MEAN_OF: tuple[str, ...] = ("real:calm_first_f1", "real:anger_qwk", "real:type_macro_f1")
RULE_MEAN = "rule_mean"
CONTRAST_PAIRS = "contrast_pairs"
#: the columns of the comparison table (any quantity can be named in a rule)
TABLE: tuple[str, ...] = (
    RULE_MEAN,
    *RULE_MEAN_OF,
    "real:threat_f1",
    "written:threat_f1",
    "real cn:calm_first_f1",
    "real tw:calm_first_f1",
    "real hk:calm_first_f1",
    "real hant:type_macro_f1",
    "real hans:calm_first_ece",
    "real hant:calm_first_ece",
    CONTRAST_PAIRS,
)


class CompareError(ValueError):
    """A run, candidate or rule that cannot be compared; the message names the run, candidate or key."""


def _check_quantity(q: str) -> str:
    if q in (RULE_MEAN, CONTRAST_PAIRS):
        return q
    group, sep, metric = q.rpartition(":")
    if not sep or not group:
        raise ValueError(f"{q!r} is not GROUP:METRIC, {RULE_MEAN} or {CONTRAST_PAIRS}")
    if metric not in values(Metric):
        raise ValueError(f"{q!r}: unknown metric {metric!r} (known: {list(values(Metric))})")
    return q


@dataclass(frozen=True)
class Run:
    """One evaluated model: where its metrics came from and every quantity a rule may name."""

    path: str
    split: str
    n: int
    quantities: dict[str, float]
    #: ``training.run.records_fingerprint`` of the evaluated records (None in metrics written before it existed)
    records: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> Run:
        """From ``metrics.json`` (or the report folder holding it) of ``calmfirst evaluate --report-dir``."""
        p = Path(path)
        if p.is_dir():
            p = p / "metrics.json"
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise CompareError(f"{p}: cannot read evaluation metrics: {e}") from e
        breakdown = raw.get("breakdown") if isinstance(raw, dict) else None
        if not isinstance(breakdown, dict):
            raise CompareError(f"{p}: no 'breakdown' (metrics of `calmfirst evaluate` on annotated data are needed)")
        q: dict[str, float] = {}
        for group, row in breakdown.items():
            for metric in values(Metric):
                if isinstance(row.get(metric), int | float):
                    q[f"{group}:{metric}"] = float(row[metric])
        if all(k in q for k in RULE_MEAN_OF):
            q[RULE_MEAN] = sum(q[k] for k in RULE_MEAN_OF) / len(RULE_MEAN_OF)
        contrast = raw.get("contrast")
        if isinstance(contrast, dict) and "n_pairs" in contrast:
            q[CONTRAST_PAIRS] = float(round(contrast["pair_accuracy"] * contrast["n_pairs"]))
        data = raw.get("data") or {}
        records = data.get("records")
        return cls(str(p), str(data.get("split")), int(raw.get("n", 0)), q, str(records) if records else None)

    def get(self, quantity: str) -> float:
        if quantity not in self.quantities:
            raise CompareError(f"{self.path}: has no {quantity!r} (its groups lack it)")
        return self.quantities[quantity]

    def value(self, quantity: str | Sequence[str]) -> float:
        """One quantity, or the mean of several."""
        qs = [quantity] if isinstance(quantity, str) else list(quantity)
        return sum(self.get(q) for q in qs) / len(qs)


@dataclass(frozen=True)
class Candidate:
    """A recipe: its name and its runs (seeds), all evaluated on the same records."""

    name: str
    runs: tuple[Run, ...]

    def mean(self, quantity: str | Sequence[str]) -> float:
        """The mean over the runs of ``quantity`` (of several quantities: of their mean)."""
        return sum(r.value(quantity) for r in self.runs) / len(self.runs)

    def best_seed(self) -> Run:
        """The run a release would ship: the highest rule mean (the first on a tie)."""
        return max(self.runs, key=lambda r: r.get(RULE_MEAN))

    def side(self, quantity: str | Sequence[str], of: Literal["mean", "best_seed"]) -> float:
        """What a criterion reads of this candidate: its seeds' mean, or its best seed's value."""
        return self.best_seed().value(quantity) if of == "best_seed" else self.mean(quantity)


class Criterion(BaseModel):
    """One line of a rule: the candidate's mean (or best seed) against the baseline's mean, or a bound."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    quantity: str | list[str] = Field(description="GROUP:METRIC, rule_mean or contrast_pairs; a list is averaged")
    at_least_baseline: float | None = Field(None, description="pass when candidate >= baseline + this")
    at_most_baseline: float | None = Field(None, description="pass when candidate <= baseline + this (ECE)")
    at_least: float | None = None
    at_most: float | None = None
    of: Literal["mean", "best_seed"] = "mean"
    baseline_of: Literal["mean", "best_seed"] = "mean"

    @field_validator("quantity")
    @classmethod
    def _known(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list):
            if not v:
                raise ValueError("an empty list of quantities")
            return [_check_quantity(q) for q in v]
        return _check_quantity(v)

    @model_validator(mode="after")
    def _one_test(self) -> Criterion:
        tests = [self.at_least_baseline, self.at_most_baseline, self.at_least, self.at_most]
        if sum(t is not None for t in tests) != 1:
            raise ValueError("give exactly one of at_least_baseline, at_most_baseline, at_least, at_most")
        return self

    @property
    def test(self) -> tuple[Literal[">=", "<="], float, bool]:
        """(operator, amount, relative): ``relative`` adds the amount to the baseline's side."""
        for amount, op, relative in (
            (self.at_least_baseline, ">=", True),
            (self.at_most_baseline, "<=", True),
            (self.at_least, ">=", False),
            (self.at_most, "<=", False),
        ):
            if amount is not None:
                return op, amount, relative  # type: ignore[return-value]  # op is one of the two literals
        raise AssertionError("validated: exactly one test is set")

    @property
    def label(self) -> str:
        return self.name or (self.quantity if isinstance(self.quantity, str) else " + ".join(self.quantity))


class Rule(BaseModel):
    """A pre-registered decision: the candidate passes when every criterion does."""

    model_config = ConfigDict(extra="forbid")

    baseline: str
    candidate: str
    criteria: list[Criterion] = Field(min_length=1)
    written: str = Field("", description="when and where it was written down, before the runs")

    @classmethod
    def load(cls, path: str | Path) -> Rule:
        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise CompareError(f"{p}: cannot read the rule: {e}") from e
        if not isinstance(raw, dict):
            raise CompareError(f"{p}: expected a mapping at the top level")
        try:
            return cls(**raw)
        except ValidationError as e:
            raise CompareError(f"{p}: {describe(e, cls)}") from e


@dataclass(frozen=True)
class Check:
    """A criterion as judged: the two sides, the bound it was held to, and whether it passed."""

    label: str
    candidate: float
    baseline: float | None
    bound: float
    op: Literal[">=", "<="]
    passed: bool


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...]
    ship: Run

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def judge(rule: Rule, candidates: Sequence[Candidate]) -> Verdict:
    """Apply ``rule`` to the named baseline and candidate among ``candidates``."""
    by_name = {c.name: c for c in candidates}
    for role, name in (("baseline", rule.baseline), ("candidate", rule.candidate)):
        if name not in by_name:
            raise CompareError(f"rule {role} {name!r} is not among the candidates {sorted(by_name)}")
    base, cand = by_name[rule.baseline], by_name[rule.candidate]
    checks = []
    for c in rule.criteria:
        op, amount, relative = c.test
        value = cand.side(c.quantity, c.of)
        b = base.side(c.quantity, c.baseline_of) if relative else None
        bound = b + amount if b is not None else amount
        passed = value >= bound - 1e-12 if op == ">=" else value <= bound + 1e-12
        checks.append(Check(c.label, value, b, bound, op, passed))
    return Verdict(tuple(checks), cand.best_seed())


def check_same_records(candidates: Sequence[Candidate]) -> None:
    """Every run evaluated on the same records (split, count and, where recorded, the records' fingerprint):
    means over other records compare nothing."""
    runs = [r for c in candidates for r in c.runs]
    seen = {(r.split, r.n) for r in runs}
    fingerprints = {r.records for r in runs}
    if len(seen) > 1 or (None not in fingerprints and len(fingerprints) > 1):
        named = [f"{r.path} ({r.split}, {r.n}, records {r.records})" for r in runs]
        raise CompareError(f"runs evaluated on different records: {named}")


def split_named(spec: str, what: str, form: str) -> tuple[str, str]:
    """``NAME=VALUE`` of a command line, split at the last ``=`` (a name may hold one: "LoRA r=32")."""
    name, sep, value = spec.rpartition("=")
    if not sep or not name or not value:
        raise CompareError(f"{what} {spec!r}: expected {form}")
    return name, value


def parse_candidate(spec: str) -> Candidate:
    """``NAME=PATH[,PATH...]``: a recipe's name and the metrics of each of its seeds."""
    name, paths = split_named(spec, "candidate", "NAME=PATH[,PATH...]")
    return Candidate(name, tuple(Run.load(p) for p in paths.split(",") if p))


def _fmt(q: str, v: float) -> str:
    return f"{v:.1f}" if q == CONTRAST_PAIRS else f"{v:.4f}"


def table(candidates: Sequence[Candidate], columns: Sequence[str] = TABLE) -> list[str]:
    """Markdown: every run, then each candidate's mean (bold); a quantity a run lacks is left blank."""
    lines = ["| run | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]

    def cells(get: Any) -> str:
        out = []
        for q in columns:
            try:
                out.append(_fmt(q, get(q)))
            except CompareError:
                out.append("")
        return " | ".join(out)

    for c in candidates:
        for r in c.runs:
            lines.append(f"| {c.name} `{r.path}` | {cells(r.get)} |")
        lines.append(f"| **{c.name} mean of {len(c.runs)}** | {cells(c.mean)} |")
    return lines


def verdict_lines(rule: Rule, verdict: Verdict) -> list[str]:
    lines = [f"Rule: {rule.candidate} against {rule.baseline}" + (f" (written {rule.written})" if rule.written else "")]
    for c in verdict.checks:
        base = f" (baseline {c.baseline:.4f})" if c.baseline is not None else ""
        lines.append(f"{'PASS' if c.passed else 'FAIL'} {c.label}: {c.candidate:.4f} {c.op} {c.bound:.4f}{base}")
    lines.append(f"VERDICT: {'PASS' if verdict.passed else 'FAIL'}; the seed to ship: {verdict.ship.path}")
    return lines


def compare(specs: Sequence[str], rule_path: str | None = None) -> tuple[list[str], Verdict | None]:
    """The table for ``NAME=PATH[,PATH...]`` candidates, and the rule's verdict when a rule is given."""
    candidates = [parse_candidate(s) for s in specs]
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise CompareError(f"candidate names repeat: {names}")
    check_same_records(candidates)
    lines = table(candidates)
    if rule_path is None:
        return lines, None
    rule = Rule.load(rule_path)
    verdict = judge(rule, candidates)
    return [*lines, "", *verdict_lines(rule, verdict)], verdict


def run(args: argparse.Namespace) -> int:
    """``calmfirst compare``: 0 when the rule passes (or none is given), 1 when it fails, 2 on bad input."""
    try:
        lines, verdict = compare(args.candidates, args.rule)
    except CompareError as e:
        print(f"calmfirst compare: {e}", file=sys.stderr)  # noqa: T201
        return 2
    print("\n".join(lines))  # noqa: T201
    return 1 if verdict is not None and not verdict.passed else 0
