"""Conversation states: hand-written chats where the right next step is known.

The customer turns' scores are given as contract results (what the model would return),
so each case pins down the policy, not the model; the agent turns go through the real
agent-step detector. An end-to-end case with the shipped model lives in test_default_model.py.
"""

from __future__ import annotations

import pytest

from data.schema import ANGER_LABELS, COMPLAINT_TYPES
from service.analyzer import Analyzer, ConversationAnalyzer
from service.results import MessageResult
from service.routing.agent_steps import AgentStepDetector, AgentTurn
from service.routing.conversation import Turn, anger_trend, choose_next


def _result(level: int, ctype: str = "billing", *, threat: bool = False, script: str = "hant") -> MessageResult:
    probs = [0.0] * 4
    probs[level] = 1.0
    return MessageResult.model_validate(
        {
            "id": 0,
            "anger": {"level": level, "label": ANGER_LABELS[level], "score": level / 3, "probs": probs},
            "complaint": {"type": ctype, "types": [ctype], "scores": dict.fromkeys(COMPLAINT_TYPES, 0.0)},
            "threat": {"detected": threat, "score": float(threat)},
            "route": {
                "flag": "calm_first" if level >= 2 else "ready_for_solutions",
                "escalate": threat,
                "next_step": {"code": "thank", "text": "x", "lang": "en"},
            },
            "script": script,
            "model": {"name": "test", "version": "0"},
        }
    )


def _agent(steps: list[str] | None = None, mistakes: list[str] | None = None) -> AgentTurn:
    return AgentTurn(steps=steps or [], mistakes=mistakes or [], scores={})


@pytest.fixture(scope="module")
def conv(tiny_analyzer: Analyzer) -> ConversationAnalyzer:
    return ConversationAnalyzer(tiny_analyzer, AgentStepDetector.from_data())


def _state(
    conv: ConversationAnalyzer, roles: str, results: list[MessageResult], agents: list[AgentTurn], lang=None
) -> dict:  # type: ignore[no-untyped-def]
    turns = [Turn(role="customer" if r == "c" else "agent", text="x") for r in roles]
    return conv.build("c1", turns, results, agents, lang=lang).state.model_dump(mode="json")


@pytest.mark.parametrize(
    ("series", "trend"),
    [([2], "steady"), ([1, 3], "rising"), ([3, 1], "falling"), ([2, 2], "steady"), ([0, 3, 1], "falling")],
)
def test_conversation_anger_trend(series: list[int], trend: str) -> None:
    assert anger_trend(series) == trend


def test_conversation_choose_next_skips_optional_once_past() -> None:
    seq = ["listen_acknowledge", "thank", "apologize", "ask_details", "offer_options", "confirm_satisfaction"]
    opt = frozenset({"listen_acknowledge", "ask_details", "thank"})
    assert choose_next(seq, set(), opt) == "listen_acknowledge"
    assert choose_next(seq, {"offer_options"}, opt) == "apologize"  # never skip the apology
    assert choose_next(seq, {"apologize", "offer_options"}, opt) == "confirm_satisfaction"
    assert choose_next(seq, set(seq), opt) == "confirm_satisfaction"


def test_conversation_furious_customer_first_turn_listen(conv: ConversationAnalyzer) -> None:
    s = _state(conv, "c", [_result(3)], [])
    assert s["flag"] == "calm_first" and s["situation"] == "calm_first"
    assert s["next_step"]["code"] == "listen_acknowledge"
    assert s["next_step"]["lang"] == "zh-Hant"


def test_conversation_after_acknowledge_and_thanks_comes_apology(conv: ConversationAnalyzer) -> None:
    s = _state(conv, "cac", [_result(2), _result(2)], [_agent(["listen_acknowledge", "thank"])])
    assert s["steps_taken"] == ["listen_acknowledge", "thank"]
    assert s["next_step"]["code"] == "apologize"


def test_conversation_calmed_down_switches_to_solutions(conv: ConversationAnalyzer) -> None:
    s = _state(
        conv,
        "cacac",
        [_result(3), _result(2), _result(1)],
        [_agent(["listen_acknowledge", "apologize"]), _agent(["thank", "commit_action"])],
    )
    assert s["anger_series"] == [3, 2, 1] and s["anger_trend"] == "falling" and s["peak_anger"] == 3
    assert s["flag"] == "ready_for_solutions" and s["situation"] == "recovered"
    assert s["next_step"]["code"] == "offer_options"


def test_conversation_after_options_follow_up(conv: ConversationAnalyzer) -> None:
    s = _state(conv, "cacac", [_result(3), _result(1), _result(0)], [_agent(["apologize"]), _agent(["offer_options"])])
    assert s["next_step"]["code"] == "promise_callback"
    s = _state(
        conv,
        "cacaca",
        [_result(3), _result(1), _result(0)],
        [_agent(["apologize"]), _agent(["offer_options"]), _agent(["promise_callback"])],
    )
    assert s["next_step"]["code"] == "confirm_satisfaction"


def test_conversation_threat_goes_to_supervisor_then_on(conv: ConversationAnalyzer) -> None:
    s = _state(conv, "c", [_result(3, threat=True)], [])
    assert s["escalate"] and s["situation"] == "escalate"
    assert s["next_step"]["code"] == "listen_acknowledge"
    s = _state(conv, "cac", [_result(3, threat=True), _result(3)], [_agent(["listen_acknowledge", "apologize"])])
    assert s["next_step"]["code"] == "escalate_supervisor"
    s = _state(
        conv,
        "cac",
        [_result(3, threat=True), _result(3)],
        [_agent(["listen_acknowledge", "apologize", "escalate_supervisor"])],
    )
    assert s["escalate"] and s["situation"] == "calm_first"
    assert s["next_step"]["code"] == "commit_action"  # thanks are optional once the apology came


def test_conversation_offer_while_furious_is_a_mistake_and_repaired(conv: ConversationAnalyzer) -> None:
    s = _state(conv, "cac", [_result(3), _result(3)], [_agent(["offer_options"])])
    assert "solution_while_furious" in s["mistakes"]
    assert s["next_step"]["code"] == "apologize"


def test_conversation_argument_needs_repair_even_after_apology(conv: ConversationAnalyzer) -> None:
    s = _state(conv, "cacac", [_result(2), _result(1), _result(3)], [_agent(["apologize"]), _agent([], ["argued"])])
    assert s["anger_trend"] == "rising"
    assert s["mistakes"] == ["argued"]
    assert s["next_step"]["code"] == "apologize"


def test_conversation_question_only_gets_answer(conv: ConversationAnalyzer) -> None:
    s = _state(conv, "c", [_result(0, "none", script="hans")], [])
    assert s["situation"] == "no_complaint"
    assert s["next_step"]["code"] == "answer_question" and s["next_step"]["lang"] == "zh-Hans"
    s = _state(conv, "cac", [_result(0, "none"), _result(0, "none")], [_agent(["answer_question"])])
    assert s["next_step"]["code"] == "confirm_satisfaction"


def test_conversation_displeased_customer_gets_solutions_path(conv: ConversationAnalyzer) -> None:
    s = _state(conv, "c", [_result(1, "delivery")], [], lang="en")
    assert s["situation"] == "ready_for_solutions"
    assert s["next_step"]["code"] == "listen_acknowledge" and s["next_step"]["lang"] == "en"
    s = _state(
        conv,
        "cac",
        [_result(1, "delivery"), _result(1, "delivery")],
        [_agent(["listen_acknowledge", "thank", "apologize"])],
    )
    assert s["next_step"]["code"] == "ask_details"
    assert s["complaint_type"] == "delivery" and "delivery" in s["types"]


def test_conversation_needs_a_customer_turn(conv: ConversationAnalyzer) -> None:
    with pytest.raises(ValueError, match="turns"):
        conv.build("c", [Turn(role="agent", text="您好")], [], [_agent()], lang=None)


def test_conversation_analyze_end_to_end_structure(conv: ConversationAnalyzer) -> None:
    turns = [
        Turn(role="customer", text="為什麼7號還要算錢?你們到底怎麼算的!"),
        Turn(role="agent", text="非常抱歉造成您的困擾，我馬上幫您查詢帳單。"),
        Turn(role="customer", text="好，麻煩你了"),
    ]
    out = conv.analyze(turns, id="x").model_dump(mode="json")
    assert out["id"] == "x"
    assert [t["role"] for t in out["turns"]] == ["customer", "agent", "customer"]
    assert out["turns"][0]["result"]["id"] == 0 and out["turns"][2]["result"]["id"] == 2
    assert "apologize" in out["turns"][1]["steps"]
    assert len(out["state"]["anger_series"]) == 2
