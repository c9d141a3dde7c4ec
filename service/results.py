"""Typed results: what CalmFirst returns for a message, a batch and a conversation.

These models *are* the public contract (``../shared/CONTRACT.md``): the HTTP API declares them
as ``response_model`` (so ``/openapi.json`` documents every response), ``calmfirst score`` and
``calmfirst qa`` write them, and the console reads the JSON they produce. A result is built once,
from the model's prediction and the routing decision (``service.analyzer``); nothing downstream
reads values back out of dicts.

Field order is the order of the keys in the JSON. Optional extras that a caller must ask for
(``explanation``, ``text``) are left out of the JSON when absent, as they always were.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from data.vocab import AngerLabel, ComplaintType, Flag, Lang, Role, Script, Situation, Trend


def _absent(value: Any) -> bool:
    return value is None


#: A field that is left out of the JSON when it holds None (opt-in extras).
Omitted = Field(None, exclude_if=_absent)


class _Model(BaseModel):
    # results are built by code, not parsed from users: unknown keys are a bug, not input to ignore
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------ one message
class Anger(_Model):
    level: int = Field(..., ge=0, le=3, description="0 calm, 1 displeased, 2 angry, 3 furious")
    label: AngerLabel
    score: float = Field(..., ge=0.0, le=1.0, description="rises with anger (expected level / 3)")
    probs: list[float] = Field(..., min_length=4, max_length=4, description="P(level = 0..3); sums to 1")


class Complaint(_Model):
    type: ComplaintType = Field(..., description="the primary complaint type")
    types: list[ComplaintType] = Field(..., description="the primary type first, then secondary types")
    scores: dict[ComplaintType, float] = Field(..., description="a score for every type")


class Threat(_Model):
    detected: bool
    score: float


class NextStep(_Model):
    code: str = Field(..., description="a step of the practice (data.vocab.Step) or a playbook's own code")
    text: str
    lang: Lang


class Route(_Model):
    flag: Flag
    escalate: bool
    next_step: NextStep


class ModelInfo(_Model):
    name: str
    version: str


class Span(_Model):
    start: int
    end: int
    text: str
    weight: float


class CharWeight(_Model):
    start: int
    end: int
    weight: float


class Explanation(_Model):
    """Which phrases drove the anger score (occlusion); see ``service.explain``."""

    method: Literal["occlusion"] = "occlusion"
    target: Literal["anger.score"] = "anger.score"
    window: int | None = Omitted
    base_score: float | None
    spans: list[Span]
    char_weights: list[CharWeight] | None = Omitted
    #: present when the text was longer than an explanation reads (``service.explain.MAX_UNITS`` units): the
    #: characters from here on were not occluded, so they carry no weight whatever they say
    explained_to: int | None = Omitted


class MessageResult(_Model):
    """One result per message (CONTRACT.md, "One result per message")."""

    id: JsonValue = Field(
        ..., description="as given, or the 0-based line (JSONL, text) or data row (CSV), or the position in a batch"
    )
    anger: Anger
    complaint: Complaint
    threat: Threat
    route: Route
    script: Script
    model: ModelInfo
    explanation: Explanation | None = Omitted
    text: str | None = Field(None, exclude_if=_absent, description="the message with personal data masked")

    def csv_row(self) -> dict[str, Any]:
        """The flat row of ``calmfirst score -o X.csv`` (columns ``CSV_COLUMNS``)."""
        step = self.route.next_step
        return {
            "id": self.id,
            "anger_level": self.anger.level,
            "anger_label": self.anger.label,
            "anger_score": self.anger.score,
            "anger_probs": json.dumps(self.anger.probs),
            "complaint_type": self.complaint.type,
            "types": "|".join(self.complaint.types),
            "threat": self.threat.detected,
            "threat_score": self.threat.score,
            "flag": self.route.flag,
            "escalate": self.route.escalate,
            "next_step_code": step.code,
            "next_step_text": step.text,
            "lang": step.lang,
            "script": self.script,
        }

    def to_json(self) -> str:
        """One JSON line, as ``calmfirst score`` writes it."""
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False)


CSV_COLUMNS: tuple[str, ...] = (
    "id",
    "anger_level",
    "anger_label",
    "anger_score",
    "anger_probs",
    "complaint_type",
    "types",
    "threat",
    "threat_score",
    "flag",
    "escalate",
    "next_step_code",
    "next_step_text",
    "lang",
    "script",
)


class BatchResult(_Model):
    results: list[MessageResult] = Field(..., description="one result per item, in the order given")


# ------------------------------------------------------------------ conversations
TurnTime = Annotated[JsonValue, Field(description="the turn's timestamp as given")]


class CustomerTurnResult(_Model):
    index: int
    role: Literal[Role.CUSTOMER] = Role.CUSTOMER
    ts: TurnTime = None
    result: MessageResult
    text: str | None = Omitted


class AgentTurnResult(_Model):
    index: int
    role: Literal[Role.AGENT] = Role.AGENT
    ts: TurnTime = None
    steps: list[str]
    mistakes: list[str]
    scores: dict[str, float] = Field(default_factory=dict, description="detector probability per code")
    text: str | None = Omitted


TurnResult = Annotated[CustomerTurnResult | AgentTurnResult, Field(discriminator="role")]


class ConversationState(_Model):
    """Where the conversation stands (CONTRACT.md v1.1)."""

    flag: Flag
    escalate: bool
    anger_series: list[int]
    anger_trend: Trend
    peak_anger: int
    final_anger: int
    situation: Situation
    complaint_type: ComplaintType
    types: list[ComplaintType]
    threat: bool
    steps_taken: list[str]
    mistakes: list[str]
    next_step: NextStep
    steps_missed: list[str] = Field(default_factory=list)
    next_step_rule: str | None = Field(
        None, description="which rule gave next_step: a conversation.rules kind of the playbook, or 'repair'"
    )


class ConversationResult(_Model):
    id: JsonValue = None
    turns: list[TurnResult]
    state: ConversationState

    def customer_results(self) -> list[MessageResult]:
        return [t.result for t in self.turns if isinstance(t, CustomerTurnResult)]
