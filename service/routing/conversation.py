"""Whole-conversation routing rules: from scored customer turns and read agent turns to the next step.

The next step depends on where the conversation stands, not only on the last message:
which steps of the practice the agent has already taken, whether the customer has calmed
down, and whether the agent just made a mistake that needs repairing first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from data.vocab import SCRIPT_LANG, ComplaintType, Flag, Mistake, Role, Situation, Step, Trend
from service.results import (
    AgentTurnResult,
    ConversationResult,
    ConversationState,
    CustomerTurnResult,
    MessageResult,
    TurnResult,
)
from service.routing.agent_steps import AgentTurn
from service.routing.playbook import ConversationRules, Playbook
from service.routing.policy import Policy

ROLES: tuple[str, ...] = tuple(Role)


@dataclass
class Turn:
    role: str
    text: str
    ts: Any = None


def anger_trend(series: Sequence[int]) -> Trend:
    """rising / falling / steady, from the last two customer turns."""
    if len(series) < 2 or series[-1] == series[-2]:
        return Trend.STEADY
    return Trend.RISING if series[-1] > series[-2] else Trend.FALLING


def choose_next(sequence: Sequence[str], taken: set[str], optional: frozenset[str]) -> str:
    """First step of the sequence not yet taken; optional steps are passed over once a later one was taken."""
    for i, code in enumerate(sequence):
        if code in taken:
            continue
        if code in optional and any(later in taken for later in sequence[i + 1 :]):
            continue
        return code
    return sequence[-1]


def build_conversation(
    conv_id: Any,
    turns: Sequence[Turn],
    results: Sequence[MessageResult],
    agent: Sequence[AgentTurn],
    *,
    policy: Policy,
    playbook: Playbook,
    rules: ConversationRules,
    lang: str | None,
) -> ConversationResult:
    """The conversation's turns and state from its customer turns' results and its agent turns' steps."""
    out_turns: list[TurnResult] = []
    customer: list[MessageResult] = []
    taken: list[str] = []
    mistakes: list[str] = []
    last_agent_mistakes: list[str] = []
    ri = ai = 0
    for index, t in enumerate(turns):
        if t.role == Role.CUSTOMER:
            r = results[ri].model_copy(update={"id": index})
            ri += 1
            customer.append(r)
            out_turns.append(CustomerTurnResult(index=index, ts=t.ts, result=r))
            continue
        a = agent[ai]
        ai += 1
        turn_mistakes = list(a.mistakes)
        if (
            customer
            and customer[-1].anger.level >= rules.solution_block_level
            and any(s in rules.solution_steps for s in a.steps)
        ):
            turn_mistakes.append(Mistake.SOLUTION_WHILE_FURIOUS)
        for s in a.steps:
            if s not in taken:
                taken.append(s)
        for m in turn_mistakes:
            if m not in mistakes:
                mistakes.append(m)
        last_agent_mistakes = turn_mistakes
        out_turns.append(AgentTurnResult(index=index, ts=t.ts, steps=a.steps, mistakes=turn_mistakes, scores=a.scores))
    if not customer:
        raise ValueError("turns: a conversation needs at least one customer turn")
    series = [r.anger.level for r in customer]
    last = customer[-1]
    peak = max(series)
    escalate = any(r.route.escalate for r in customer)
    threat = any(r.threat.detected for r in customer)
    flag = last.route.flag
    grievances = [r for r in customer if r.complaint.type != ComplaintType.NONE]
    ctype = grievances[-1].complaint.type if grievances else ComplaintType.NONE
    types: list[ComplaintType] = []
    for r in grievances:
        for ty in r.complaint.types:
            if ty not in types and ty != ComplaintType.NONE:
                types.append(ty)
    taken_set = set(taken)
    level = policy.calm_first_level
    if escalate and Step.ESCALATE_SUPERVISOR not in taken_set:
        situation = Situation.ESCALATE
    elif flag == Flag.CALM_FIRST:
        situation = Situation.CALM_FIRST
    elif peak >= level:
        situation = Situation.RECOVERED
    elif not grievances and peak == 0:
        situation = Situation.NO_COMPLAINT
    else:
        situation = Situation.READY_FOR_SOLUTIONS
    sequence = rules.sequence(situation)
    if last_agent_mistakes and any(m in rules.repair_after for m in last_agent_mistakes) and series[-1] >= level:
        code = rules.repair
    else:
        code = choose_next(sequence, taken_set, rules.optional)
    step = playbook.step(code, complaint_type=ctype, lang=lang or SCRIPT_LANG[last.script])
    state = ConversationState(
        flag=flag,
        escalate=escalate,
        anger_series=series,
        anger_trend=anger_trend(series),
        peak_anger=peak,
        final_anger=series[-1],
        situation=situation,
        complaint_type=ctype,
        types=types or [ComplaintType.NONE],
        threat=threat,
        steps_taken=taken,
        mistakes=mistakes,
        next_step=step,
        steps_missed=[c for c in sequence if c not in taken_set and c not in rules.optional],
    )
    return ConversationResult(id=conv_id, turns=out_turns, state=state)
