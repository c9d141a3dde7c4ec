"""The handling score (0-100): how well a conversation went, as the people who judge chats see it.

It is the annotators' customer satisfaction predicted from what the analysis sees, on their -2..2
scale mapped to 0-100 (``50 + 25 × predicted S``), as points a QA lead can recompute by hand::

    score = clip(round(base + Σ points), 0, 100)

    anger     - points per unit of the customer's final anger on a log scale (log10(1 + 100 ×
                score): 0 calm, 1 at 0.09, 2 at 1), per unit of their mean anger score (0-1),
                and per level of their peak anger (0-3)
    steps     + points when the agent took a step of the practice at least once (acknowledged,
                thanked, apologised, committed to act, asked for details, offered options, gave a
                callback time, confirmed satisfaction, handed over, answered)
    mistakes  - points per agent turn that argued, blamed the customer, took the last word,
                interrogated or offered a solution to a furious customer
    threat    - points when the customer threatened and nobody handed the chat to a supervisor
    the end   + points when a fix was reported to a calm or thankful customer; - points when the
                chat ends with the customer still upset, with a deferral without a time, or with a
                mistake not yet repaired (the conversation rules' reading of the last exchange)

The points are fitted, not chosen: least squares of the 19 STC-3 annotators' mean S on these signals,
over the dialogues whose numeric id % 5 != 0 only, with every sign fixed in advance by the practice
(a step can only earn points, a mistake or anger only cost them; a signal the data does not support
gets 0 rather than a sign that rewards bad handling) and a ridge penalty on the agent's signals so a
rare one cannot buy many points. The held-out dialogues (id % 5 == 0) only ever measure it. The fitted
points are ``handling_score.json``; ``python -m service.qa.validate`` refits them (for a new model)
and writes the figures to README_QA.md and ``validation.json``.

"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from pydantic import BaseModel, ConfigDict

from data.vocab import Mistake, Outcome, Step, values

DEFAULT_WEIGHTS_FILE = Path(__file__).resolve().parent / "handling_score.json"
#: the annotators' scale (-2..2) mapped to 0-100: score = CENTER + SCALE * S
CENTER, SCALE = 50.0, 25.0
STEP_SIGNALS: tuple[str, ...] = tuple(f"step_{c}" for c in values(Step))
MISTAKE_SIGNALS: tuple[str, ...] = tuple(f"mistake_{c}" for c in values(Mistake))
ANGER_SIGNALS: tuple[str, ...] = ("final_anger_log", "mean_anger_score", "peak_anger")
END_SIGNALS: tuple[str, ...] = ("end_fix_reported", "end_upset", "end_deferred", "end_repair")
#: every signal the score reads, in the order of the formula
FEATURES: tuple[str, ...] = ANGER_SIGNALS + STEP_SIGNALS + MISTAKE_SIGNALS + ("unhandled_threat",) + END_SIGNALS
#: the sign the practice allows each signal (+1: can only earn points, -1: can only cost them)
SIGNS: dict[str, int] = {
    **dict.fromkeys(ANGER_SIGNALS, -1),
    **dict.fromkeys(STEP_SIGNALS, 1),
    **dict.fromkeys(MISTAKE_SIGNALS, -1),
    "unhandled_threat": -1,
    "end_fix_reported": 1,
    "end_upset": -1,
    "end_deferred": -1,
    "end_repair": -1,
}
#: which points column each signal adds to (the columns ``calmfirst qa`` has always written, plus ``end``)
GROUPS: dict[str, str] = {
    **dict.fromkeys(ANGER_SIGNALS, "anger_outcome"),
    **dict.fromkeys(STEP_SIGNALS, "steps_missed"),
    **dict.fromkeys(MISTAKE_SIGNALS, "mistakes"),
    "unhandled_threat": "escalation",
    **dict.fromkeys(END_SIGNALS, "end"),
}
LABELS: dict[str, str] = {
    "final_anger_log": "the customer's final anger on a log scale, log10(1 + 100 × score): 0 calm, 1 at 0.09, 2 at 1",
    "mean_anger_score": "the customer's mean anger score over their turns (0-1)",
    "peak_anger": "each level of the customer's peak anger (0-3)",
    **{f"step_{c}": f"{c} taken at least once" for c in values(Step)},
    **{f"mistake_{c}": f"each agent turn with {c}" for c in values(Mistake)},
    "unhandled_threat": "a threat never handed to a supervisor",
    "end_fix_reported": "the chat ends with a fix reported to a calm or thankful customer",
    "end_upset": "the chat ends with the customer still upset (level 2 or more)",
    "end_deferred": "the chat ends with a deferral without a time",
    "end_repair": "the chat ends right after an unrepaired mistake",
}


class HandlingScore(TypedDict):
    """The score and the points behind it, by group (each written to conversations.*)."""

    score: int
    base: float
    anger_outcome: float
    steps_missed: float
    mistakes: float
    escalation: float
    end: float


class HandlingFacts(BaseModel):
    """What the score reads, from a ``ConversationResult``'s state and turns or a stored conversation line."""

    model_config = ConfigDict(extra="ignore")
    anger_series: list[int]
    anger_scores: list[float] = []
    steps_taken: list[str] = []
    mistakes: list[str] = []
    mistake_counts: dict[str, int] | None = None
    escalate: bool = False
    next_step_rule: str | None = None

    def features(self) -> dict[str, float]:
        series = self.anger_series or [0]
        scores = self.anger_scores or [level / 3 for level in series]  # lines written before anger_scores
        counts = self.mistake_counts if self.mistake_counts is not None else dict.fromkeys(self.mistakes, 1)
        taken = set(self.steps_taken)
        out = {
            "final_anger_log": final_anger_log(float(scores[-1])),
            "mean_anger_score": float(np.mean(scores)),
            "peak_anger": float(max(series)),
        }
        out |= {f"step_{c}": float(c in taken) for c in values(Step)}
        out |= {f"mistake_{c}": float(counts.get(c, 0)) for c in values(Mistake)}
        out["unhandled_threat"] = float(self.escalate and Step.ESCALATE_SUPERVISOR not in taken)
        rule = self.next_step_rule
        out |= {
            "end_fix_reported": float(rule == "fix_reported"),
            "end_upset": float(rule == "upset"),
            "end_deferred": float(rule == "deferred"),
            "end_repair": float(rule == "repair"),
        }
        return out


def final_anger_log(score: float) -> float:
    """The final anger score on a log scale, 0 for a calm customer: ``log10(1 + 100 × score)``.

    Why a log: how satisfied people judged a chat falls most between a final score of 0.01 and 0.1
    (a customer who is not quite calm yet) and little between 0.5 and 1; on a linear scale the fit
    could not say so. On the fit dialogues only (5-fold CV, 5 seeds, Spearman with mean S): the
    anger signals with a linear final score 0.719, with this log 0.745.
    """
    return float(np.log10(1.0 + 100.0 * max(0.0, score)))


def facts_of(x: Any, mistake_counts: Mapping[str, int] | None = None) -> HandlingFacts:
    """``HandlingFacts`` of a ``ConversationResult``, a ``ConversationRow``, a state or a mapping."""
    from service.results import AgentTurnResult, ConversationResult, CustomerTurnResult

    if isinstance(x, ConversationResult):
        counts: dict[str, int] = {}
        for t in x.turns:
            if isinstance(t, AgentTurnResult):
                for m in t.mistakes:
                    counts[m] = counts.get(m, 0) + 1
        s = x.state
        return HandlingFacts(
            anger_series=s.anger_series,
            anger_scores=[t.result.anger.score for t in x.turns if isinstance(t, CustomerTurnResult)],
            steps_taken=s.steps_taken,
            mistakes=s.mistakes,
            mistake_counts=counts,
            escalate=s.escalate,
            next_step_rule=s.next_step_rule,
        )
    data = dict(x) if isinstance(x, Mapping) else (x.model_dump() if isinstance(x, BaseModel) else vars(x))
    if mistake_counts is not None:
        data["mistake_counts"] = dict(mistake_counts)
    return HandlingFacts.model_validate(data)


def conversation_features(x: Any) -> dict[str, float]:
    return facts_of(x).features()


@dataclass
class HandlingModel:
    """The fitted points: predicted S = intercept + Σ weight × signal; score = 50 + 25 × predicted S."""

    weights: dict[str, float]
    intercept: float
    ridge: float = 0.0
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def raw(self, features: Mapping[str, float]) -> float:
        s = self.intercept + sum(w * float(features.get(f, 0.0)) for f, w in self.weights.items())
        return CENTER + SCALE * s

    def score_features(self, features: Mapping[str, float]) -> int:
        return int(max(0, min(100, round(self.raw(features)))))

    def points(self, features: Mapping[str, float]) -> HandlingScore:
        """The score and its points by group, decomposed from the best case: every step taken, no anger, no
        mistake, no threat, a neutral end (``base``); then points lost for steps never taken, for the
        customer's anger, for mistakes, for a threat not handed over, and won or lost at the end."""
        groups = dict.fromkeys(("anger_outcome", "steps_missed", "mistakes", "escalation", "end"), 0.0)
        base = CENTER + SCALE * (self.intercept + sum(w for f, w in self.weights.items() if f in STEP_SIGNALS))
        for f, w in self.weights.items():
            x = float(features.get(f, 0.0))
            if f in STEP_SIGNALS:
                groups["steps_missed"] -= SCALE * w * (1.0 - x)
            else:
                groups[GROUPS[f]] += SCALE * w * x
        return {
            "score": self.score_features(features),
            "base": round(base, 1),
            **{k: round(v, 1) for k, v in groups.items()},  # type: ignore[typeddict-item]
        }

    def formula(self) -> str:
        """The formula in points, as the QA report and README_QA.md show it."""
        lines = [f"score = clip(round({CENTER + SCALE * self.intercept:.1f}"]
        for f in FEATURES:
            p = SCALE * self.weights.get(f, 0.0)
            if abs(p) >= 0.05:
                lines.append(f"    {'+' if p > 0 else '-'} {abs(p):4.1f} × {LABELS[f]}")
        lines.append("), 0, 100)")
        unused = [f for f in FEATURES if abs(SCALE * self.weights.get(f, 0.0)) < 0.05]
        if unused:
            lines.append("signals the data gave (almost) no weight (under 0.05 points each): " + ", ".join(unused))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scale": {"center": CENTER, "scale": SCALE, "meaning": "score = center + scale * predicted mean S"},
            "intercept": round(self.intercept, 6),
            "weights": {f: round(self.weights.get(f, 0.0), 6) for f in FEATURES},
            "signs": SIGNS,
            "ridge": self.ridge,
            "fitted_on": self.fitted_on,
        }

    def save(self, path: Path, *, validation: Mapping[str, Any] | None = None) -> None:
        doc = self.to_dict()
        if validation:
            doc["validation"] = dict(validation)
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path = DEFAULT_WEIGHTS_FILE) -> HandlingModel:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        unknown = set(doc["weights"]) - set(FEATURES)
        if unknown:
            raise ValueError(f"{path}: weights: unknown signals {sorted(unknown)}")
        return cls(
            weights={f: float(w) for f, w in doc["weights"].items()},
            intercept=float(doc["intercept"]),
            ridge=float(doc.get("ridge", 0.0)),
            fitted_on=dict(doc.get("fitted_on", {})),
        )


def fit_handling_model(
    x: np.ndarray, y: np.ndarray, *, ridge: float = 1.0, features: Sequence[str] = FEATURES
) -> HandlingModel:
    """Sign-constrained ridge least squares of ``y`` (mean S) on the signals ``x`` (rows = conversations).

    The ridge shrinks the agent's signals (steps, mistakes, threat, the end), never the anger signals:
    anger is what people's ratings follow most, and shrinking it let a handful of behaviour signals
    reorder chats the anger alone ranked better (the behaviour then cost rank correlation instead of adding).
    """
    from scipy.optimize import lsq_linear

    n, k = x.shape
    a = np.c_[x, np.ones(n)]
    b = np.asarray(y, dtype=float)
    shrunk = [j for j, f in enumerate(features) if f not in ANGER_SIGNALS]
    if ridge > 0 and shrunk:  # shrink the agent's weights (not anger's, not the intercept) towards 0
        penalty = np.zeros((len(shrunk), k + 1))
        penalty[np.arange(len(shrunk)), shrunk] = np.sqrt(ridge)
        a = np.r_[a, penalty]
        b = np.r_[b, np.zeros(len(shrunk))]
    lo = [0.0 if SIGNS[f] > 0 else -np.inf for f in features] + [-np.inf]
    hi = [np.inf if SIGNS[f] > 0 else 0.0 for f in features] + [np.inf]
    w = lsq_linear(a, b, bounds=(lo, hi)).x
    w = np.where(np.abs(w) < 1e-6, 0.0, w)  # at a bound (or as good as): exactly 0 points
    return HandlingModel(
        weights={f: float(v) for f, v in zip(features, w[:k], strict=True)},
        intercept=float(w[k]),
        ridge=ridge,
        fitted_on={"conversations": int(n), "target": "mean S of the annotators", "signs": "fixed by the practice"},
    )


# ------------------------------------------------------------------ the score as the QA run uses it
_LOADED: dict[Path, HandlingModel] = {}


def default_model() -> HandlingModel:
    """The fitted points of ``handling_score.json`` (read once)."""
    path = DEFAULT_WEIGHTS_FILE
    if path not in _LOADED:
        _LOADED[path] = HandlingModel.load(path)
    return _LOADED[path]


def handling_score(
    conversation: Any, mistake_counts: Mapping[str, int] | None = None, *, model: HandlingModel | None = None
) -> HandlingScore:
    """The 0-100 handling score of one conversation (a ``ConversationResult``, a stored conversation line or a
    mapping with its facts), with the points behind it (see the module doc).

    ``mistake_counts`` gives how many agent turns made each mistake; without it (and without per-turn data)
    each code in ``mistakes`` counts once.
    """
    features = facts_of(conversation, mistake_counts).features()
    return (model or default_model()).points(features)


def formula_text(model: HandlingModel | None = None) -> str:
    """The handling-score formula in points, built from the fitted weights the score is computed with."""
    return (model or default_model()).formula()


def anger_outcome(series: Sequence[int]) -> Outcome:
    """``calmed`` (final below peak), ``rose`` (final is the peak, reached from lower) or ``steady``."""
    if len(series) < 2:
        return Outcome.STEADY
    final, peak = series[-1], max(series)
    if final < peak:
        return Outcome.CALMED
    if min(series[:-1]) < final:
        return Outcome.ROSE
    return Outcome.STEADY
