"""Candidates are compared by their seeds' means, and a rule file is applied exactly as written.

Every expected figure below is worked out by hand from the fixture metrics.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.compare import (
    CompareError,
    Criterion,
    Rule,
    Run,
    compare,
    judge,
    parse_candidate,
)


def _write(
    path: Path,
    *,
    cf: float,
    qwk: float,
    typ: float,
    tw: float,
    ece: float,
    pairs: float,
    n: int = 100,
    records: str | None = None,
) -> Path:
    row = {
        "n": 80,
        "calm_first_f1": cf,
        "anger_qwk": qwk,
        "type_macro_f1": typ,
        "threat_f1": 0.5,
        "calm_first_ece": ece,
    }
    metrics = {
        "n": n,
        "data": {"path": "annotations", "split": "dev", "n": n, **({"records": records} if records else {})},
        "breakdown": {
            "real": {**row, "ci95": {"calm_first_f1": [0.0, 1.0]}},
            "real tw": {**row, "calm_first_f1": tw},
            "written": {**row, "n": 20},
        },
        "contrast": {"n_pairs": 8, "pair_accuracy": pairs, "item_accuracy": 0.9},
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return path


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    return {
        # baseline seeds: rule means (0.8+0.8+0.5)/3 = 0.7 and (0.6+0.8+0.5)/3 = 0.6333; mean 0.66667
        "b1": _write(tmp_path / "b1", cf=0.8, qwk=0.8, typ=0.5, tw=0.70, ece=0.02, pairs=0.75),
        "b2": _write(tmp_path / "b2", cf=0.6, qwk=0.8, typ=0.5, tw=0.60, ece=0.04, pairs=0.5),
        # candidate seeds: (0.7+0.8+0.5)/3 = 0.66667 and (0.7+0.8+0.8)/3 = 0.76667; mean 0.71667
        "c1": _write(tmp_path / "c1", cf=0.7, qwk=0.8, typ=0.5, tw=0.66, ece=0.03, pairs=0.625),
        "c2": _write(tmp_path / "c2", cf=0.7, qwk=0.8, typ=0.8, tw=0.66, ece=0.06, pairs=0.625),
    }


def test_a_run_reads_every_group_metric_the_rule_mean_and_contrast_pairs(runs: dict[str, Path]) -> None:
    r = Run.load(runs["b1"])  # a report folder: its metrics.json is read
    assert r.split == "dev" and r.n == 100
    assert r.get("real tw:calm_first_f1") == 0.7
    assert r.get("rule_mean") == pytest.approx(0.7)
    assert r.get("contrast_pairs") == 6.0  # 0.75 of 8 pairs
    with pytest.raises(CompareError, match="has no 'real hk:calm_first_f1'"):
        r.get("real hk:calm_first_f1")


def test_candidates_are_the_mean_of_their_seeds(runs: dict[str, Path]) -> None:
    base = parse_candidate(f"base={runs['b1']},{runs['b2']}")
    cand = parse_candidate(f"cand={runs['c1']},{runs['c2']}")
    assert base.mean("rule_mean") == pytest.approx((0.7 + 1.9 / 3) / 2)
    assert cand.mean("real:type_macro_f1") == pytest.approx(0.65)
    assert cand.mean(["real:calm_first_f1", "real tw:calm_first_f1"]) == pytest.approx(0.68)
    assert cand.best_seed().path.endswith("c2/metrics.json")  # the higher rule mean is the one a release ships


def test_a_rule_passes_and_fails_on_the_hand_worked_figures(runs: dict[str, Path]) -> None:
    specs = [f"base={runs['b1']},{runs['b2']}", f"cand={runs['c1']},{runs['c2']}"]
    rule = Rule(
        baseline="base",
        candidate="cand",
        criteria=[
            Criterion(name="rule mean +0.05", quantity="rule_mean", at_least_baseline=0.05),  # 0.71667 >= 0.71667
            Criterion(quantity="real tw:calm_first_f1", at_least_baseline=0.0),  # 0.66 >= 0.65
            Criterion(quantity="contrast_pairs", at_least_baseline=-1),  # 5 >= 5 - 1
            Criterion(quantity="real:calm_first_ece", at_most=0.05, of="best_seed"),  # c2: 0.06 > 0.05
        ],
    )
    verdict = judge(rule, [parse_candidate(s) for s in specs])
    assert [c.passed for c in verdict.checks] == [True, True, True, False]
    assert verdict.checks[0].bound == pytest.approx((0.7 + 1.9 / 3) / 2 + 0.05)
    assert verdict.checks[3].candidate == 0.06 and verdict.checks[3].baseline is None
    assert not verdict.passed
    rule.criteria.pop()
    assert judge(rule, [parse_candidate(s) for s in specs]).passed
    # against the baseline's best seed (b1: rule mean 0.7) instead of its mean
    rule.criteria = [Criterion(quantity="rule_mean", at_least_baseline=0.02, baseline_of="best_seed")]
    check = judge(rule, [parse_candidate(s) for s in specs]).checks[0]
    assert check.baseline == pytest.approx(0.7) and check.bound == pytest.approx(0.72) and not check.passed


def test_rule_files_are_validated_and_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "rule.yaml"
    bad.write_text(
        "baseline: a\ncandidate: b\ncriteria:\n"
        "  - {quantity: 'real:calm_first_f1', at_least_baseline: 0.0, at_most: 0.05}\n"
        "  - {quantity: 'real:f1', at_least: 0.5}\n"
        "  - {quantity: rule_mean, at_least: 0.5, of: worst_seed}\n"
        "  - {quantity: rule_mean, at_lest: 0.5}\n",
        encoding="utf-8",
    )
    with pytest.raises(CompareError) as e:
        Rule.load(bad)
    msg = str(e.value)
    assert "criteria[0]: Value error, give exactly one of" in msg
    assert "criteria[1].quantity" in msg and "unknown metric 'f1'" in msg
    assert "criteria[2].of" in msg
    assert "criteria[3].at_lest: unknown setting" in msg


def test_runs_on_other_records_and_unknown_candidates_are_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    other = _write(tmp_path / "other", cf=0.7, qwk=0.8, typ=0.5, tw=0.6, ece=0.03, pairs=0.5, n=99)
    with pytest.raises(CompareError, match="different records"):
        compare([f"base={runs['b1']}", f"cand={other}"])
    # the same split and count, other records (found by an outside walkthrough: two data files were compared)
    a = _write(tmp_path / "fa", cf=0.7, qwk=0.8, typ=0.5, tw=0.6, ece=0.03, pairs=0.5, records="aaaa")
    b = _write(tmp_path / "fb", cf=0.7, qwk=0.8, typ=0.5, tw=0.6, ece=0.03, pairs=0.5, records="bbbb")
    with pytest.raises(CompareError, match="different records"):
        compare([f"base={a}", f"cand={b}"])
    same = _write(tmp_path / "fa2", cf=0.7, qwk=0.8, typ=0.5, tw=0.6, ece=0.03, pairs=0.5, records="aaaa")
    compare([f"base={a}", f"cand={same}"])  # the same records: compared
    with pytest.raises(CompareError, match="expected NAME=PATH"):
        compare([str(runs["b1"])])
    with pytest.raises(CompareError, match="cannot read evaluation metrics"):
        compare([f"base={tmp_path / 'missing'}"])
    (tmp_path / "list.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(CompareError, match="no 'breakdown'"):
        compare([f"base={tmp_path / 'list.json'}"])
    rule = tmp_path / "r.yaml"
    rule.write_text("baseline: base\ncandidate: nope\ncriteria: [{quantity: rule_mean, at_least: 0}]\n")
    with pytest.raises(CompareError, match="rule candidate 'nope' is not among"):
        compare([f"base={runs['b1']}"], str(rule))


def test_cli_prints_the_table_and_exits_by_the_verdict(runs: dict[str, Path], tmp_path: Path) -> None:
    rule = tmp_path / "rule.yaml"
    rule.write_text(
        "baseline: base\ncandidate: cand\nwritten: before the runs\n"
        "criteria:\n  - {name: aim, quantity: rule_mean, at_least_baseline: 0.06}\n",  # 0.71667 < 0.72667
        encoding="utf-8",
    )
    cmd = [sys.executable, "-m", "service.cli", "compare", f"base={runs['b1']},{runs['b2']}"]
    cmd += [f"cand={runs['c1']},{runs['c2']}", "--rule", str(rule)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert out.returncode == 1, out.stderr
    assert "| **cand mean of 2** | 0.7167 |" in out.stdout
    assert "FAIL aim: 0.7167 >= 0.7267 (baseline 0.6667)" in out.stdout
    assert "VERDICT: FAIL" in out.stdout
    bad = subprocess.run([*cmd[:4], "cand"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "calmfirst compare: candidate 'cand'" in bad.stderr
