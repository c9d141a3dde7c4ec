"""Every code CalmFirst reads or writes, defined once.

Users' scripts, dashboards and routing rules match on these strings (``../shared/CONTRACT.md``),
so they live here as ``StrEnum``s and every other module imports them instead of spelling the
strings again. A ``StrEnum`` member *is* its string: it compares equal to it, ``json.dumps``
writes it as it, and pydantic validates a plain string into it, so the JSON a client sees is
the same whether code holds ``Flag.CALM_FIRST`` or ``"calm_first"``.

The order of members is meaningful where the contract gives one (anger levels 0-3, the
practice's usual order of steps) and is what tuples derived from them keep.
"""

from __future__ import annotations

from enum import StrEnum


class AngerLabel(StrEnum):
    """Anger level names; the member's position is the level (0 calm ... 3 furious)."""

    CALM = "calm"
    DISPLEASED = "displeased"
    ANGRY = "angry"
    FURIOUS = "furious"

    @property
    def level(self) -> int:
        return list(AngerLabel).index(self)


class ComplaintType(StrEnum):
    BILLING = "billing"
    PRODUCT_QUALITY = "product_quality"
    DELIVERY = "delivery"
    STAFF_ATTITUDE = "staff_attitude"
    REFUND_RETURN = "refund_return"
    SERVICE_QUALITY = "service_quality"
    ACCOUNT_TECHNICAL = "account_technical"
    POLICY_PROMOTION = "policy_promotion"
    OTHER = "other"
    NONE = "none"


class Script(StrEnum):
    HANT = "hant"
    HANS = "hans"


class Lang(StrEnum):
    """Languages of the next-step texts."""

    ZH_HANT = "zh-Hant"
    ZH_HANS = "zh-Hans"
    EN = "en"


#: The next step's language when the caller does not ask for one: the customer's own script.
SCRIPT_LANG: dict[Script, Lang] = {Script.HANT: Lang.ZH_HANT, Script.HANS: Lang.ZH_HANS}


class Flag(StrEnum):
    """``route.flag``: soothe first, or go ahead with solutions."""

    CALM_FIRST = "calm_first"
    READY_FOR_SOLUTIONS = "ready_for_solutions"


class Situation(StrEnum):
    """Routing situations: the playbook's ``routes`` keys (one message) and conversation states."""

    ESCALATE = "escalate"
    CALM_FIRST = "calm_first"
    RECOVERED = "recovered"  # conversations only: anger came down from calm_first_level or more
    READY_FOR_SOLUTIONS = "ready_for_solutions"
    NO_COMPLAINT = "no_complaint"


#: The situations one message can be in (``routes`` in the playbook); ``recovered`` needs a history.
ROUTE_SITUATIONS: tuple[Situation, ...] = (
    Situation.ESCALATE,
    Situation.CALM_FIRST,
    Situation.READY_FOR_SOLUTIONS,
    Situation.NO_COMPLAINT,
)
#: The states a conversation can be in (``conversation.sequences`` in the playbook).
CONVERSATION_STATES: tuple[Situation, ...] = tuple(Situation)


class Step(StrEnum):
    """The practice's steps, in their usual order (CONTRACT.md); a playbook may add its own codes."""

    LISTEN_ACKNOWLEDGE = "listen_acknowledge"
    THANK = "thank"
    APOLOGIZE = "apologize"
    COMMIT_ACTION = "commit_action"
    ASK_DETAILS = "ask_details"
    OFFER_OPTIONS = "offer_options"
    PROMISE_CALLBACK = "promise_callback"
    CONFIRM_SATISFACTION = "confirm_satisfaction"
    ESCALATE_SUPERVISOR = "escalate_supervisor"
    ANSWER_QUESTION = "answer_question"


class Mistake(StrEnum):
    """Agent mistakes the practice warns against; a playbook may add its own codes."""

    ARGUED = "argued"
    BLAMED_CUSTOMER = "blamed_customer"
    LAST_WORD = "last_word"
    INTERROGATED = "interrogated"
    SOLUTION_WHILE_FURIOUS = "solution_while_furious"


#: Mistakes visible in the agent's own words; ``solution_while_furious`` needs the customer's state.
TURN_MISTAKES: tuple[Mistake, ...] = (Mistake.ARGUED, Mistake.BLAMED_CUSTOMER, Mistake.LAST_WORD, Mistake.INTERROGATED)


class Role(StrEnum):
    CUSTOMER = "customer"
    AGENT = "agent"


class Trend(StrEnum):
    """``anger_trend`` of a conversation."""

    RISING = "rising"
    FALLING = "falling"
    STEADY = "steady"


class Outcome(StrEnum):
    """How a conversation's anger ended (QA handling score)."""

    CALMED = "calmed"
    ROSE = "rose"
    STEADY = "steady"


class Metric(StrEnum):
    """Headline evaluation metrics: model card, evaluation report, per-script breakdown."""

    CALM_FIRST_F1 = "calm_first_f1"
    ANGER_QWK = "anger_qwk"
    ANGER_ACCURACY = "anger_accuracy"
    ANGER_MAE = "anger_mae"
    TYPE_MACRO_F1 = "type_macro_f1"
    TYPE_ACCURACY = "type_accuracy"
    THREAT_F1 = "threat_f1"
    CALM_FIRST_ECE = "calm_first_ece"


HEADLINE_METRICS: tuple[Metric, ...] = tuple(Metric)
#: The four task scores whose mean picks the best epoch (and that the dev log shows).
SELECTION_METRICS: tuple[Metric, ...] = (
    Metric.CALM_FIRST_F1,
    Metric.ANGER_QWK,
    Metric.TYPE_MACRO_F1,
    Metric.THREAT_F1,
)


def values(codes: tuple[StrEnum, ...] | type[StrEnum]) -> tuple[str, ...]:
    """Plain strings of an enum or a tuple of members (for messages and JSON written by hand)."""
    return tuple(str(c.value) for c in codes)
