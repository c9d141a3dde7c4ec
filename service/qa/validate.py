"""How far to trust the handling score: its agreement with people on the STC-3 helpdesk dialogues.

STC-3's 3,700 real Chinese customer/helpdesk dialogues were each rated by 19 annotators for the
customer's satisfaction (S), the dialogue's effectiveness (E) and whether the task was accomplished
(A), each on -2..2. This command scores every dialogue the way ``calmfirst qa`` does (the shipped
customer model, the agent-turn model, the conversation rules), fits the handling score's weights
on the dialogues whose numeric id % 5 != 0 only, and measures the Spearman correlation of the
score with the annotators' mean S, E and A on the fit dialogues and on the held-out ones
(id % 5 == 0), which are never used to fit, tune or select anything.

    python -m service.qa.validate                 # model/default on ONNX, writes the figures
    python -m service.qa.validate --model model/v2 --no-write   # just print, for another model

It writes ``service/qa/handling_score.json`` (the weights the score uses), the figures to
``service/qa/validation.json`` and the table between the markers of ``service/README_QA.md``.
Model outputs are cached under ``work/cache/`` by model checksum, so a re-run after changing the
score or the rules takes seconds; a new model is scored afresh (ONNX, a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from data.vocab import Role
from model.scores import Prediction
from service.io.store import SqliteStore
from service.qa.scoring import (
    ANGER_SIGNALS,
    DEFAULT_WEIGHTS_FILE,
    FEATURES,
    HandlingModel,
    facts_of,
    fit_handling_model,
)
from service.results import ConversationResult
from service.routing.agent_steps import AgentTurn, CustomerAnger
from service.routing.conversation import Turn

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
HOLDOUT_MOD = 5
DEFAULT_CACHE = ROOT / "work" / "cache" / "qa_validate.sqlite"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "validation.json"
README = Path(__file__).resolve().parents[1] / "README_QA.md"
MARK_START = "<!-- validation:start (written by python -m service.qa.validate) -->"
MARK_END = "<!-- validation:end -->"
TARGETS = ("S", "E", "A")


@dataclass
class Dialogue:
    """One STC-3 dialogue as ``calmfirst qa`` sees it, with the annotators' mean quality scores."""

    id: str
    turns: list[Turn]
    quality: dict[str, float]
    annotators: int

    @property
    def held_out(self) -> bool:
        return is_held_out(self.id)


def is_held_out(dialogue_id: str | int) -> bool:
    """The dialogues the handling score is measured on and never fitted on: numeric id % 5 == 0."""
    return int(dialogue_id) % HOLDOUT_MOD == 0


def dialogues_from_raw(raw: Sequence[dict[str, Any]]) -> list[Dialogue]:
    """STC-3-shaped records (``id``, ``turns`` of ``sender``/``utterances``, ``annotations`` with ``quality``)."""
    out = []
    for dia in raw:
        turns = []
        for t in dia["turns"]:
            text = " ".join(u.strip() for u in t["utterances"]).replace("\ufeff", "").strip()
            if text:
                turns.append(Turn(role=Role.CUSTOMER if t["sender"] == "customer" else Role.AGENT, text=text))
        if not any(t.role == Role.CUSTOMER for t in turns):
            continue
        qualities = [a["quality"] for a in dia.get("annotations", []) if "quality" in a]
        if not qualities:
            continue
        quality = {k: float(np.mean([q[k] for q in qualities])) for k in TARGETS}
        out.append(Dialogue(str(dia["id"]), turns, quality, len(qualities)))
    return out


def load_stc3(path: Path | None = None) -> list[Dialogue]:
    if path is None:
        from data.sources import shared_data_dir

        path = shared_data_dir() / "stc3_helpdesk" / "train_data_cn.json"
    with open(path, encoding="utf-8") as f:
        return dialogues_from_raw(json.load(f))


# ------------------------------------------------------------------ caches of model outputs
class _Store(SqliteStore[Any]):
    """Model outputs as JSON (customer predictions, agent codes), keyed by ``key(kind, model key, input...)``."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            path,
            table="out",
            column="value",
            column_type="TEXT",
            encode=lambda v: json.dumps(v, ensure_ascii=False),
            decode=json.loads,
        )


class CachedScoringModel:
    """A ``ScoringModel`` whose predictions are cached by the model's checksum and the input text."""

    def __init__(self, model: Any, store: _Store, model_key: str) -> None:
        self.model = model
        self.config = model.config
        self.backend = model.backend
        self.store = store
        self.model_key = model_key

    def logits(self, texts: Sequence[str], *, batch_size: int = 32) -> dict[str, np.ndarray]:
        return dict(self.model.logits(texts, batch_size=batch_size))

    def predict(self, texts: Any, *, batch_size: int = 32) -> Any:
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        keys = [_Store.key("customer", self.model_key, t) for t in items]
        have = self.store.get_many(sorted(set(keys)))
        todo = [t for k, t in dict(zip(keys, items, strict=True)).items() if k not in have]
        for start in range(0, len(todo), 256):
            part = todo[start : start + 256]
            preds = self.model.predict(part, batch_size=batch_size)
            rows = [(_Store.key("customer", self.model_key, t), p.to_dict()) for t, p in zip(part, preds, strict=True)]
            self.store.put_many(rows)
            have.update(dict(rows))
        out = [Prediction(**have[k]) for k in keys]
        return out[0] if single else out


class CachedDetector:
    """An agent-turn detector whose outputs are cached by its key, the turn and its context."""

    def __init__(self, detector: Any, store: _Store, key: str) -> None:
        self.detector = detector
        self.store = store
        self.key = key

    def detect(
        self,
        texts: Sequence[str],
        contexts: Sequence[str | None] | None = None,
        anger: Sequence[CustomerAnger] | None = None,
    ) -> list[AgentTurn]:
        ctx = list(contexts) if contexts is not None else [None] * len(texts)
        around = list(anger) if anger is not None else [CustomerAnger()] * len(texts)
        keys = [
            _Store.key("agent", self.key, t, c or "", _anger_key(a)) for t, c, a in zip(texts, ctx, around, strict=True)
        ]
        have = self.store.get_many(sorted(set(keys)))
        todo = {k: (t, c, a) for k, t, c, a in zip(keys, texts, ctx, around, strict=True) if k not in have}
        items = list(todo.items())
        for start in range(0, len(items), 512):
            part = items[start : start + 512]
            found = self.detector.detect(
                [t for _, (t, _, _) in part], [c for _, (_, c, _) in part], [a for _, (_, _, a) in part]
            )
            rows = [
                (k, {"steps": a.steps, "mistakes": a.mistakes, "scores": a.scores})
                for (k, _), a in zip(part, found, strict=True)
            ]
            self.store.put_many(rows)
            have.update(dict(rows))
        return [AgentTurn(**have[k]) for k in keys]


def _anger_key(a: CustomerAnger) -> str:
    """The customer's anger around a turn as part of a cache key (to 6 places: a score, not a decision)."""
    return ",".join("" if v is None else f"{v:.6f}" for v in (a.before, a.after))


def file_checksum(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def model_key(model_dir: Path, backend: str) -> str:
    from model.config import CONFIG_NAME

    return f"{backend}:{file_checksum(model_dir / CONFIG_NAME, *sorted(model_dir.glob('*.safetensors')))}"


RIDGES = (0.0, 5.0, 30.0, 100.0)
RIDGE_RULE = (
    "5-fold CV on the fit dialogues (mean of the per-fold Spearman); the largest ridge within 0.005 of the best"
)


def choose_ridge(x: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0) -> tuple[float, dict[str, float]]:
    """The ridge penalty, chosen by cross-validation on the fit dialogues only (``RIDGE_RULE``)."""
    fold = np.random.default_rng(seed).integers(0, folds, len(y))
    cv: dict[str, float] = {}
    for ridge in RIDGES:
        per_fold = []
        for k in range(folds):
            m = fit_handling_model(x[fold != k], y[fold != k], ridge=ridge)
            pred = [m.raw(dict(zip(FEATURES, row, strict=True))) for row in x[fold == k]]
            # per fold: each fold's fit has its own scale, so pooling the folds' predictions would mix scales
            per_fold.append(spearman(pred, y[fold == k]))
        cv[str(ridge)] = round(float(np.nanmean(per_fold)), 4)
    measured = {r: cv[str(r)] for r in RIDGES if not np.isnan(cv[str(r)])}
    if not measured:  # folds too small to rank (a handful of dialogues): no evidence, the smallest penalty
        return RIDGES[0], cv
    best = max(measured.values())
    return max(r for r, c in measured.items() if c >= best - 0.005), cv


def previous_handling_score(result: ConversationResult) -> float:
    """The handling score before this validation existed (fixed points; kept to show what changed)::

    100 - 15 per turn argued/blamed/last word - 10 per turn interrogated/solution while furious
        - 5 per core step missed - 20 threat not handed over + 10 calmed down - 10 anger rose
    """
    s = result.state
    counts: dict[str, int] = {}
    for t in result.turns:
        for m in getattr(t, "mistakes", None) or []:
            counts[m] = counts.get(m, 0) + 1
    heavy = {"argued", "blamed_customer", "last_word"}
    total = 100 - sum((15 if m in heavy else 10) * n for m, n in counts.items())
    total -= 5 * sum(1 for c in s.steps_missed if c != "escalate_supervisor")
    total -= 20 if s.escalate and "escalate_supervisor" not in s.steps_taken else 0
    series = s.anger_series
    if len(series) >= 2:
        total += 10 if series[-1] < max(series) else (-10 if min(series[:-1]) < series[-1] else 0)
    return float(max(0, min(100, total)))


# ------------------------------------------------------------------ statistics
def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def bootstrap_ci(
    x: np.ndarray, y: np.ndarray, *, n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the Spearman correlation over dialogues (None if it is undefined)."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n):
        idx = rng.integers(0, len(x), len(x))
        rx, ry = rankdata(x[idx]), rankdata(y[idx])
        if rx.std() == 0 or ry.std() == 0:
            continue
        stats.append(float(np.corrcoef(rx, ry)[0, 1]))
    if not stats:
        return None
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return round(float(lo), 3), round(float(hi), 3)


def correlations(scores: np.ndarray, quality: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: round(spearman(scores, quality[k]), 4) for k in TARGETS}


# ------------------------------------------------------------------ the validation
def analyze_dialogues(
    conv_analyzer: Any, dialogues: Sequence[Dialogue], *, chunk: int = 128
) -> list[ConversationResult]:
    out: list[ConversationResult] = []
    started = time.perf_counter()
    for start in range(0, len(dialogues), chunk):
        part = dialogues[start : start + chunk]
        out.extend(conv_analyzer.analyze_many([(d.id, d.turns) for d in part]))
        logger.info("%d/%d dialogues analysed (%.0f s)", len(out), len(dialogues), time.perf_counter() - started)
    return out


def signal_matrix(facts: Sequence[Any]) -> np.ndarray:
    """The handling score's signals (``FEATURES`` order), one row per conversation's facts."""
    return np.array([[x.features()[f] for f in FEATURES] for x in facts], dtype=np.float64)


def validate(
    dialogues: Sequence[Dialogue],
    results: Sequence[ConversationResult],
    *,
    bootstrap: int = 1000,
    features_out: Path | None = None,
) -> tuple[HandlingModel, dict[str, Any]]:
    """Fit the handling model on the non-held-out dialogues and measure it (and baselines) on both parts.

    ``features_out``: also save the signals, the held-out mask and the ratings (.npz), to study the
    score's form without re-reading 3,700 chats.
    """
    facts = [facts_of(r) for r in results]
    feats = signal_matrix(facts)
    held = np.array([d.held_out for d in dialogues])
    quality = {k: np.array([d.quality[k] for d in dialogues]) for k in TARGETS}
    if features_out is not None:
        arrays: dict[str, Any] = {"features": feats, "names": np.array(FEATURES), "held_out": held, **quality}
        np.savez(features_out, **arrays)
    ridge, cv = choose_ridge(feats[~held], quality["S"][~held])
    model = fit_handling_model(feats[~held], quality["S"][~held], ridge=ridge)
    score = np.array([model.score_features(dict(zip(FEATURES, row, strict=True))) for row in feats], dtype=float)
    raw = np.array([model.raw(dict(zip(FEATURES, row, strict=True))) for row in feats], dtype=float)
    # the same fit on the anger signals alone: what the agent's signals add (or cost) is the difference
    anger_cols = [FEATURES.index(f) for f in ANGER_SIGNALS]
    anger_model = fit_handling_model(feats[~held][:, anger_cols], quality["S"][~held], features=ANGER_SIGNALS)
    anger_fit = np.array([anger_model.raw(dict(zip(ANGER_SIGNALS, row, strict=True))) for row in feats[:, anger_cols]])
    old = np.array([previous_handling_score(r) for r in results], dtype=float)
    final = np.array([x.anger_series[-1] for x in facts], dtype=float)
    peak = np.array([max(x.anger_series) for x in facts], dtype=float)
    baselines = {
        "handling_score": score,
        "handling_score_unrounded": raw,
        "anger_signals_fitted": anger_fit,
        "previous_handling_score": old,
        "final_anger_alone": -final,
        "final_and_peak_anger": -(final + 0.5 * peak),
        # the log is monotone: the same ranking as the final anger score itself
        "final_anger_score_alone": -feats[:, FEATURES.index("final_anger_log")],
    }
    figures: dict[str, Any] = {}
    for name, values in baselines.items():
        figures[name] = {
            "fit": correlations(values[~held], {k: v[~held] for k, v in quality.items()}),
            "held_out": correlations(values[held], {k: v[held] for k, v in quality.items()}),
        }
    ci = bootstrap_ci(score[held], quality["S"][held], n=bootstrap) if bootstrap else None
    per_feature = {
        f: round(spearman(feats[~held, j], quality["S"][~held]), 4) for j, f in enumerate(FEATURES)
    }  # fit part only: what each signal says on its own
    report = {
        "dialogues": {"all": len(dialogues), "fit": int((~held).sum()), "held_out": int(held.sum())},
        "annotators_per_dialogue": round(float(np.mean([d.annotators for d in dialogues])), 1),
        "held_out_rule": f"numeric dialogue id % {HOLDOUT_MOD} == 0; never used to fit, tune or select",
        "spearman": figures,
        "held_out_S_ci95": ci,
        "feature_spearman_with_S_on_fit": per_feature,
        "ridge": {"chosen": ridge, "cv_spearman_S_on_fit": cv, "rule": RIDGE_RULE},
        "formula": model.formula(),
        "weights": model.to_dict(),
    }
    return model, report


def write_readme(report: dict[str, Any], path: Path = README) -> bool:
    """Replace the block between the markers of README_QA.md with the figures; False if there are no markers."""
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    if MARK_START not in text or MARK_END not in text:
        return False
    block = MARK_START + "\n" + readme_block(report) + "\n" + MARK_END
    head, rest = text.split(MARK_START, 1)
    _, tail = rest.split(MARK_END, 1)
    path.write_text(head + block + tail, encoding="utf-8")
    return True


def readme_block(report: dict[str, Any]) -> str:
    s = report["spearman"]
    d = report["dialogues"]
    lines = [
        f"Measured {report['created']} with `{report['command']}`; model `{report['model']['name']}` "
        f"{report['model']['version']} ({report['model']['backend']}), agent-turn model `{report['agent_model']}`.",
        f"{d['all']} STC-3 dialogues: weights fitted on {d['fit']} (id % 5 != 0), measured on {d['held_out']} "
        f"held-out (id % 5 == 0). Spearman correlation with the annotators' mean score:",
        "",
        "| score | S fit | S held-out | E held-out | A held-out |",
        "|---|---|---|---|---|",
    ]
    names = {
        "handling_score": "**handling score (this formula)**",
        "anger_signals_fitted": "the same fit on the anger signals alone (no agent behaviour)",
        "previous_handling_score": "previous handling score (points)",
        "final_anger_alone": "final anger level alone (lower = better)",
        "final_and_peak_anger": "final + 0.5 × peak anger level",
        "final_anger_score_alone": "final anger score alone (0-1)",
    }
    for key, label in names.items():
        f = s[key]
        lines.append(
            f"| {label} | {f['fit']['S']:.3f} | {f['held_out']['S']:.3f} | {f['held_out']['E']:.3f} "
            f"| {f['held_out']['A']:.3f} |"
        )
    ci = report.get("held_out_S_ci95")
    if ci:
        lines += ["", f"95% bootstrap interval of the held-out S correlation: {ci[0]:.2f} to {ci[1]:.2f}."]
    lines += ["", "```", report["formula"], "```"]
    return "\n".join(lines)


def _build_analyzer(args: argparse.Namespace, store: _Store) -> tuple[Any, dict[str, Any], str]:
    from model.loading import load_model
    from service.analyzer import Analyzer, ConversationAnalyzer
    from service.routing.agent_model import load_agent_detector

    model_dir = Path(args.model)
    model = load_model(model_dir, backend=args.backend, threads=args.threads)
    key = model_key(model_dir, model.backend)
    export = getattr(model, "export_dir", None)
    if export is not None:  # the ONNX export (recipe, quantisation) is part of what the scores depend on
        key += ":" + Path(export).name
    cached = CachedScoringModel(model, store, key)
    encoder = None
    if args.embedding_cache is not None and (Path(args.agent_model) / "agent_model.json").is_file():
        from service.routing.agent_model import CachedEncoder, E5Encoder, EmbeddingCache

        encoder = CachedEncoder(E5Encoder(threads=args.threads), EmbeddingCache(args.embedding_cache))
    # the PyTorch encoder also without the embedding cache: the recorded validation figures were measured with it
    detector = load_agent_detector(args.agent_model, encoder=encoder, backend="torch")
    agent_dir = Path(args.agent_model)
    kind = getattr(detector, "kind", "tfidf")
    agent_key = f"{kind}:{file_checksum(*sorted(agent_dir.glob('*')))}" if kind != "tfidf" else "tfidf"
    if kind == "tfidf":
        from data.loader import AGENT_TURNS_FILE

        agent_key += ":" + file_checksum(AGENT_TURNS_FILE)
    analyzer = Analyzer(cached, batch_size=args.batch_size)
    conv = ConversationAnalyzer(analyzer, CachedDetector(detector, store, agent_key))
    info = {
        "name": model.config.name,
        "version": model.config.version,
        "backend": model.backend,
        "path": str(args.model),
        "reads_context": conv.reads_context,
    }
    label = {"e5-heads": f"e5 + character n-gram ({agent_dir.name})", "tfidf": "TF-IDF fallback"}.get(kind, kind)
    return conv, info, label


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m service.qa.validate") -> int:  # pragma: no cover
    from service.routing.agent_model import DEFAULT_CACHE as AGENT_CACHE
    from service.routing.agent_model import DEFAULT_MODEL_DIR as AGENT_DIR
    from service.settings import DEFAULT_MODEL_DIR

    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="customer model folder (default: model/default)")
    ap.add_argument("--backend", default="onnx", choices=("onnx", "torch", "auto"))
    ap.add_argument("--agent-model", default=str(AGENT_DIR), help="agent-turn model folder (TF-IDF if absent)")
    ap.add_argument("--data", type=Path, default=None, help="train_data_cn.json (default: ../shared/data)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="model outputs (SQLite)")
    ap.add_argument("--embedding-cache", type=Path, default=AGENT_CACHE, help="e5 embeddings of agent turns (SQLite)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_FILE)
    ap.add_argument("--readme", type=Path, default=README)
    ap.add_argument("--no-write", action="store_true", help="print the figures only; write no file")
    ap.add_argument("--features-out", type=Path, default=None, help="also save the signals and ratings (.npz)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    dialogues = load_stc3(args.data)
    store = _Store(args.cache)
    conv, info, agent_kind = _build_analyzer(args, store)
    results = analyze_dialogues(conv, dialogues)
    model, report = validate(dialogues, results, bootstrap=args.bootstrap, features_out=args.features_out)
    report = {
        "created": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": "python -m service.qa.validate"
        + (f" --model {args.model}" if args.model != str(DEFAULT_MODEL_DIR) else ""),
        "model": info,
        "agent_model": agent_kind,
        **report,
    }
    print(json.dumps({k: report[k] for k in ("dialogues", "spearman", "held_out_S_ci95")}, indent=2))  # noqa: T201
    print(report["formula"])  # noqa: T201
    if not args.no_write:
        model.save(args.weights, validation={k: report[k] for k in ("created", "command", "model", "agent_model")})
        args.output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if not write_readme(report, args.readme):
            logger.warning("%s has no validation markers; figures written to %s only", args.readme, args.output)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
