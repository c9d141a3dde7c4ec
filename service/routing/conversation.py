"""Whole-conversation routing rules (CONTRACT.md v1.1): from scored customer turns and read agent turns
to the conversation's state and its next step.

- ``anger_trend`` compares the first and the last customer level; ``peak_anger`` and ``final_anger``.
- Agent steps are repeatable: a step may be suggested again (an apology after a mistake, an answer to
  each new question, the usual order again after a new grievance).
- ``solution_while_furious``: solution content while the customer's last level is at the block level,
  with no acknowledgement or apology in the same turn; that offer does not count as taken.
- The next step: the repair step right after an agent mistake (unless the threat rule applies), else
  the first of the playbook's ``conversation.rules`` that applies (the seven rules of the contract,
  as data a contact center edits). ``state.next_step_rule`` says which one fired.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from data.script import convert
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
from service.routing.playbook import (
    ConversationRules,
    DeferredRule,
    DetailsGivenRule,
    FixReportedRule,
    NewQuestionRule,
    Playbook,
    ThreatRule,
    UpsetRule,
    UsualOrderRule,
)
from service.routing.policy import Policy

ROLES: tuple[str, ...] = tuple(Role)
REPAIR = "repair"


@dataclass
class Turn:
    role: str
    text: str
    ts: Any = None


def anger_trend(series: Sequence[int]) -> Trend:
    """``rising`` if the last customer level is above the first, ``falling`` if below, else ``steady``."""
    if len(series) < 2 or series[-1] == series[0]:
        return Trend.STEADY
    return Trend.RISING if series[-1] > series[0] else Trend.FALLING


def choose_next(sequence: Sequence[str], taken: set[str], optional: frozenset[str]) -> str:
    """First step of the sequence not yet taken; optional steps are passed over once a later one was taken."""
    for i, code in enumerate(sequence):
        if code in taken:
            continue
        if code in optional and any(later in taken for later in sequence[i + 1 :]):
            continue
        return code
    return sequence[-1]


@lru_cache(maxsize=4096)
def _fold(text: str) -> str:
    """Text as phrases are matched: Simplified script, lower case (phrase lists work in both scripts)."""
    return convert(text, "t2s").lower()


def contains_any(text: str, phrases: Sequence[str]) -> bool:
    folded = _fold(text)
    return any(_fold(p) in folded for p in phrases if p)


# ------------------------------------------------------------------ the conversation as the rules see it
@dataclass
class CustomerView:
    index: int
    text: str
    level: int
    complaint_type: str
    new_grievance: bool


@dataclass
class AgentView:
    index: int
    text: str
    steps: list[str]  # steps that count as taken (a solution while furious does not)
    mistakes: list[str]


@dataclass
class ConversationView:
    customers: list[CustomerView]
    agents: list[AgentView]
    escalate: bool
    events: list[CustomerView | AgentView] = field(default_factory=list)

    @property
    def last_customer(self) -> CustomerView:
        return self.customers[-1]

    @property
    def last_agent(self) -> AgentView | None:
        return self.agents[-1] if self.agents else None

    def agent_before(self, index: int) -> AgentView | None:
        before = [a for a in self.agents if a.index < index]
        return before[-1] if before else None

    def customer_spoke_last(self) -> bool:
        last_agent = self.last_agent
        return last_agent is None or self.last_customer.index > last_agent.index

    def taken_since(self, index: int) -> set[str]:
        return {s for a in self.agents if a.index > index for s in a.steps}


def _threat(rule: ThreatRule, v: ConversationView) -> str | None:
    if not v.escalate:
        return None
    handovers = [a for a in v.agents if any(s in rule.handover_steps for s in a.steps)]
    if not handovers:
        return rule.step
    first = handovers[0].index
    if any(s in rule.time_steps for a in v.agents if a.index >= first for s in a.steps):
        return None
    return rule.after_handover


def _upset(rule: UpsetRule, v: ConversationView) -> str | None:
    if v.last_customer.level < rule.min_level:
        return None
    last = v.last_agent
    if last is not None and any(s in rule.acknowledged_by for s in last.steps):
        return rule.if_acknowledged
    return rule.step


def _deferred(rule: DeferredRule, v: ConversationView) -> str | None:
    last = v.last_agent
    if last is None or any(s in rule.time_steps for s in last.steps):
        return None
    return rule.step if contains_any(last.text, rule.phrases) else None


def _details_given(rule: DetailsGivenRule, v: ConversationView) -> str | None:
    if not v.customer_spoke_last():
        return None
    asked = v.agent_before(v.last_customer.index)
    if asked is not None and any(s in rule.after_steps for s in asked.steps):
        return rule.step
    return None


def _fix_reported(rule: FixReportedRule, v: ConversationView) -> str | None:
    last_agent, last_customer = v.last_agent, v.last_customer
    by_agent = (
        last_agent is not None
        and any(s in rule.fix_steps for s in last_agent.steps)
        and contains_any(last_agent.text, rule.agent_phrases)
    )
    by_customer = v.customer_spoke_last() and contains_any(last_customer.text, rule.customer_phrases)
    if not (by_agent or by_customer):
        return None
    calm = last_customer.level <= rule.max_level
    thanks = contains_any(last_customer.text, rule.thanks_phrases)
    return rule.step if calm or thanks else None


def _grievance(c: CustomerView, level: int) -> bool:
    return c.complaint_type != ComplaintType.NONE or c.level >= level


def _new_question(rule: NewQuestionRule, v: ConversationView) -> str | None:
    if any(_grievance(c, rule.grievance_level) for c in v.customers):
        return None
    if v.customer_spoke_last() and contains_any(v.last_customer.text, rule.question_markers):
        return rule.step
    return None


def _usual_order(rule: UsualOrderRule, v: ConversationView, grievance_level: int) -> str:
    new = [c for c in v.customers if c.new_grievance]
    if not new and not any(_grievance(c, grievance_level) for c in v.customers):
        order, since = rule.no_grievance_order, -1
    else:
        order, since = rule.order, (new[-1].index if new else -1)
    taken = v.taken_since(since)
    for code in order:
        if code not in taken:
            return code
    return rule.step


def next_step(rules: ConversationRules, v: ConversationView, sequence: Sequence[str] = ()) -> tuple[str, str]:
    """The next step's code and the name of the rule that gave it (``repair`` for the repair step).

    ``sequence``: the steps of the conversation's situation (``rules.sequence``), for a playbook whose rules
    give nothing (one without the usual-order rule): its first step not yet taken."""
    last = v.last_agent
    mistake = last is not None and any(m in rules.repair_after for m in last.mistakes)
    if mistake and not any(_apply(r, v, rules) is not None for r in rules.rules if r.rule in rules.repair_unless):
        return rules.repair, REPAIR
    for rule in rules.rules:
        code = _apply(rule, v, rules)
        if code is not None:
            return code, rule.rule
    # a playbook without the usual-order rule: the first step of the situation's sequence not yet taken (it
    # walked every step code, so a calm chat was told to escalate to a supervisor; the sequences name only steps
    # the playbook defines)
    taken = v.taken_since(-1)
    steps = list(sequence) or [str(Step.CONFIRM_SATISFACTION)]
    return next((c for c in steps if c not in taken), steps[-1]), "none"


def _grievance_level(rules: ConversationRules) -> int:
    return next((r.grievance_level for r in rules.rules if isinstance(r, NewQuestionRule)), 1)


def _apply(rule: Any, v: ConversationView, rules: ConversationRules) -> str | None:
    if isinstance(rule, ThreatRule):
        return _threat(rule, v)
    if isinstance(rule, UpsetRule):
        return _upset(rule, v)
    if isinstance(rule, DeferredRule):
        return _deferred(rule, v)
    if isinstance(rule, DetailsGivenRule):
        return _details_given(rule, v)
    if isinstance(rule, FixReportedRule):
        return _fix_reported(rule, v)
    if isinstance(rule, NewQuestionRule):
        return _new_question(rule, v)
    if isinstance(rule, UsualOrderRule):
        return _usual_order(rule, v, _grievance_level(rules))
    raise TypeError(f"unknown rule {rule!r}")  # pragma: no cover - the playbook model admits no other


def solution_while_furious(rules: ConversationRules, steps: Sequence[str], customer_level: int | None) -> bool:
    """Solution content while the customer's last level is at the block level, with no acknowledgement or
    apology in the same turn."""
    if customer_level is None or customer_level < rules.solution_block_level:
        return False
    if any(s in rules.acknowledgement_steps for s in steps):
        return False
    return any(s in rules.solution_steps for s in steps)


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
    customers: list[CustomerView] = []
    agents: list[AgentView] = []
    taken: list[str] = []
    mistakes: list[str] = []
    seen_types: set[str] = set()
    ri = ai = 0
    for index, t in enumerate(turns):
        if t.role == Role.CUSTOMER:
            r = results[ri].model_copy(update={"id": index})
            ri += 1
            customer.append(r)
            ctype = str(r.complaint.type)
            new = ctype != ComplaintType.NONE and ctype not in seen_types
            if ctype != ComplaintType.NONE:
                seen_types.add(ctype)
            customers.append(CustomerView(index, t.text, r.anger.level, ctype, new))
            out_turns.append(CustomerTurnResult(index=index, ts=t.ts, result=r))
            continue
        a = agent[ai]
        ai += 1
        turn_mistakes = [m for m in a.mistakes if m != Mistake.SOLUTION_WHILE_FURIOUS]
        counted = list(a.steps)
        if solution_while_furious(rules, a.steps, customer[-1].anger.level if customer else None):
            turn_mistakes.append(Mistake.SOLUTION_WHILE_FURIOUS)
            counted = [s for s in a.steps if s not in rules.not_taken_while_furious]
        for s in counted:
            if s not in taken:
                taken.append(s)
        for m in turn_mistakes:
            if m not in mistakes:
                mistakes.append(m)
        agents.append(AgentView(index, t.text, counted, turn_mistakes))
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
    view = ConversationView(customers=customers, agents=agents, escalate=escalate)
    code, fired = next_step(rules, view, sequence)
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
        next_step_rule=fired,
    )
    return ConversationResult(id=conv_id, turns=out_turns, state=state)
