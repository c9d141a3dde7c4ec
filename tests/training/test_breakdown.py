"""Per-group evaluation on hand-checked cases: real and written apart, regions, intervals, mistakes."""

from __future__ import annotations

from training.breakdown import bootstrap, breakdown, confident_mistakes, groups, markdown


def _g(i: int, source: str, region: str, level: int, ctype: str, script: str = "hant") -> dict:
    return {
        "id": f"r{i}",
        "source": source,
        "region": region,
        "script": script,
        "anger_level": level,
        "complaint_type": ctype,
        "threat": False,
        "text": f"text {i}",
    }


def _p(level: int, ctype: str, conf: float = 0.9) -> dict:
    probs = [0.0] * 4
    probs[level] = conf
    return {
        "anger_level": level,
        "complaint_type": ctype,
        "threat": False,
        "calm_first_prob": 1.0 if level >= 2 else 0.0,
        "anger_probs": probs,
        "type_confidence": conf,
    }


GOLD = [
    _g(0, "calmfirst_written", "tw", 2, "billing"),
    _g(1, "calmfirst_written", "hk", 0, "none"),
    _g(2, "tw_hospital_reviews", "tw", 2, "service_quality"),
    _g(3, "tw_hospital_reviews", "tw", 0, "none"),
    _g(4, "hk_openrice_senti", "hk", 3, "staff_attitude"),
    _g(5, "stc3", "cn", 1, "billing", "hans"),
]
PRED = [
    _p(2, "billing"),
    _p(0, "none"),
    _p(1, "service_quality", 0.8),  # calm_first missed: a real Taiwan error
    _p(0, "none"),
    _p(3, "staff_attitude"),
    _p(1, "policy_promotion", 0.99),  # type wrong, very confident
]


def test_groups_keep_real_and_written_apart_and_split_regions() -> None:
    g = groups(GOLD)
    assert g["real"] == [2, 3, 4, 5] and g["written"] == [0, 1]
    assert g["real tw"] == [2, 3] and g["real hk"] == [4] and g["real cn"] == [5]
    assert g["source tw_hospital_reviews"] == [2, 3]


def test_breakdown_figures_by_hand() -> None:
    bd = breakdown(GOLD, PRED, resamples=0)
    assert bd["written"]["calm_first_f1"] == 1.0
    # real: gold calm_first {2, 4}, predicted {4}: P=1, R=0.5 -> F1 0.667
    assert abs(bd["real"]["calm_first_f1"] - 2 / 3) < 1e-3
    # real Taiwan: the one calm_first message was missed
    assert bd["real tw"]["calm_first_f1"] == 0.0
    assert bd["real"]["type_accuracy"] == 0.75


def test_bootstrap_interval_brackets_the_point_estimate() -> None:
    gold = [_g(i, "stc3", "cn", i % 4, "billing" if i % 3 else "none", "hans") for i in range(60)]
    pred = [_p((i % 4) if i % 5 else (i + 1) % 4, "billing" if i % 3 else "none") for i in range(60)]
    ci = bootstrap(gold, pred, n=100)
    point = breakdown(gold, pred, resamples=0)["real"]
    for k in ("calm_first_f1", "anger_qwk"):
        assert ci[k][0] <= point[k] <= ci[k][1]
        assert ci[k][0] < ci[k][1]


def test_confident_mistakes_first_and_shared_text_never_shown() -> None:
    rows = confident_mistakes(GOLD, PRED, k=5)
    assert [(r["id"], r["what"]) for r in rows] == [("r5", "type"), ("r2", "anger")]
    assert all(r["text"] == "" for r in rows)  # real records: ids only
    md = "\n".join(markdown(breakdown(GOLD, PRED, resamples=0), rows))
    assert "| real tw | 2 |" in md and "| r5 | stc3 | cn | type | billing | policy_promotion | 0.990 |" in md
