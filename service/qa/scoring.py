"""The handling score (0-100): how well the agent handled a conversation.

In points a QA lead can recompute by hand::

    score = 100
          - 15 per agent turn that argued, blamed the customer or had the last word
          - 10 per agent turn with solution_while_furious or interrogated
            (10 for any mistake code a playbook adds)
          - 5  per core step missed (state.steps_missed: non-optional steps of the sequence for
               the final situation that were never taken), escalate_supervisor excepted
          - 20 if the conversation needed escalation (state.escalate) and escalate_supervisor
               was never taken
          + 10 if the customer calmed down (final anger below the peak)
          - 10 if anger rose (final anger is the peak and an earlier customer turn was lower)
    clipped to 0..100.

Mistakes count per occurrence because repeating a mistake is worse than making it once; a
missed escalation costs 20 instead of the 5 of a missed step because it is the one failure with
legal or media consequences. The anger outcome is worth at most one mistake: the agent does not
control the customer, but calming them is the point of the practice. Conversations with a
single customer turn get no anger bonus or penalty (there is no outcome to judge).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypedDict

from pydantic import BaseModel, ConfigDict

from data.vocab import Mistake, Outcome, Step

#: Points taken per agent turn that makes the mistake; codes a playbook adds cost DEFAULT_MISTAKE_PENALTY.
MISTAKE_PENALTY: dict[str, int] = {
    Mistake.ARGUED: 15,
    Mistake.BLAMED_CUSTOMER: 15,
    Mistake.LAST_WORD: 15,
    Mistake.SOLUTION_WHILE_FURIOUS: 10,
    Mistake.INTERROGATED: 10,
}
DEFAULT_MISTAKE_PENALTY = 10
MISSED_STEP_PENALTY = 5
UNHANDLED_ESCALATION_PENALTY = 20
CALMED_BONUS = 10
ROSE_PENALTY = 10
OUTCOME_POINTS = {Outcome.CALMED: CALMED_BONUS, Outcome.ROSE: -ROSE_PENALTY, Outcome.STEADY: 0}


class HandlingScore(TypedDict):
    """The score and the points behind it (each written to conversations.*)."""

    score: int
    mistakes: int
    steps_missed: int
    escalation: int
    anger_outcome: int


class ScoredState(Protocol):
    """What the score reads: a ``ConversationState``, a ``ConversationRow`` or a ``StateFacts``."""

    @property
    def anger_series(self) -> list[int]: ...
    @property
    def mistakes(self) -> list[str]: ...
    @property
    def steps_missed(self) -> list[str]: ...
    @property
    def steps_taken(self) -> list[str]: ...
    @property
    def escalate(self) -> bool: ...


class StateFacts(BaseModel):
    """The facts the score needs, parsed from a mapping (a stored conversation line, a hand-built state)."""

    model_config = ConfigDict(extra="ignore")
    anger_series: list[int]
    mistakes: list[str] = []
    steps_missed: list[str] = []
    steps_taken: list[str] = []
    escalate: bool = False


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


def handling_score(
    state: ScoredState | Mapping[str, Any], mistake_counts: Mapping[str, int] | None = None
) -> HandlingScore:
    """The 0-100 handling score of one conversation state, with the points behind it (see the module doc).

    ``mistake_counts`` gives how many agent turns made each mistake; without it each code in
    ``state.mistakes`` counts once (the state lists codes, not occurrences).
    """
    facts: ScoredState = StateFacts.model_validate(state) if isinstance(state, Mapping) else state
    counts = dict(mistake_counts) if mistake_counts is not None else dict.fromkeys(facts.mistakes, 1)
    mistakes = -sum(MISTAKE_PENALTY.get(code, DEFAULT_MISTAKE_PENALTY) * n for code, n in counts.items())
    missed = -MISSED_STEP_PENALTY * sum(1 for c in facts.steps_missed if c != Step.ESCALATE_SUPERVISOR)
    escalation = (
        -UNHANDLED_ESCALATION_PENALTY if facts.escalate and Step.ESCALATE_SUPERVISOR not in facts.steps_taken else 0
    )
    outcome = OUTCOME_POINTS[anger_outcome(facts.anger_series)]
    total = 100 + mistakes + missed + escalation + outcome
    return {
        "score": max(0, min(100, total)),
        "mistakes": mistakes,
        "steps_missed": missed,
        "escalation": escalation,
        "anger_outcome": outcome,
    }


def formula_text() -> str:
    """The handling-score formula in words, built from the constants the score is computed with."""
    top = max(MISTAKE_PENALTY.values())
    high = sorted(c for c, p in MISTAKE_PENALTY.items() if p == top)
    low = sorted(c for c, p in MISTAKE_PENALTY.items() if p != top)
    return "\n".join(
        [
            "score = 100",
            f"  - {top} per agent turn with {', '.join(high)}",
            f"  - {DEFAULT_MISTAKE_PENALTY} per agent turn with {', '.join(low)} (or a playbook's own mistake code)",
            f"  - {MISSED_STEP_PENALTY} per core step missed for the final situation (escalate_supervisor excepted)",
            f"  - {UNHANDLED_ESCALATION_PENALTY} if escalation was needed and escalate_supervisor never taken",
            f"  + {CALMED_BONUS} if the customer calmed down (final anger below the peak)",
            f"  - {ROSE_PENALTY} if anger rose (final anger is the peak, reached from a lower turn)",
            "clipped to 0..100",
        ]
    )
