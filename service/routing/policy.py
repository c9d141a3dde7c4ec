"""Routing policy: scores in, flag + escalate + next step out.

Kept separate from the model so a contact center can move thresholds without
retraining, and from the playbook so wording can change without code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data.vocab import ComplaintType, Flag, Situation
from model.classifier import Prediction

CALM_FIRST = Flag.CALM_FIRST
READY = Flag.READY_FOR_SOLUTIONS


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

    @classmethod
    def from_settings(cls, settings: Any) -> Policy:
        return cls(
            calm_first_level=settings.calm_first_level,
            calm_first_prob=settings.calm_first_prob,
            threat_threshold=settings.threat_threshold,
            escalate_on_furious=settings.escalate_on_furious,
        )

    def p_calm_first(self, pred: Prediction) -> float:
        return float(sum(pred.anger_probs[self.calm_first_level :]))

    def flag(self, pred: Prediction) -> Flag:
        if self.calm_first_prob is not None:
            return CALM_FIRST if self.p_calm_first(pred) >= self.calm_first_prob else READY
        return CALM_FIRST if pred.anger_level >= self.calm_first_level else READY

    def threat(self, pred: Prediction) -> bool:
        return pred.threat_score >= self.threat_threshold

    def escalate(self, pred: Prediction) -> bool:
        return self.threat(pred) or (self.escalate_on_furious and pred.anger_level >= 3)

    def situation(self, pred: Prediction) -> Situation:
        """The playbook route key for one message."""
        if self.escalate(pred):
            return Situation.ESCALATE
        flag = self.flag(pred)
        if flag == CALM_FIRST:
            return Situation.CALM_FIRST
        if pred.complaint_type == ComplaintType.NONE:
            return Situation.NO_COMPLAINT
        return Situation.READY_FOR_SOLUTIONS

    def to_dict(self) -> dict[str, Any]:
        return {
            "calm_first_level": self.calm_first_level,
            "calm_first_prob": self.calm_first_prob,
            "threat_threshold": self.threat_threshold,
            "escalate_on_furious": self.escalate_on_furious,
        }
