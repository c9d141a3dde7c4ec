from __future__ import annotations

import pytest

from model.scores import Prediction
from service.routing.policy import CALM_FIRST, READY, Policy


def pred(probs: list[float], *, ctype: str = "billing", threat: float = 0.0) -> Prediction:
    level = max(range(4), key=lambda i: probs[i])
    return Prediction(
        anger_probs=probs,
        anger_level=level,
        anger_label="x",
        anger_score=0.0,
        calm_first_prob=sum(probs[2:]),
        complaint_type=ctype,
        types=[ctype],
        type_scores={},
        threat_score=threat,
        threat=threat >= 0.5,
    )


@pytest.mark.parametrize(
    ("probs", "flag"),
    [
        ([0.7, 0.2, 0.05, 0.05], READY),
        ([0.1, 0.6, 0.2, 0.1], READY),
        ([0.05, 0.15, 0.7, 0.1], CALM_FIRST),
        ([0.0, 0.1, 0.2, 0.7], CALM_FIRST),
    ],
)
def test_policy_flag_by_level(probs, flag) -> None:  # type: ignore[no-untyped-def]
    assert Policy().flag(pred(probs)) == flag


def test_policy_flag_by_probability_threshold() -> None:
    p = pred([0.1, 0.5, 0.3, 0.1])  # level 1, but P(>=2) = 0.4
    assert Policy().flag(p) == READY
    assert Policy(calm_first_prob=0.35).flag(p) == CALM_FIRST
    assert Policy(calm_first_prob=0.45).flag(p) == READY


def test_policy_threshold_level_configurable() -> None:
    p = pred([0.1, 0.6, 0.2, 0.1])
    assert Policy(calm_first_level=1).flag(p) == CALM_FIRST


def test_policy_escalate_on_threat_and_situations() -> None:
    assert Policy().situation(pred([0, 0, 0.1, 0.9], threat=0.8)) == "escalate"
    assert Policy().situation(pred([0, 0.1, 0.8, 0.1])) == "calm_first"
    assert Policy().situation(pred([0.9, 0.1, 0, 0], ctype="none")) == "no_complaint"
    assert Policy().situation(pred([0.2, 0.7, 0.1, 0])) == "ready_for_solutions"
    assert not Policy().escalate(pred([0, 0, 0.1, 0.9], threat=0.2))
    assert Policy(escalate_on_furious=True).escalate(pred([0, 0, 0.1, 0.9], threat=0.2))
    assert Policy(threat_threshold=0.1).escalate(pred([0, 0, 0.1, 0.9], threat=0.2))


@pytest.mark.parametrize("kwargs", [{"calm_first_level": 0}, {"calm_first_level": 4}, {"calm_first_prob": 1.5}])
def test_policy_rejects_bad_thresholds(kwargs) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        Policy(**kwargs)
