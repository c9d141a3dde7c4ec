"""Routing policy: scores in, flag + escalate + situation out.

Kept separate from the model so a contact center can move thresholds without
retraining, and from the playbook so wording can change without code.

The service decides threat, flag and escalation here, once per message (``decide``), with
the policy's own thresholds; the model's ``Prediction.threat`` (its training threshold) is
what evaluation measures, never what routes a customer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data.vocab import ComplaintType, Flag, Situation
from model.scores import Prediction

CALM_FIRST = Flag.CALM_FIRST
READY = Flag.READY_FOR_SOLUTIONS


@dataclass(frozen=True)
class Decision:
    """The routing of one message, computed once from its prediction."""

    threat: bool
    flag: Flag
    escalate: bool
    situation: Situation


@dataclass(frozen=True)
class Policy:
    calm_first_level: int = 2
    calm_first_prob: float | None = None
    threat_threshold: float = 0.5
    escalate_on_furious: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.calm_first_level <= 3:
            raise ValueError(f"calm_first_level must be 1-3, got {self.calm_first_level}")
        if self.calm_first_prob is not None and not 0.0 <= self.calm_first_prob <= 1.0:
            raise ValueError(f"calm_first_prob must be in [0, 1], got {self.calm_first_prob}")

    def p_calm_first(self, pred: Prediction) -> float:
        return float(sum(pred.anger_probs[self.calm_first_level :]))

    def flag(self, pred: Prediction) -> Flag:
        if self.calm_first_prob is not None:
            return CALM_FIRST if self.p_calm_first(pred) >= self.calm_first_prob else READY
        return CALM_FIRST if pred.anger_level >= self.calm_first_level else READY

    def threat(self, pred: Prediction) -> bool:
        return pred.threat_score >= self.threat_threshold

    def decide(self, pred: Prediction) -> Decision:
        """Threat, flag, escalation and the playbook route key of one message, each decided once."""
        threat = self.threat(pred)
        flag = self.flag(pred)
        escalate = threat or (self.escalate_on_furious and pred.anger_level >= 3)
        if escalate:
            situation = Situation.ESCALATE
        elif flag == CALM_FIRST:
            situation = Situation.CALM_FIRST
        elif pred.complaint_type == ComplaintType.NONE:
            situation = Situation.NO_COMPLAINT
        else:
            situation = Situation.READY_FOR_SOLUTIONS
        return Decision(threat=threat, flag=flag, escalate=escalate, situation=situation)

    def escalate(self, pred: Prediction) -> bool:
        return self.decide(pred).escalate

    def situation(self, pred: Prediction) -> Situation:
        """The playbook route key for one message."""
        return self.decide(pred).situation

    def to_dict(self) -> dict[str, Any]:
        return {
            "calm_first_level": self.calm_first_level,
            "calm_first_prob": self.calm_first_prob,
            "threat_threshold": self.threat_threshold,
            "escalate_on_furious": self.escalate_on_furious,
        }
