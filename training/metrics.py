"""Evaluation metrics for the three tasks plus calibration, overall and per script."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    precision_recall_fscore_support,
)

from data.schema import COMPLAINT_TYPES
from data.vocab import HEADLINE_METRICS, SELECTION_METRICS, Script, values


def expected_calibration_error(probs: Sequence[float], labels: Sequence[int], *, bins: int = 10) -> float:
    """Binary ECE: |mean confidence - observed frequency| averaged over equal-width bins."""
    p = np.asarray(probs, dtype=float)
    y = np.asarray(labels, dtype=float)
    if len(p) == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            ece += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(ece)


def reliability(probs: Sequence[float], labels: Sequence[int], *, bins: int = 10) -> list[dict[str, float]]:
    p = np.asarray(probs, dtype=float)
    y = np.asarray(labels, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = idx == b
        out.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "n": int(mask.sum()),
                "confidence": float(p[mask].mean()) if mask.any() else float("nan"),
                "frequency": float(y[mask].mean()) if mask.any() else float("nan"),
            }
        )
    return out


def _binary(y_true: Any, y_pred: Any) -> tuple[float, float, float]:
    p, r, f, _ = precision_recall_fscore_support(
        np.asarray(y_true, dtype=bool), np.asarray(y_pred, dtype=bool), average="binary", zero_division=0
    )
    return float(p), float(r), float(f)


def compute_metrics(
    gold: Sequence[dict[str, Any]],
    pred: Sequence[dict[str, Any]],
    *,
    calm_first_level: int = 2,
    types: Sequence[str] = COMPLAINT_TYPES,
) -> dict[str, Any]:
    """Metrics from gold records and predictions.

    Each gold item has ``anger_level``, ``complaint_type``, ``threat``; each
    prediction has ``anger_level``, ``complaint_type``, ``threat`` and
    ``calm_first_prob`` (P(anger >= calm_first_level)).
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold records but {len(pred)} predictions")
    n = len(gold)
    if n == 0:
        return {"n": 0}
    ga = np.array([g["anger_level"] for g in gold])
    pa = np.array([p["anger_level"] for p in pred])
    gcf = ga >= calm_first_level
    pcf = pa >= calm_first_level
    cf_p, cf_r, cf_f = _binary(gcf, pcf)
    gt = [g["complaint_type"] for g in gold]
    pt = [p["complaint_type"] for p in pred]
    present = [t for t in types if t in set(gt) | set(pt)]
    gth = [bool(g["threat"]) for g in gold]
    pth = [bool(p["threat"]) for p in pred]
    th_p, th_r, th_f = _binary(gth, pth)
    per_type = f1_score(gt, pt, labels=present, average=None, zero_division=0)
    cf_probs = [float(p["calm_first_prob"]) for p in pred]
    qwk = cohen_kappa_score(ga, pa, weights="quadratic", labels=[0, 1, 2, 3])
    return {
        "n": n,
        "anger_qwk": float(qwk) if not np.isnan(qwk) else 0.0,
        "anger_accuracy": float((ga == pa).mean()),
        "anger_mae": float(mean_absolute_error(ga, pa)),
        "anger_confusion": confusion_matrix(ga, pa, labels=[0, 1, 2, 3]).tolist(),
        "calm_first_precision": cf_p,
        "calm_first_recall": cf_r,
        "calm_first_f1": cf_f,
        "calm_first_support": int(gcf.sum()),
        "calm_first_ece": expected_calibration_error(cf_probs, gcf.astype(int).tolist()),
        "calm_first_reliability": reliability(cf_probs, gcf.astype(int).tolist()),
        "type_accuracy": float(np.mean([a == b for a, b in zip(gt, pt, strict=True)])),
        "type_macro_f1": float(f1_score(gt, pt, labels=present, average="macro", zero_division=0)),
        "type_f1": {t: float(f) for t, f in zip(present, per_type, strict=True)},
        "type_support": {t: int(sum(1 for g in gt if g == t)) for t in present},
        "type_labels": present,
        "type_confusion": confusion_matrix(gt, pt, labels=present).tolist(),
        "threat_precision": th_p,
        "threat_recall": th_r,
        "threat_f1": th_f,
        "threat_support": int(sum(gth)),
    }


def prediction_row(pred: Any) -> dict[str, Any]:
    """What :func:`compute_metrics` and the error analysis read of a ``model.scores.Prediction``, built once."""
    return {
        "anger_level": pred.anger_level,
        "complaint_type": pred.complaint_type,
        "threat": pred.threat,
        "calm_first_prob": pred.calm_first_prob,
        "anger_probs": pred.anger_probs,
        "type_confidence": max(pred.type_scores.values()),
    }


#: The headline metrics reported per script (defined once in data.vocab).
HEADLINE: tuple[str, ...] = values(HEADLINE_METRICS)


def compute_all(
    gold: Sequence[dict[str, Any]], pred: Sequence[dict[str, Any]], *, calm_first_level: int = 2
) -> dict[str, Any]:
    """Overall metrics plus the same per script (``hant``/``hans``)."""
    out = compute_metrics(gold, pred, calm_first_level=calm_first_level)
    out["per_script"] = {}
    for script in Script:
        idx = [i for i, g in enumerate(gold) if g.get("script") == script]
        if idx:
            m = compute_metrics([gold[i] for i in idx], [pred[i] for i in idx], calm_first_level=calm_first_level)
            out["per_script"][script] = {k: m[k] for k in ("n", *HEADLINE)}
    return out


def selection_score(m: dict[str, Any]) -> float:
    """One number for picking the best epoch: the mean of the four headline task scores."""
    return float(np.mean([m[k] for k in SELECTION_METRICS]))
