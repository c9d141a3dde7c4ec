"""The rows ``calmfirst qa`` writes: one per turn and one per conversation (per agent: ``service.qa.aggregate``).

Typed once here, from the typed ``ConversationResult``; the JSONL files are these models' JSON and
the CSV files their flat form (lists joined by ``|``). Message text is never stored unless the run
asks for it (``keep_text``), and then only redacted.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from data.vocab import AngerLabel, ComplaintType, Flag, Role, Situation, Trend
from service.qa.readers import SourceConversation
from service.qa.scoring import handling_score
from service.redact import redact
from service.results import AgentTurnResult, ConversationResult, CustomerTurnResult

TURN_COLUMNS = [
    "conversation_id", "turn_index", "role", "ts",
    "anger_level", "anger_label", "anger_score", "complaint_type", "types", "threat", "threat_score", "flag",
    "escalate", "steps", "mistakes", "text",
]  # fmt: skip
CONVERSATION_COLUMNS = [
    "conversation_id", "agent_id", "source_line", "turns", "customer_turns", "agent_turns", "turns_skipped",
    "anger_series", "peak_anger", "final_anger", "anger_trend", "situation", "complaint_type", "types", "threat",
    "escalate", "flag", "steps_taken", "steps_missed", "mistakes", "mistake_counts", "next_step_code",
    "handling_score", "points_mistakes", "points_steps_missed", "points_escalation", "points_anger_outcome",
    "points_base", "points_end", "anger_scores", "next_step_rule",
]  # fmt: skip


def _absent(value: Any) -> bool:
    return value is None


#: A column that only one role has (left out of that turn's JSON for the other role).
RoleOnly = Field(None, exclude_if=_absent)


def _join(values: list[Any]) -> str:
    return "|".join(str(v) for v in values)


class TurnRow(BaseModel):
    """One line of turns.jsonl; ``turn_index`` is the index in the source, not the position scored."""

    model_config = ConfigDict(extra="forbid")
    conversation_id: JsonValue
    turn_index: int
    role: Role
    ts: JsonValue = None
    # customer turns
    anger_level: int | None = RoleOnly
    anger_label: AngerLabel | None = RoleOnly
    anger_score: float | None = RoleOnly
    complaint_type: ComplaintType | None = RoleOnly
    types: list[ComplaintType] | None = RoleOnly
    threat: bool | None = RoleOnly
    threat_score: float | None = RoleOnly
    flag: Flag | None = RoleOnly
    escalate: bool | None = RoleOnly
    # agent turns
    steps: list[str] | None = RoleOnly
    mistakes: list[str] | None = RoleOnly
    # only with keep_text, and redacted
    text: str | None = RoleOnly

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False)

    def csv_row(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        out = {k: data.get(k, "") for k in TURN_COLUMNS}
        for k in ("types", "steps", "mistakes"):
            if k in data:
                out[k] = _join(data[k])
        out["ts"] = "" if self.ts is None else self.ts
        return out


class SummaryStep(BaseModel):
    code: str
    text: str


class HandlingPoints(BaseModel):
    """The points behind a handling score (``service.qa.scoring``): from ``base`` (every step taken, no anger,
    no mistake), points lost for steps never taken, for the customer's anger, for mistakes and for a threat not
    handed over, and points won or lost at the end of the chat; they add up to the score before rounding."""

    mistakes: float
    steps_missed: float
    escalation: float
    anger_outcome: float
    base: float | None = None
    end: float | None = None


class ConversationRow(BaseModel):
    """One line of conversations.jsonl: everything the aggregates and the report need.

    conversations.jsonl is also the run's commit log, read back by ``aggregate.summarize``; the
    fields a hand-made or older line may lack have defaults.
    """

    model_config = ConfigDict(extra="ignore")
    conversation_id: JsonValue
    agent_id: str | None = None
    source_line: int | None = None
    turns: int
    customer_turns: int
    agent_turns: int
    turns_skipped: int
    anger_series: list[int]
    peak_anger: int
    final_anger: int
    anger_trend: Trend
    situation: Situation
    complaint_type: ComplaintType
    types: list[ComplaintType]
    threat: bool
    escalate: bool
    flag: Flag
    steps_taken: list[str]
    steps_missed: list[str]
    mistakes: list[str]
    mistake_counts: dict[str, int]
    next_step: SummaryStep | None = None
    handling_score: int
    handling_points: HandlingPoints | None = None
    #: each customer turn's anger score (0-1), and the rule that gave the next step: what the score reads
    anger_scores: list[float] = []
    next_step_rule: str | None = None

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False)

    def csv_row(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        out = {k: data.get(k, "") for k in CONVERSATION_COLUMNS}
        out["agent_id"] = self.agent_id or ""
        for k in ("anger_series", "types", "steps_taken", "steps_missed", "mistakes", "anger_scores"):
            out[k] = _join(data[k])
        out["next_step_rule"] = self.next_step_rule or ""
        out["mistake_counts"] = json.dumps(self.mistake_counts)
        out["next_step_code"] = self.next_step.code if self.next_step else ""
        if self.handling_points is not None:
            for k, v in self.handling_points.model_dump().items():
                out[f"points_{k}"] = v
        return out


def turn_rows(conv: SourceConversation, result: ConversationResult, *, keep_text: bool) -> list[TurnRow]:
    """One output row per scored turn; ``turn_index`` is the index in the source, not the position scored."""
    rows = []
    for out, src_index, turn in zip(result.turns, conv.indices, conv.turns, strict=True):
        text = redact(turn.text) if keep_text else None
        if isinstance(out, CustomerTurnResult):
            r = out.result
            row = TurnRow(
                conversation_id=conv.id,
                turn_index=src_index,
                role=Role.CUSTOMER,
                ts=turn.ts,
                anger_level=r.anger.level,
                anger_label=r.anger.label,
                anger_score=r.anger.score,
                complaint_type=r.complaint.type,
                types=r.complaint.types,
                threat=r.threat.detected,
                threat_score=r.threat.score,
                flag=r.route.flag,
                escalate=r.route.escalate,
                text=text,
            )
        else:
            row = TurnRow(
                conversation_id=conv.id,
                turn_index=src_index,
                role=Role.AGENT,
                ts=turn.ts,
                steps=out.steps,
                mistakes=out.mistakes,
                text=text,
            )
        rows.append(row)
    return rows


def conversation_row(conv: SourceConversation, result: ConversationResult) -> ConversationRow:
    """The per-conversation line of conversations.jsonl, with its handling score."""
    state = result.state
    counts: Counter[str] = Counter()
    for t in result.turns:
        if isinstance(t, AgentTurnResult):
            counts.update(t.mistakes)
    hs = handling_score(result)
    n_customer = len(result.customer_results())
    return ConversationRow(
        conversation_id=conv.id,
        agent_id=conv.agent_id,
        source_line=conv.line,
        turns=len(result.turns),
        customer_turns=n_customer,
        agent_turns=len(result.turns) - n_customer,
        turns_skipped=conv.skipped_turns,
        anger_series=state.anger_series,
        peak_anger=state.peak_anger,
        final_anger=state.final_anger,
        anger_trend=state.anger_trend,
        situation=state.situation,
        complaint_type=state.complaint_type,
        types=state.types,
        threat=state.threat,
        escalate=state.escalate,
        flag=state.flag,
        steps_taken=state.steps_taken,
        steps_missed=state.steps_missed,
        mistakes=state.mistakes,
        mistake_counts=dict(sorted(counts.items())),
        next_step=SummaryStep(code=state.next_step.code, text=state.next_step.text),
        handling_score=hs["score"],
        handling_points=HandlingPoints(
            mistakes=hs["mistakes"],
            steps_missed=hs["steps_missed"],
            escalation=hs["escalation"],
            anger_outcome=hs["anger_outcome"],
            base=hs["base"],
            end=hs["end"],
        ),
        # as the score read them (the answer's 6 decimals): rounded further, a rescored line could land a point off
        anger_scores=[r.anger.score for r in result.customer_results()],
        next_step_rule=state.next_step_rule,
    )
