"""Evaluation metrics on small cases checked by hand."""

from __future__ import annotations

import pytest

from training.metrics import compute_all, compute_metrics, expected_calibration_error


def _gold(level: int, ctype: str = "billing", threat: bool = False, script: str = "hans") -> dict:
    return {"anger_level": level, "complaint_type": ctype, "types": [ctype], "threat": threat, "script": script}


def _pred(level: int, ctype: str = "billing", threat: bool = False) -> dict:
    return {"anger_level": level, "calm_first_prob": float(level >= 2), "complaint_type": ctype, "threat": threat}


def test_metrics_perfect_predictions() -> None:
    gold = [_gold(0, "none"), _gold(1), _gold(2, "delivery"), _gold(3, "delivery", True)]
    pred = [_pred(0, "none"), _pred(1), _pred(2, "delivery"), _pred(3, "delivery", True)]
    m = compute_metrics(gold, pred)
    assert m["anger_qwk"] == pytest.approx(1.0)
    assert m["anger_accuracy"] == 1.0 and m["anger_mae"] == 0.0
    assert m["calm_first_f1"] == 1.0 and m["threat_f1"] == 1.0
    assert m["type_accuracy"] == 1.0


def test_metrics_hand_checked_case() -> None:
    # gold levels 0,1,2,3 ; predicted 0,2,2,1
    gold = [_gold(0, "none"), _gold(1), _gold(2), _gold(3, "delivery", True)]
    pred = [_pred(0, "none"), _pred(2), _pred(2, "delivery"), _pred(1, "delivery", False)]
    m = compute_metrics(gold, pred)
    assert m["anger_accuracy"] == pytest.approx(0.5)
    assert m["anger_mae"] == pytest.approx((0 + 1 + 0 + 2) / 4)
    # calm_first: gold [F,F,T,T], pred [F,T,T,F] -> tp 1, fp 1, fn 1
    assert m["calm_first_precision"] == pytest.approx(0.5)
    assert m["calm_first_recall"] == pytest.approx(0.5)
    assert m["calm_first_f1"] == pytest.approx(0.5)
    # threat: one gold threat, missed
    assert m["threat_recall"] == 0.0 and m["threat_f1"] == 0.0
    # types: gold none,billing,billing,delivery ; pred none,billing,delivery,delivery -> 3/4
    assert m["type_accuracy"] == pytest.approx(0.75)
    # per-type F1: none 1, billing (p1 r.5) 2/3, delivery (p.5 r1) 2/3 -> macro over present labels
    assert m["type_f1"]["none"] == pytest.approx(1.0)
    assert m["type_f1"]["billing"] == pytest.approx(2 / 3)
    assert m["type_f1"]["delivery"] == pytest.approx(2 / 3)
    # quadratic-weighted kappa by hand: O = diag-ish counts, E from marginals
    from sklearn.metrics import cohen_kappa_score

    assert m["anger_qwk"] == pytest.approx(cohen_kappa_score([0, 1, 2, 3], [0, 2, 2, 1], weights="quadratic"))
    assert m["anger_confusion"][3][1] == 1 and m["anger_confusion"][1][2] == 1


def test_metrics_per_script_split() -> None:
    gold = [_gold(2, script="hant"), _gold(0, "none", script="hans")]
    pred = [_pred(2), _pred(2, "none")]
    m = compute_all(gold, pred)
    assert m["per_script"]["hant"]["calm_first_f1"] == 1.0
    assert m["per_script"]["hans"]["calm_first_f1"] == 0.0
    assert m["per_script"]["hant"]["n"] == 1 and m["per_script"]["hans"]["n"] == 1


def test_metrics_ece_hand_checked() -> None:
    # bin [0.8, 0.9): two predictions at 0.8, one positive -> |0.8 - 0.5| weighted 2/4
    # bin [0.2, 0.3): two predictions at 0.2, both negative -> |0.2 - 0| weighted 2/4
    ece = expected_calibration_error([0.8, 0.8, 0.2, 0.2], [1, 0, 0, 0], bins=10)
    assert ece == pytest.approx(0.5 * 0.3 + 0.5 * 0.2)
    assert expected_calibration_error([1.0, 0.0], [1, 0]) == pytest.approx(0.0)
