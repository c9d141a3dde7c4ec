"""The playbook: next-step texts as editable data, validated at load.

Validation errors name the offending key (``steps.offer_options.default.en``)
so a contact center editing the YAML sees exactly what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from data.schema import COMPLAINT_TYPES
from data.vocab import CONVERSATION_STATES as _STATES
from data.vocab import ROUTE_SITUATIONS, Lang, Step, values
from service.results import NextStep

#: The playbook shipped with the service (what ``CALMFIRST_PLAYBOOK_PATH`` replaces).
DEFAULT_PLAYBOOK = Path(__file__).resolve().parent / "playbook.yaml"
LANGS: tuple[str, ...] = values(Lang)
ROUTE_KEYS: tuple[str, ...] = values(ROUTE_SITUATIONS)
#: The practice's step codes (CONTRACT.md); a playbook may add its own.
CORE_STEPS: tuple[str, ...] = values(Step)


class PlaybookError(ValueError):
    """The playbook file is invalid; the message names the key."""


CONVERSATION_STATES: tuple[str, ...] = values(_STATES)


@dataclass(frozen=True)
class ConversationRules:
    """How a whole chat picks its next step; see the ``conversation`` section of playbook.yaml."""

    sequences: dict[str, list[str]]
    optional: frozenset[str]
    repair: str
    repair_after: frozenset[str]
    solution_steps: frozenset[str]
    solution_block_level: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "sequences": self.sequences,
            "optional": sorted(self.optional),
            "repair": self.repair,
            "repair_after": sorted(self.repair_after),
            "solution_steps": sorted(self.solution_steps),
            "solution_block_level": self.solution_block_level,
        }


DEFAULT_CONVERSATION: dict[str, Any] = {
    "sequences": {
        "escalate": ["listen_acknowledge", "apologize", "escalate_supervisor", "promise_callback"],
        "calm_first": ["listen_acknowledge", "thank", "apologize", "commit_action", "promise_callback"],
        "recovered": ["apologize", "offer_options", "promise_callback", "confirm_satisfaction"],
        "ready_for_solutions": [
            "listen_acknowledge",
            "thank",
            "apologize",
            "ask_details",
            "offer_options",
            "promise_callback",
            "confirm_satisfaction",
        ],
        "no_complaint": ["answer_question", "confirm_satisfaction"],
    },
    "optional": ["listen_acknowledge", "ask_details", "thank"],
    "repair": "apologize",
    "repair_after": ["argued", "blamed_customer", "last_word", "solution_while_furious"],
    "solution_steps": ["offer_options"],
    "solution_block_level": 3,
}


def _parse_conversation(raw: Any, steps: dict[str, Any], fail: Any) -> ConversationRules:
    if raw is None:
        raw = DEFAULT_CONVERSATION
    if not isinstance(raw, dict):
        raise fail("conversation", "expected a mapping")
    unknown = set(raw) - set(DEFAULT_CONVERSATION)
    if unknown:
        raise fail(f"conversation.{sorted(unknown)[0]}", f"unknown key; known: {sorted(DEFAULT_CONVERSATION)}")
    merged = {**DEFAULT_CONVERSATION, **raw}
    seqs = merged["sequences"]
    if not isinstance(seqs, dict):
        raise fail("conversation.sequences", "expected a mapping of state -> list of step codes")
    for state in CONVERSATION_STATES:
        if state not in seqs:
            raise fail(f"conversation.sequences.{state}", "missing")
    for state, codes in seqs.items():
        if state not in CONVERSATION_STATES:
            raise fail(f"conversation.sequences.{state}", f"unknown state; known: {list(CONVERSATION_STATES)}")
        if not isinstance(codes, list) or not codes:
            raise fail(f"conversation.sequences.{state}", "expected a non-empty list of step codes")
        for i, code in enumerate(codes):
            if code not in steps:
                raise fail(f"conversation.sequences.{state}[{i}]", f"step {code!r} is not defined under 'steps'")
    for key in ("optional", "solution_steps"):
        if not isinstance(merged[key], list):
            raise fail(f"conversation.{key}", "expected a list of step codes")
        for i, code in enumerate(merged[key]):
            if code not in steps:
                raise fail(f"conversation.{key}[{i}]", f"step {code!r} is not defined under 'steps'")
    if merged["repair"] not in steps:
        raise fail("conversation.repair", f"step {merged['repair']!r} is not defined under 'steps'")
    if not isinstance(merged["repair_after"], list):
        raise fail("conversation.repair_after", "expected a list of mistake codes")
    for i, code in enumerate(merged["repair_after"]):
        if not isinstance(code, str) or not code:
            raise fail(f"conversation.repair_after[{i}]", "expected a mistake code")
    level = merged["solution_block_level"]
    if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 3:
        raise fail("conversation.solution_block_level", f"expected an anger level 0-3, got {level!r}")
    return ConversationRules(
        sequences={k: list(v) for k, v in seqs.items()},
        optional=frozenset(merged["optional"]),
        repair=merged["repair"],
        repair_after=frozenset(merged["repair_after"]),
        solution_steps=frozenset(merged["solution_steps"]),
        solution_block_level=level,
    )


@dataclass
class Playbook:
    version: int
    languages: tuple[str, ...]
    routes: dict[str, str]
    order: list[str]
    thresholds: dict[str, Any]
    steps: dict[str, dict[str, dict[str, str]]]
    source: str = "<memory>"
    conversation: ConversationRules | None = None

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
        def fail(key: str, msg: str) -> PlaybookError:
            return PlaybookError(f"{source}: {key}: {msg}")

        if not isinstance(raw, dict):
            raise fail("(top)", "expected a mapping")
        known_top = {"version", "languages", "routes", "order", "thresholds", "steps", "conversation"}
        for key in raw:
            if key not in known_top:
                raise fail(str(key), f"unknown key; known: {sorted(known_top)}")
        for key in ("version", "languages", "routes", "steps"):
            if key not in raw:
                raise fail(key, "missing")
        languages = raw["languages"]
        if not isinstance(languages, list) or not languages:
            raise fail("languages", "expected a non-empty list")
        for lang in languages:
            if lang not in LANGS:
                raise fail("languages", f"unknown language {lang!r}; known: {list(LANGS)}")
        steps = raw["steps"]
        if not isinstance(steps, dict) or not steps:
            raise fail("steps", "expected a mapping of step code -> texts")
        for code, variants in steps.items():
            if not isinstance(variants, dict):
                raise fail(f"steps.{code}", "expected a mapping with 'default' and optional complaint types")
            if "default" not in variants:
                raise fail(f"steps.{code}.default", "missing")
            for variant, texts in variants.items():
                if variant != "default" and variant not in COMPLAINT_TYPES:
                    raise fail(f"steps.{code}.{variant}", f"not a complaint type; known: {list(COMPLAINT_TYPES)}")
                if not isinstance(texts, dict):
                    raise fail(f"steps.{code}.{variant}", "expected a mapping of language -> text")
                for lang in languages if variant == "default" else texts:
                    if lang not in languages:
                        raise fail(f"steps.{code}.{variant}.{lang}", "language not listed in 'languages'")
                    text = texts.get(lang)
                    if not isinstance(text, str) or not text.strip():
                        raise fail(f"steps.{code}.{variant}.{lang}", "missing or empty text")
        routes = raw["routes"]
        if not isinstance(routes, dict):
            raise fail("routes", "expected a mapping")
        for key in ROUTE_KEYS:
            if key not in routes:
                raise fail(f"routes.{key}", "missing")
        for key, code in routes.items():
            if key not in ROUTE_KEYS:
                raise fail(f"routes.{key}", f"unknown route; known: {list(ROUTE_KEYS)}")
            if code not in steps:
                raise fail(f"routes.{key}", f"step {code!r} is not defined under 'steps'")
        order = raw.get("order", [])
        if not isinstance(order, list):
            raise fail("order", "expected a list of step codes")
        for i, code in enumerate(order):
            if code not in steps:
                raise fail(f"order[{i}]", f"step {code!r} is not defined under 'steps'")
        thresholds = raw.get("thresholds", {}) or {}
        if not isinstance(thresholds, dict):
            raise fail("thresholds", "expected a mapping")
        return cls(
            version=int(raw["version"]),
            languages=tuple(languages),
            routes=dict(routes),
            order=list(order),
            thresholds=dict(thresholds),
            steps=steps,
            source=source,
            conversation=_parse_conversation(raw.get("conversation"), steps, fail),
        )

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
        return self.step(self.routes[situation], complaint_type=complaint_type, lang=lang)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "source": self.source,
            "languages": list(self.languages),
            "routes": self.routes,
            "order": self.order,
            "thresholds": self.thresholds,
            "steps": self.steps,
            "conversation": self.conversation.to_dict() if self.conversation else None,
        }
