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

LANGS = ("zh-Hant", "zh-Hans", "en")
SCRIPT_LANG = {"hant": "zh-Hant", "hans": "zh-Hans"}
ROUTE_KEYS = ("escalate", "calm_first", "ready_for_solutions", "no_complaint")
#: The practice's step codes (CONTRACT.md); a playbook may add its own.
CORE_STEPS = (
    "listen_acknowledge",
    "thank",
    "apologize",
    "commit_action",
    "ask_details",
    "offer_options",
    "promise_callback",
    "confirm_satisfaction",
    "escalate_supervisor",
    "answer_question",
)


class PlaybookError(ValueError):
    """The playbook file is invalid; the message names the key."""


@dataclass(frozen=True)
class NextStep:
    code: str
    text: str
    lang: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "text": self.text, "lang": self.lang}


@dataclass
class Playbook:
    version: int
    languages: tuple[str, ...]
    routes: dict[str, str]
    order: list[str]
    thresholds: dict[str, Any]
    steps: dict[str, dict[str, dict[str, str]]]
    source: str = "<memory>"

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
        return NextStep(code=code, text=text, lang=lang)

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
        }
