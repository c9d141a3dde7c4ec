"""The playbook: next-step texts and conversation rules as editable data, validated at load.

A pydantic model checks the shape and the types; the cross-references (a route or a sequence
naming a step that is not defined, a text missing in a language) are checked after it. Every
error names the offending key (``steps.offer_options.default.en: missing or empty text``) so a
contact center editing the YAML sees exactly what to fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from data.schema import COMPLAINT_TYPES
from data.vocab import CONVERSATION_STATES as _STATES
from data.vocab import ROUTE_SITUATIONS, SCRIPT_LANG, Lang, Mistake, Situation, Step, values
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

    model_config = ConfigDict(extra="forbid", frozen=True)
    calm_first_level: int = Field(2, ge=1, le=3, description="anger level at or above which the flag is calm_first")
    callback_minutes: int = Field(
        15, gt=0, description="promised callback when a colleague must be consulted ({callback_minutes} in step texts)"
    )


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


#: Phrases that show the agent put the customer off without a time (CONTRACT.md rule 3); matched in both scripts.
#: Not 確認一下 / 了解一下 / 反饋 alone: "想跟您確認一下,問題都解決了嗎" (confirm_satisfaction's own wording),
#: "我想先了解一下" (listening) and "感謝您的反饋" defer nothing.
DEFERRAL_PHRASES: tuple[str, ...] = (
    "查一下", "查詢一下", "幫您查", "幫你查", "為您查", "確認後", "核實一下", "稍後", "稍候", "晚點",
    "晚些", "之後回覆",
    "再回覆", "回覆您", "回覆你", "再聯繫", "再聯絡", "給您回電", "回電", "反饋給", "反映給", "轉達", "跟進",
    "請稍等", "請耐心等待", "敬請等待", "等待處理", "處理後", "盡快處理", "儘快處理", "會盡快", "會儘快",
    "查吓", "遲啲", "等陣", "覆返",
)  # fmt: skip
#: Phrases that report a fix done by the agent (rule 5, with commit_action in the same turn).
FIX_DONE_PHRASES: tuple[str, ...] = (
    "已經幫您", "已幫您", "已經為您", "已為您", "已經替您", "已替您", "已處理", "已經處理", "處理好了", "已完成",
    "辦好", "已退款", "已退回", "已補發", "已補寄", "已重新", "已修復", "已恢復", "已開通", "已取消", "已更正",
    "已調整", "已解決", "已經解決", "已安排", "已經安排", "搞定", "搞掂",
)  # fmt: skip
#: Phrases with which a customer confirms a fix (rule 5).
FIX_CONFIRMED_PHRASES: tuple[str, ...] = (
    "好了", "可以了", "收到了", "解決了", "正常了", "恢復了", "沒問題了", "ok了", "OK了", "搞定了", "能用了",
    "得咗", "搞掂咗", "冇問題",
)  # fmt: skip
#: Thanks from the customer (rule 5: "the customer is at 0 or thanks").
THANKS_PHRASES: tuple[str, ...] = ("謝謝", "謝啦", "感謝", "多謝", "唔該", "thank", "thx", "3q", "辛苦了", "麻煩你了")
#: What makes a customer turn a question (rule 6).
QUESTION_MARKERS: tuple[str, ...] = (
    "?", "？", "嗎", "呢", "怎麼", "怎樣", "如何", "請問", "哪裡", "哪裏", "哪個", "哪些", "幾", "多少", "是否",
    "能不能", "可不可以", "可以嗎", "有沒有", "什麼", "為什麼", "甚麼", "咩", "點樣", "邊度", "邊個", "未",
)  # fmt: skip


#: The practice's usual order (CONTRACT.md rule 7).
USUAL_ORDER: tuple[str, ...] = (
    "listen_acknowledge", "thank", "apologize", "commit_action", "ask_details", "offer_options", "promise_callback",
    "confirm_satisfaction",
)  # fmt: skip


class _Rule(_Strict):
    """One next-step rule of ``conversation.rules`` (the first that applies gives the next step)."""

    step: str

    def step_fields(self) -> Iterator[tuple[str, str]]:
        """(field, step code) for every step this rule names (checked against ``steps``)."""
        for name, value in self:
            if name in ("step", "after_handover", "if_acknowledged"):
                yield name, value
            elif name.endswith("_steps") or name in ("order", "no_grievance_order", "acknowledged_by"):
                for i, code in enumerate(value):
                    yield f"{name}[{i}]", code


class ThreatRule(_Rule):
    """1. A threat and no hand-over yet -> ``step``; after the hand-over -> ``after_handover`` unless a time was
    already given (one of ``time_steps`` taken in or after the hand-over turn)."""

    rule: Literal["threat"] = "threat"
    step: str = str(Step.ESCALATE_SUPERVISOR)
    after_handover: str = str(Step.PROMISE_CALLBACK)
    handover_steps: list[str] = Field(default_factory=lambda: [str(Step.ESCALATE_SUPERVISOR)], min_length=1)
    time_steps: list[str] = Field(default_factory=lambda: [str(Step.PROMISE_CALLBACK)])


class UpsetRule(_Rule):
    """2. The customer's last level is ``min_level`` or more -> ``step``; if the agent's last turn already took
    one of ``acknowledged_by`` -> ``if_acknowledged``. Never a solution while the customer is this upset."""

    rule: Literal["upset"] = "upset"
    min_level: int = Field(2, ge=0, le=3, description="an anger level 0-3")
    step: str = str(Step.LISTEN_ACKNOWLEDGE)
    if_acknowledged: str = str(Step.APOLOGIZE)
    acknowledged_by: list[str] = Field(default_factory=lambda: [str(Step.LISTEN_ACKNOWLEDGE)])


class DeferredRule(_Rule):
    """3. The agent's last turn deferred (one of ``phrases``) without a time (none of ``time_steps``) -> ``step``."""

    rule: Literal["deferred"] = "deferred"
    step: str = str(Step.PROMISE_CALLBACK)
    phrases: list[str] = Field(default_factory=lambda: list(DEFERRAL_PHRASES), min_length=1)
    time_steps: list[str] = Field(default_factory=lambda: [str(Step.PROMISE_CALLBACK)])


class DetailsGivenRule(_Rule):
    """4. The customer answered an agent turn that took one of ``after_steps`` (chose an option, supplied the
    details asked) -> ``step``."""

    rule: Literal["details_given"] = "details_given"
    step: str = str(Step.COMMIT_ACTION)
    after_steps: list[str] = Field(
        default_factory=lambda: [str(Step.OFFER_OPTIONS), str(Step.ASK_DETAILS)], min_length=1
    )


class FixReportedRule(_Rule):
    """5. A fix was reported (the agent's last turn took one of ``fix_steps`` with one of ``agent_phrases``, or the
    customer's last turn has one of ``customer_phrases``) and the customer is at ``max_level`` or below or
    thanks (``thanks_phrases``) -> ``step``."""

    rule: Literal["fix_reported"] = "fix_reported"
    step: str = str(Step.CONFIRM_SATISFACTION)
    max_level: int = Field(0, ge=0, le=3, description="an anger level 0-3")
    fix_steps: list[str] = Field(default_factory=lambda: [str(Step.COMMIT_ACTION)])
    agent_phrases: list[str] = Field(default_factory=lambda: list(FIX_DONE_PHRASES))
    customer_phrases: list[str] = Field(default_factory=lambda: list(FIX_CONFIRMED_PHRASES))
    thanks_phrases: list[str] = Field(default_factory=lambda: list(THANKS_PHRASES))


class NewQuestionRule(_Rule):
    """6. No grievance in the conversation (no customer turn with a complaint type or at ``grievance_level`` or
    more) and the customer's last turn, after the agent's last, is a question (``question_markers``) -> ``step``."""

    rule: Literal["new_question"] = "new_question"
    step: str = str(Step.ANSWER_QUESTION)
    grievance_level: int = Field(1, ge=1, le=3, description="an anger level 1-3")
    question_markers: list[str] = Field(default_factory=lambda: list(QUESTION_MARKERS), min_length=1)


class UsualOrderRule(_Rule):
    """7. Otherwise the first step of ``order`` not yet taken since the customer's last new grievance (a customer
    turn whose complaint type had not come up before); with no grievance at all, of ``no_grievance_order``.
    When every step was taken, ``step``."""

    rule: Literal["usual_order"] = "usual_order"
    step: str = str(Step.CONFIRM_SATISFACTION)
    order: list[str] = Field(default_factory=lambda: list(USUAL_ORDER), min_length=1)
    no_grievance_order: list[str] = Field(
        default_factory=lambda: [str(Step.ANSWER_QUESTION), str(Step.CONFIRM_SATISFACTION)], min_length=1
    )


NextStepRule = Annotated[
    ThreatRule | UpsetRule | DeferredRule | DetailsGivenRule | FixReportedRule | NewQuestionRule | UsualOrderRule,
    Field(discriminator="rule"),
]
RULE_KINDS: tuple[str, ...] = (
    "threat", "upset", "deferred", "details_given", "fix_reported", "new_question", "usual_order",
)  # fmt: skip


def _default_rules() -> list[Any]:
    return [
        ThreatRule(), UpsetRule(), DeferredRule(), DetailsGivenRule(), FixReportedRule(), NewQuestionRule(),
        UsualOrderRule(),
    ]  # fmt: skip


class ConversationRules(_Strict):
    """How a whole chat picks its next step (CONTRACT.md v1.1); see the ``conversation`` section of playbook.yaml.

    ``rules`` are tried in order and the first that applies gives the next step; a contact center may
    reorder them, drop one, or change their steps, levels and phrases. ``repair`` comes first after an
    agent turn with one of ``repair_after`` mistakes, unless a rule of ``repair_unless`` applies.
    ``sequences`` and ``optional`` only say which steps count as *missed* for the conversation's final
    situation (``state.steps_missed``), not what comes next.
    """

    rules: list[NextStepRule] = Field(default_factory=_default_rules, min_length=1)
    repair: str = str(Step.APOLOGIZE)
    repair_after: frozenset[str] = frozenset(values(Mistake))
    repair_unless: frozenset[str] = frozenset({"threat"})
    #: solution_while_furious: one of these steps while the customer's last level is solution_block_level or
    #: more, with none of acknowledgement_steps in the same turn
    solution_steps: frozenset[str] = frozenset(values((Step.OFFER_OPTIONS, Step.COMMIT_ACTION, Step.ANSWER_QUESTION)))
    acknowledgement_steps: frozenset[str] = frozenset(values((Step.LISTEN_ACKNOWLEDGE, Step.APOLOGIZE)))
    solution_block_level: int = Field(3, ge=0, le=3, description="an anger level 0-3")
    #: steps of a solution_while_furious turn that do not count as taken (made again once the customer is calmer)
    not_taken_while_furious: frozenset[str] = frozenset(values((Step.OFFER_OPTIONS,)))
    sequences: Sequences = Field(default_factory=Sequences)
    optional: frozenset[str] = frozenset(values((Step.LISTEN_ACKNOWLEDGE, Step.ASK_DETAILS, Step.THANK)))

    @model_validator(mode="after")
    def _known_rule_names(self) -> ConversationRules:
        for i, name in enumerate(sorted(self.repair_unless)):
            if name not in RULE_KINDS:
                raise ValueError(f"conversation.repair_unless[{i}]: {name!r} is not a rule; known: {list(RULE_KINDS)}")
        mistakes = values(Mistake)
        for i, name in enumerate(sorted(self.repair_after)):  # a typo here silently switched repair off
            if name not in mistakes:
                raise ValueError(f"conversation.repair_after[{i}]: {name!r} is not a mistake; known: {mistakes}")
        return self

    def sequence(self, state: Situation | str) -> list[str]:
        codes: list[str] = getattr(self.sequences, str(state))
        return codes

    def step_codes(self) -> Iterator[tuple[str, str]]:
        """(key, step code) for every step the rules name."""
        for i, rule in enumerate(self.rules):
            for name, code in rule.step_fields():
                yield f"conversation.rules[{i}].{name}", code
        for state in CONVERSATION_STATES:
            for i, code in enumerate(self.sequence(state)):
                yield f"conversation.sequences.{state}[{i}]", code
        for key in ("optional", "solution_steps", "acknowledgement_steps", "not_taken_while_furious"):
            for i, code in enumerate(sorted(getattr(self, key))):
                yield f"conversation.{key}[{i}]", code
        yield "conversation.repair", self.repair

    def to_dict(self) -> dict[str, Any]:
        return {
            "rules": [r.model_dump(mode="json") for r in self.rules],
            "repair": self.repair,
            "repair_after": sorted(self.repair_after),
            "repair_unless": sorted(self.repair_unless),
            "solution_steps": sorted(self.solution_steps),
            "acknowledgement_steps": sorted(self.acknowledgement_steps),
            "solution_block_level": self.solution_block_level,
            "not_taken_while_furious": sorted(self.not_taken_while_furious),
            "sequences": self.sequences.model_dump(mode="json"),
            "optional": sorted(self.optional),
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
        for default in SCRIPT_LANG.values():  # every message gets its script's language when none is asked for
            if default not in self.languages:
                raise ValueError(f"languages: {str(default)!r} missing (the default next-step language of its script)")
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
        usual = [r for r in self.conversation.rules if isinstance(r, UsualOrderRule)]
        if self.order and usual and list(usual[0].order) != list(self.order):
            i = self.conversation.rules.index(usual[0])
            raise ValueError(
                f"order: differs from conversation.rules[{i}].order, which decides a conversation's next step; "
                "make them the same, or drop 'order'"
            )
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

    def lang_problem(self, lang: str | None) -> str | None:
        """Why ``lang`` cannot be asked of this playbook (it has no texts in it), or None."""
        languages = [str(x) for x in self.languages]
        if lang is None or str(lang) in languages:
            return None
        return f"not a language of the playbook ({', '.join(languages)})"

    def step(self, code: str, *, complaint_type: str, lang: str) -> NextStep:
        """Text of one step for a complaint type, falling back to the step's default."""
        if code not in self.steps:
            raise KeyError(f"unknown step {code!r}")
        if lang not in self.languages:
            raise KeyError(f"language {lang!r} not in playbook languages {list(self.languages)}")
        variants = self.steps[code]
        texts = variants.get(complaint_type) or variants["default"]
        text = texts.get(lang) or variants["default"][lang]
        text = text.replace("{callback_minutes}", str(self.thresholds.callback_minutes))
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
    loc = list(e["loc"])
    for n, part in enumerate(loc):
        if n >= 2 and loc[n - 2] == "rules" and isinstance(loc[n - 1], int) and part in RULE_KINDS:
            continue  # the discriminator pydantic adds: conversation.rules[2].phrases, not rules[2].deferred.phrases
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    message = {"missing": "missing", "extra_forbidden": "unknown key"}.get(e["type"], e["msg"])
    return f"{key or '(top)'}: {message}"
