"""Evaluation that tells the truth: real vs written, per source, script and region, with
bootstrap intervals, and the most confident mistakes.

Why: one number over a split that mixes the project's own clean written messages with real
traffic hides exactly the gap users hit (0.93 on written Traditional vs 0.70 on real reviews).
So real and written records are never pooled in a reported figure, each region is shown alone,
and every headline figure carries a 95% bootstrap interval so a reader sees what is noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from data.schema import WRITTEN_SOURCE, kind_of
from data.sources import known_region
from training.metrics import HEADLINE, compute_metrics

#: the figures that get a bootstrap interval
INTERVAL_METRICS = ("calm_first_f1", "anger_qwk", "type_macro_f1", "type_accuracy", "threat_f1", "calm_first_ece")


def groups(golds: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    """Index lists: real/written, real per region and script, every source."""
    out: dict[str, list[int]] = {}

    def add(name: str, pred: Callable[[dict[str, Any]], bool]) -> None:
        idx = [i for i, g in enumerate(golds) if pred(g)]
        if idx:
            out[name] = idx

    def having(kind: str | None = None, **fields: str) -> Callable[[dict[str, Any]], bool]:
        return lambda g: (kind is None or kind_of(g["source"]) == kind) and all(g[k] == v for k, v in fields.items())

    add("real", having("real"))
    add("written", having("written"))
    for region in ("cn", "tw", "hk"):
        add(f"real {region}", having("real", region=region))
    for script in ("hans", "hant"):
        add(f"real {script}", having("real", script=script))
        add(f"written {script}", having("written", script=script))
    for source in sorted({g["source"] for g in golds}):
        add(f"source {source}", having(source=source))
    return out


def bootstrap(
    golds: Sequence[dict[str, Any]], preds: Sequence[dict[str, Any]], *, n: int = 200, seed: int = 0
) -> dict[str, list[float]]:
    """95% percentile intervals of the headline metrics over ``n`` resamples of the records."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in INTERVAL_METRICS}
    size = len(golds)
    for _ in range(n):
        idx = rng.integers(0, size, size)
        m = compute_metrics([golds[i] for i in idx], [preds[i] for i in idx])
        for k in INTERVAL_METRICS:
            draws[k].append(m[k])
    return {
        k: [round(float(np.percentile(v, 2.5)), 3), round(float(np.percentile(v, 97.5)), 3)] for k, v in draws.items()
    }


def breakdown(
    golds: Sequence[dict[str, Any]], preds: Sequence[dict[str, Any]], *, resamples: int = 200
) -> dict[str, dict[str, Any]]:
    """Headline metrics (and intervals for the real groups) for every group of ``groups``."""
    out: dict[str, dict[str, Any]] = {}
    for name, idx in groups(golds).items():
        g = [golds[i] for i in idx]
        p = [preds[i] for i in idx]
        m = compute_metrics(g, p)
        row: dict[str, Any] = {"n": len(idx), **{k: round(float(m[k]), 4) for k in (*HEADLINE, "type_accuracy")}}
        if resamples and not name.startswith("source") and len(idx) >= 30:
            row["ci95"] = bootstrap(g, p, n=resamples)
        out[name] = row
    return out


def confident_mistakes(
    golds: Sequence[dict[str, Any]], preds: Sequence[dict[str, Any]], *, k: int = 20
) -> list[dict[str, Any]]:
    """The ``k`` mistakes the model was surest of (anger level or type wrong); ids only for
    shared text, text for the project's written messages."""
    rows = []
    for g, p in zip(golds, preds, strict=True):
        wrong = []
        if g["anger_level"] != p["anger_level"]:
            wrong.append(("anger", g["anger_level"], p["anger_level"], max(p["anger_probs"])))
        if g["complaint_type"] != p["complaint_type"]:
            wrong.append(("type", g["complaint_type"], p["complaint_type"], p["type_confidence"]))
        for what, gold, pred, conf in wrong:
            rows.append(
                {
                    "id": g["id"],
                    "source": g["source"],
                    "region": g["region"],
                    "what": what,
                    "gold": gold,
                    "pred": pred,
                    "confidence": round(float(conf), 3),
                    "text": g.get("text", "") if g["source"] == WRITTEN_SOURCE else "",
                }
            )
    rows.sort(key=lambda r: -r["confidence"])
    return rows[:k]


def gold_record(ex: Any) -> dict[str, Any]:
    """The fields ``breakdown`` needs from a ``training.data.Example``."""
    return {
        "id": ex.id,
        "source": ex.source,
        "region": ex.meta.get("region") or known_region(ex.source),
        "script": ex.script,
        "anger_level": ex.anger_level,
        "complaint_type": ex.complaint_type,
        "threat": ex.threat,
        "text": ex.text,
    }


#: the columns of every breakdown table (card, report, experiment tables), in order, with their headings
COLUMN_HEADINGS: dict[str, str] = {
    "calm_first_f1": "calm_first F1",
    "anger_qwk": "anger QWK",
    "type_macro_f1": "type macro-F1",
    "type_accuracy": "type acc.",
    "threat_f1": "threat F1",
    "calm_first_ece": "ECE",
}
COLUMNS: tuple[str, ...] = tuple(COLUMN_HEADINGS)


def table_head(*first: str) -> list[str]:
    """The heading and rule lines of a breakdown table whose rows start with the ``first`` columns."""
    cols = [*first, *COLUMN_HEADINGS.values()]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def row_cells(r: dict[str, Any]) -> str:
    """One breakdown row's metric cells (with the 95% interval where the row has one)."""
    ci = r.get("ci95", {})

    def cell(k: str) -> str:
        return f"{r[k]:.3f}" + (f" [{ci[k][0]:.2f}, {ci[k][1]:.2f}]" if k in ci else "")

    return " | ".join(cell(k) for k in COLUMNS)


def markdown(bd: dict[str, dict[str, Any]], mistakes: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "## Real and written apart, per region, script and source",
        "",
        "95% bootstrap intervals (200 resamples of the records) in brackets; sources without one.",
        "",
        *table_head("group", "n"),
    ]
    for name, r in bd.items():
        lines.append(f"| {name} | {r['n']} | {row_cells(r)} |")
    lines += [
        "",
        "## The 20 most confident mistakes",
        "",
        "Shared-source texts are not reproduced (ids only); written messages are the project's own.",
        "",
        "| id | source | region | what | gold | predicted | confidence | text |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in mistakes:
        lines.append(
            f"| {m['id']} | {m['source']} | {m['region']} | {m['what']} | {m['gold']} | {m['pred']} | "
            f"{m['confidence']:.3f} | {m['text'][:60]} |"
        )
    return lines
