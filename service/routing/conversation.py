"""Whole-conversation routing: customer turns scored, agent turns read, the next step chosen.

The next step depends on where the conversation stands, not only on the last message:
which steps of the practice the agent has already taken, whether the customer has calmed
down, and whether the agent just made a mistake that needs repairing first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from data.vocab import SCRIPT_LANG, ComplaintType, Flag, Mistake, Role, Script, Situation, Step, Trend
from service.agent_steps import AgentStepDetector, AgentTurn
from service.analyzer import Analyzer
from service.playbook import ConversationRules

logger = logging.getLogger(__name__)

ROLES: tuple[str, ...] = tuple(Role)


@dataclass
class Turn:
    role: str
    text: str
    ts: Any = None


@dataclass
class ConversationState:
    flag: str
    escalate: bool
    anger_series: list[int]
    anger_trend: str
    peak_anger: int
    final_anger: int
    situation: str
    complaint_type: str
    types: list[str]
    threat: bool
    steps_taken: list[str]
    mistakes: list[str]
    next_step: dict[str, str]
    steps_missed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def anger_trend(series: Sequence[int]) -> str:
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


class ConversationAnalyzer:
    def __init__(self, analyzer: Analyzer, detector: AgentStepDetector) -> None:
        self.analyzer = analyzer
        self.detector = detector
        rules = analyzer.playbook.conversation
        if rules is None:  # pragma: no cover - Playbook always fills the defaults
            raise ValueError("playbook has no conversation rules")
        self.rules: ConversationRules = rules

    def analyze(self, turns: Sequence[Turn], *, id: Any = None, lang: str | None = None) -> dict[str, Any]:
        return self.analyze_many([(id, turns)], lang=lang)[0]

    def analyze_many(
        self, conversations: Sequence[tuple[Any, Sequence[Turn]]], *, lang: str | None = None
    ) -> list[dict[str, Any]]:
        """Several conversations with one batched model pass over all customer turns."""
        cust_texts: list[str] = []
        agent_texts: list[str] = []
        for _, turns in conversations:
            for t in turns:
                (cust_texts if t.role == Role.CUSTOMER else agent_texts).append(t.text)
        results = self.analyzer.analyze(cust_texts, lang=lang) if cust_texts else []
        agent = self.detector.detect(agent_texts) if agent_texts else []
        ri = ai = 0
        out = []
        for conv_id, turns in conversations:
            n_c = sum(t.role == Role.CUSTOMER for t in turns)
            n_a = len(turns) - n_c
            out.append(self.build(conv_id, turns, results[ri : ri + n_c], agent[ai : ai + n_a], lang=lang))
            ri += n_c
            ai += n_a
        return out

    def build(
        self,
        conv_id: Any,
        turns: Sequence[Turn],
        results: Sequence[dict[str, Any]],
        agent: Sequence[AgentTurn],
        *,
        lang: str | None,
    ) -> dict[str, Any]:
        rules = self.rules
        policy = self.analyzer.policy
        out_turns: list[dict[str, Any]] = []
        taken: list[str] = []
        mistakes: list[str] = []
        last_customer_level: int | None = None
        last_agent_mistakes: list[str] = []
        ri = ai = 0
        for index, t in enumerate(turns):
            if t.role == Role.CUSTOMER:
                r = dict(results[ri])
                r["id"] = index
                ri += 1
                last_customer_level = r["anger"]["level"]
                out_turns.append({"index": index, "role": Role.CUSTOMER, "ts": t.ts, "result": r})
            else:
                a = agent[ai]
                ai += 1
                turn_mistakes = list(a.mistakes)
                if (
                    last_customer_level is not None
                    and last_customer_level >= rules.solution_block_level
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
                out_turns.append(
                    {
                        "index": index,
                        "role": Role.AGENT,
                        "ts": t.ts,
                        "steps": a.steps,
                        "mistakes": turn_mistakes,
                        "scores": a.scores,
                    }
                )
        customer = [ot["result"] for ot in out_turns if ot["role"] == Role.CUSTOMER]
        if not customer:
            raise ValueError("turns: a conversation needs at least one customer turn")
        series = [r["anger"]["level"] for r in customer]
        last = customer[-1]
        peak = max(series)
        escalate = any(r["route"]["escalate"] for r in customer)
        threat = any(r["threat"]["detected"] for r in customer)
        flag = last["route"]["flag"]
        grievances = [r for r in customer if r["complaint"]["type"] != ComplaintType.NONE]
        ctype = grievances[-1]["complaint"]["type"] if grievances else ComplaintType.NONE
        types: list[str] = []
        for r in grievances:
            for ty in r["complaint"]["types"]:
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
        sequence = rules.sequences[situation]
        if last_agent_mistakes and any(m in rules.repair_after for m in last_agent_mistakes) and series[-1] >= level:
            code = rules.repair
        else:
            code = choose_next(sequence, taken_set, rules.optional)
        out_lang = lang or SCRIPT_LANG[Script(last["script"])]
        step = self.analyzer.playbook.step(code, complaint_type=ctype, lang=out_lang)
        missed = [c for c in sequence if c not in taken_set and c not in rules.optional]
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
            next_step=step.to_dict(),
            steps_missed=missed,
        )
        return {"id": conv_id, "turns": out_turns, "state": state.to_dict()}
