"""The playbook: next-step texts and conversation rules as editable data, validated at load.

A pydantic model checks the shape and the types; the cross-references (a route or a sequence
naming a step that is not defined, a text missing in a language) are checked after it. Every
error names the offending key (``steps.offer_options.default.en: missing or empty text``) so a
contact center editing the YAML sees exactly what to fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from data.schema import COMPLAINT_TYPES
from data.vocab import CONVERSATION_STATES as _STATES
from data.vocab import ROUTE_SITUATIONS, Lang, Mistake, Situation, Step, values
from service.results import NextStep

#: The playbook shipped with the service (what ``CALMFIRST_PLAYBOOK_PATH`` replaces).
DEFAULT_PLAYBOOK = Path(__file__).resolve().parent / "playbook.yaml"
LANGS: tuple[str, ...] = values(Lang)
ROUTE_KEYS: tuple[str, ...] = values(ROUTE_SITUATIONS)
#: The practice's step codes (CONTRACT.md); a playbook may add its own.
CORE_STEPS: tuple[str, ...] = values(Step)
CONVERSATION_STATES: tuple[str, ...] = values(_STATES)

#: step code -> variant ("default" or a complaint type) -> language -> text
StepTexts = dict[str, dict[str, dict[str, str]]]


class PlaybookError(ValueError):
    """The playbook file is invalid; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Routes(_Strict):
    """Which step a single message gets, by routing situation."""

    escalate: str
    calm_first: str
    ready_for_solutions: str
    no_complaint: str

    def step_for(self, situation: Situation | str) -> str:
        code: str = getattr(self, str(situation))
        return code


class Thresholds(BaseModel):
    """Numbers of the practice; ``calm_first_level`` is the policy's default (settings may override it)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    calm_first_level: int = Field(2, ge=1, le=3, description="anger level at or above which the flag is calm_first")
    callback_minutes: int = Field(15, gt=0, description="promised callback when a colleague must be consulted")


def _steps(*codes: Step) -> Any:
    """A default sequence (a factory: each playbook gets its own list)."""
    return Field(default_factory=lambda: [str(c) for c in codes], min_length=1)


class Sequences(_Strict):
    """The steps of the practice for each conversation state, in order (the defaults are CONTRACT.md v1.1)."""

    escalate: list[str] = _steps(
        Step.LISTEN_ACKNOWLEDGE, Step.APOLOGIZE, Step.ESCALATE_SUPERVISOR, Step.PROMISE_CALLBACK
    )
    calm_first: list[str] = _steps(
        Step.LISTEN_ACKNOWLEDGE, Step.THANK, Step.APOLOGIZE, Step.COMMIT_ACTION, Step.PROMISE_CALLBACK
    )
    recovered: list[str] = _steps(Step.APOLOGIZE, Step.OFFER_OPTIONS, Step.PROMISE_CALLBACK, Step.CONFIRM_SATISFACTION)
    ready_for_solutions: list[str] = _steps(
        Step.LISTEN_ACKNOWLEDGE,
        Step.THANK,
        Step.APOLOGIZE,
        Step.ASK_DETAILS,
        Step.OFFER_OPTIONS,
        Step.PROMISE_CALLBACK,
        Step.CONFIRM_SATISFACTION,
    )
    no_complaint: list[str] = _steps(Step.ANSWER_QUESTION, Step.CONFIRM_SATISFACTION)


class ConversationRules(_Strict):
    """How a whole chat picks its next step; see the ``conversation`` section of playbook.yaml."""

    sequences: Sequences = Field(default_factory=Sequences)
    optional: frozenset[str] = frozenset(values((Step.LISTEN_ACKNOWLEDGE, Step.ASK_DETAILS, Step.THANK)))
    repair: str = str(Step.APOLOGIZE)
    repair_after: frozenset[str] = frozenset(
        values((Mistake.ARGUED, Mistake.BLAMED_CUSTOMER, Mistake.LAST_WORD, Mistake.SOLUTION_WHILE_FURIOUS))
    )
    solution_steps: frozenset[str] = frozenset(values((Step.OFFER_OPTIONS,)))
    solution_block_level: int = Field(3, ge=0, le=3, description="an anger level 0-3")

    def sequence(self, state: Situation | str) -> list[str]:
        codes: list[str] = getattr(self.sequences, str(state))
        return codes

    def step_codes(self) -> Iterator[tuple[str, str]]:
        """(key, step code) for every step the rules name."""
        for state in CONVERSATION_STATES:
            for i, code in enumerate(self.sequence(state)):
                yield f"conversation.sequences.{state}[{i}]", code
        for key in ("optional", "solution_steps"):
            for i, code in enumerate(sorted(getattr(self, key))):
                yield f"conversation.{key}[{i}]", code
        yield "conversation.repair", self.repair

    def to_dict(self) -> dict[str, Any]:
        return {
            "sequences": self.sequences.model_dump(mode="json"),
            "optional": sorted(self.optional),
            "repair": self.repair,
            "repair_after": sorted(self.repair_after),
            "solution_steps": sorted(self.solution_steps),
            "solution_block_level": self.solution_block_level,
        }


class Playbook(_Strict):
    version: int
    languages: tuple[Lang, ...] = Field(..., min_length=1)
    routes: Routes
    order: list[str] = Field(default_factory=list, description="the usual order of the practice")
    thresholds: Thresholds = Field(default_factory=Thresholds)
    steps: StepTexts = Field(..., min_length=1)
    conversation: ConversationRules = Field(default_factory=ConversationRules)
    source: str = "<memory>"

    @model_validator(mode="after")
    def _cross_references(self) -> Playbook:
        for code, variants in self.steps.items():
            if "default" not in variants:
                raise ValueError(f"steps.{code}.default: missing")
            for variant, texts in variants.items():
                if variant != "default" and variant not in COMPLAINT_TYPES:
                    raise ValueError(f"steps.{code}.{variant}: not a complaint type; known: {list(COMPLAINT_TYPES)}")
                for lang in self.languages if variant == "default" else texts:
                    if lang not in self.languages:
                        raise ValueError(f"steps.{code}.{variant}.{lang}: language not listed in 'languages'")
                    if not texts.get(lang, "").strip():
                        raise ValueError(f"steps.{code}.{variant}.{lang}: missing or empty text")
        named = [(f"routes.{key}", self.routes.step_for(key)) for key in ROUTE_KEYS]
        named += [(f"order[{i}]", code) for i, code in enumerate(self.order)]
        named += list(self.conversation.step_codes())
        for key, code in named:
            if code not in self.steps:
                raise ValueError(f"{key}: step {code!r} is not defined under 'steps'")
        return self

    @classmethod
    def load(cls, path: str | Path) -> Playbook:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise PlaybookError(f"{path}: not valid YAML: {e}") from e
        except OSError as e:
            raise PlaybookError(f"{path}: cannot read playbook: {e}") from e
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "<memory>") -> Playbook:
        if not isinstance(raw, dict):
            raise PlaybookError(f"{source}: (top): expected a mapping")
        if "source" in raw:
            raise PlaybookError(f"{source}: source: unknown key")
        try:
            return cls.model_validate({**raw, "source": source})
        except ValidationError as e:
            raise PlaybookError(f"{source}: {_first_problem(e)}") from e

    def step(self, code: str, *, complaint_type: str, lang: str) -> NextStep:
        """Text of one step for a complaint type, falling back to the step's default."""
        if code not in self.steps:
            raise KeyError(f"unknown step {code!r}")
        if lang not in self.languages:
            raise KeyError(f"language {lang!r} not in playbook languages {list(self.languages)}")
        variants = self.steps[code]
        texts = variants.get(complaint_type) or variants["default"]
        text = texts.get(lang) or variants["default"][lang]
        return NextStep(code=code, text=text, lang=Lang(lang))

    def route(self, situation: str, *, complaint_type: str, lang: str) -> NextStep:
        return self.step(self.routes.step_for(situation), complaint_type=complaint_type, lang=lang)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "source": self.source,
            "languages": [str(lang) for lang in self.languages],
            "routes": self.routes.model_dump(),
            "order": self.order,
            "thresholds": self.thresholds.model_dump(exclude_unset=True),
            "steps": self.steps,
            "conversation": self.conversation.to_dict(),
        }


def _first_problem(error: ValidationError) -> str:
    """``key: message`` for the first problem pydantic found (cross-reference messages carry their key)."""
    e = error.errors()[0]
    ctx_error = (e.get("ctx") or {}).get("error")
    if not e["loc"] and ctx_error is not None:
        return str(ctx_error)
    key = ""
    for part in e["loc"]:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    message = {"missing": "missing", "extra_forbidden": "unknown key"}.get(e["type"], e["msg"])
    return f"{key or '(top)'}: {message}"
