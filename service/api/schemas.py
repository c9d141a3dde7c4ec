"""Request and response models of the HTTP API.

Responses are the contract results of ``service.results`` plus the small models of the health,
labels and error answers; every route declares one, so ``/openapi.json`` documents them all.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from data.vocab import AngerLabel, ComplaintType, Flag, Lang, Role
from service.results import BatchResult, ConversationResult, MessageResult, ModelInfo
from service.text import text_problem

__all__ = [
    "ACTIVE_LIMITS",
    "AnalyzeRequest",
    "BatchItem",
    "BatchRequest",
    "BatchResult",
    "ConversationRequest",
    "ConversationResult",
    "Detail",
    "ErrorResponse",
    "FieldProblem",
    "Health",
    "Labels",
    "Limits",
    "MessageResult",
    "Ready",
    "TurnIn",
]


def _not_blank(v: str) -> str:
    problem = text_problem(v)  # lone surrogates, NUL and other control characters (service.text)
    if problem is not None:
        raise PydanticCustomError("text_unsafe", problem)
    if not v.strip():
        raise ValueError("text must not be empty")
    return v


#: A message text: any string with at least one non-space character, valid Unicode, no control characters
#: other than tab, newline and carriage return.
_CONTROL = r"\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f"
#: The schema says so too (a non-space character, no control characters), for clients and for fuzzers that
#: generate from it; the validator, not the schema, is what rejects (with the messages above).
Text = Annotated[
    str,
    AfterValidator(_not_blank),
    WithJsonSchema({"type": "string", "minLength": 1, "pattern": f"^[^{_CONTROL}]*[^{_CONTROL}\\s][^{_CONTROL}]*$"}),
]


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        raise PydanticCustomError("finite_number", "must be a finite number (JSON has no NaN or Infinity)")
    return v


def _id_value(v: Any) -> Any:
    """An id as given: a string, an integer or null. Checked before pydantic's union, so a boolean is not read
    as 1 (``true`` came back as ``1``) and a wrong type is one error at the field, not one per union member
    (``items.0.id.str``, ``items.0.id.int``)."""
    if v is None or isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    raise PydanticCustomError("id_type", "must be a string, an integer or null")


def _timestamp(v: Any) -> Any:
    """A turn's timestamp as given: a string, a finite number or null (checked as :func:`_id_value` is)."""
    if v is None or isinstance(v, str) or (isinstance(v, int | float) and not isinstance(v, bool)):
        return _finite(v)
    raise PydanticCustomError("ts_type", "must be a string, a number or null")


#: a caller's id, returned as given
Id = Annotated[str | int | None, BeforeValidator(_id_value)]


@dataclass(frozen=True)
class Limits:
    """The configured count limits, checked before the items are validated one by one (fast 422s)."""

    max_items: int
    max_text_chars: int


#: The limits of the app serving the current request (set by ``service.api.middleware.BodyGuard``).
ACTIVE_LIMITS: ContextVar[Limits | None] = ContextVar("calmfirst_limits", default=None)


def _check_count(v: Any, what: str) -> Any:
    limits = ACTIVE_LIMITS.get()
    if limits is not None and isinstance(v, list) and len(v) > limits.max_items:
        raise PydanticCustomError("too_many", "more than {limit} " + what, {"limit": limits.max_items})
    return v


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AnalyzeRequest(_Request):
    text: Text = Field(..., description="one customer message")
    lang: Lang | None = Field(None, description="language of next_step; default follows the script")
    explain: bool = Field(False, description="add the phrases that drove the anger score (occlusion)")
    redact: bool = Field(False, description="return the text with personal data masked")


class BatchItem(_Request):
    id: Id = None
    text: Text


class BatchRequest(_Request):
    items: list[BatchItem] = Field(..., min_length=1)
    lang: Lang | None = None
    redact: bool = False

    @field_validator("items", mode="before")
    @classmethod
    def _count(cls, v: Any) -> Any:
        return _check_count(v, "items in one batch")


class TurnIn(_Request):
    role: Role
    text: Text
    ts: Annotated[str | int | float | None, BeforeValidator(_timestamp)] = None


class ConversationRequest(_Request):
    id: Id = None
    turns: list[TurnIn] = Field(
        ...,
        min_length=1,
        description="the chat in order; at least one customer turn",
        json_schema_extra={"contains": {"type": "object", "properties": {"role": {"const": "customer"}}}},
    )
    lang: Lang | None = None
    redact: bool = False
    explain: bool = Field(False, description="explain the last customer turn's anger score")

    @field_validator("turns", mode="before")
    @classmethod
    def _count(cls, v: Any) -> Any:
        return _check_count(v, "turns in one conversation")

    @field_validator("turns")
    @classmethod
    def _has_customer(cls, v: list[TurnIn]) -> list[TurnIn]:
        if not any(t.role == Role.CUSTOMER for t in v):
            raise ValueError("a conversation needs at least one customer turn")
        return v


# ------------------------------------------------------------------ responses
class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
    model: ModelInfo


class Loading(BaseModel):
    status: Literal["loading"] = "loading"


class AngerLevel(BaseModel):
    level: int
    label: AngerLabel


class PolicyInfo(BaseModel):
    calm_first_level: int
    calm_first_prob: float | None
    threat_threshold: float
    escalate_on_furious: bool


class Labels(BaseModel):
    """The label schema, policy and playbook in force."""

    schema_version: str
    anger_levels: list[AngerLevel]
    complaint_types: list[ComplaintType]
    threat: Literal["boolean"] = "boolean"
    flags: list[Flag]
    policy: PolicyInfo
    playbook: dict[str, Any]
    model: ModelInfo


class FieldProblem(BaseModel):
    field: str = Field(..., description="dotted path of the bad field, e.g. items.1.text")
    message: str


class ErrorResponse(BaseModel):
    """Every 422: a one-line summary naming the field(s), and the problems one by one."""

    detail: str = Field(..., description="'field: message' for each problem, joined by '; '")
    errors: list[FieldProblem]


class Detail(BaseModel):
    """400, 401, 413, 415 and 503 answers."""

    detail: str


#: Error answers every route may give, for the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Detail, "description": "a malformed request header (Content-Length)"},
    401: {"model": Detail, "description": "x-api-key missing or wrong (when CALMFIRST_API_KEY is set)"},
    413: {"model": Detail, "description": "body larger than CALMFIRST_MAX_BODY_BYTES"},
    415: {"model": Detail, "description": "the body is not JSON (Content-Type other than application/json)"},
    422: {
        "model": ErrorResponse,
        "description": "a field is missing or invalid, or the body is not valid JSON; the message names it",
    },
    503: {
        "model": Detail,
        "description": "the model is still loading, or CALMFIRST_MAX_INFLIGHT requests are already in progress, "
        "or (batches, explanations) CALMFIRST_MAX_BULK_TEXTS texts of other bulk work are being scored; the "
        "last two with Retry-After",
    },
}
