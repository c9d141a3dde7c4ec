"""Customer turns after the first are scored with their context (for a model trained on that format:
``context_input`` in its config); single messages, and every turn for other models, as they are."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from model.context import CONTEXT_MARK, previous_turns, with_context
from service.analyzer import Analyzer, ConversationAnalyzer
from service.routing.agent_steps import AgentTurn
from service.routing.conversation import Turn


class _Recording:
    """Wraps the tiny model and records what the model is asked to score."""

    def __init__(self, model: Any, *, context_input: bool = False) -> None:
        self.model = model
        self.config = dataclasses.replace(model.config, context_input=context_input)
        self.backend = model.backend
        self.seen: list[str] = []

    def logits(self, texts, *, batch_size=32):  # type: ignore[no-untyped-def]
        return self.model.logits(texts, batch_size=batch_size)

    def predict(self, texts, *, batch_size=32):  # type: ignore[no-untyped-def]
        self.seen.extend([texts] if isinstance(texts, str) else list(texts))
        return self.model.predict(texts, batch_size=batch_size)


class _Detector:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []

    def detect(self, texts, contexts=None, anger=None):  # type: ignore[no-untyped-def]
        self.seen.extend(zip(texts, contexts or [None] * len(texts), strict=True))
        return [AgentTurn(steps=[], mistakes=[], scores={}) for _ in texts]


TURNS = [
    Turn("customer", "帳單怎麼多了三百?"),
    Turn("agent", "不好意思，我幫您查一下"),
    Turn("customer", "還是不對"),
    Turn("agent", "已經幫您退回了"),
]


def test_customer_turns_after_the_first_carry_their_context(tiny_model) -> None:  # type: ignore[no-untyped-def]
    model = _Recording(tiny_model, context_input=True)
    detector = _Detector()
    conv = ConversationAnalyzer(Analyzer(model), detector)  # type: ignore[arg-type]
    turns = TURNS
    out = conv.analyze(turns, id="c")
    pairs = [(t.role, t.text) for t in turns]
    assert model.seen == ["帳單怎麼多了三百?", with_context("還是不對", previous_turns(pairs, 2))]
    assert CONTEXT_MARK in model.seen[1] and "agent:不好意思" in model.seen[1]
    # the result is the message's own (ids, script), only its scores read the context
    assert out.turns[2].result.id == 2 and out.turns[2].result.script == "hant"  # type: ignore[union-attr]
    # agent turns are read with the customer's turn before them
    assert detector.seen == [("不好意思，我幫您查一下", "帳單怎麼多了三百?"), ("已經幫您退回了", "還是不對")]


def test_single_messages_unchanged(tiny_model) -> None:  # type: ignore[no-untyped-def]
    model = _Recording(tiny_model, context_input=True)
    Analyzer(model).analyze(["帳單怎麼多了三百?", "還是不對"])  # type: ignore[arg-type]
    assert model.seen == ["帳單怎麼多了三百?", "還是不對"]


def test_a_model_not_trained_on_context_reads_each_turn_alone(tiny_model) -> None:  # type: ignore[no-untyped-def]
    model = _Recording(tiny_model, context_input=False)
    detector = _Detector()
    ConversationAnalyzer(Analyzer(model), detector).analyze(TURNS)  # type: ignore[arg-type]
    assert model.seen == ["帳單怎麼多了三百?", "還是不對"]
    assert detector.seen[1] == ("已經幫您退回了", "還是不對")  # agent turns still read with the customer's turn


def test_agent_turns_get_the_anger_of_the_customer_turns_around_them(tiny_model) -> None:  # type: ignore[no-untyped-def]
    """Several chats in one batched pass (``calmfirst qa``): each agent turn gets the scores of its own chat's customer
    turns just before and after it, none from a neighbouring chat."""
    detector = _Detector()
    anger: list[Any] = []
    original = detector.detect

    def recording(texts, contexts=None, anger_around=None):  # type: ignore[no-untyped-def]
        anger.extend(anger_around or [])
        return original(texts, contexts)

    detector.detect = recording  # type: ignore[method-assign]
    conv = ConversationAnalyzer(Analyzer(_Recording(tiny_model, context_input=True)), detector)  # type: ignore[arg-type]
    second = [Turn("agent", "您好，請問有什麼可以幫您?"), Turn("customer", "網路又斷了!!"), Turn("agent", "抱歉")]
    reads = conv._reads([TURNS, second])
    assert reads.agent_around == [(0, 1), (1, None), (None, 2), (2, None)]
    out = conv.analyze_many([("a", TURNS), ("b", second)])
    score = [t.result.anger.score for o in out for t in o.turns if t.role == "customer"]  # type: ignore[union-attr]
    expected = [(score[0], score[1]), (score[1], None), (None, score[2]), (score[2], None)]
    for a, (before, after) in zip(anger, expected, strict=True):  # the results round scores to 6 places
        assert (a.before is None) == (before is None) and (a.after is None) == (after is None)
        assert a.before is None or a.before == pytest.approx(before, abs=1e-5)
        assert a.after is None or a.after == pytest.approx(after, abs=1e-5)


def test_a_turn_that_tells_no_script_takes_its_chats(tiny_model) -> None:  # type: ignore[no-untyped-def]
    """An order number as the last turn of a Traditional chat was read as Simplified, and the chat's next step
    came in Simplified (found by an outside walkthrough)."""
    conv = ConversationAnalyzer(Analyzer(tiny_model), _Detector())  # type: ignore[arg-type]
    turns = [
        Turn(role="customer", text="我的包裹等了一個禮拜還沒到,你們到底在幹什麼!"),
        Turn(role="agent", text="非常抱歉讓您久等了,方便提供訂單編號嗎?"),
        Turn(role="customer", text="A12345678"),
    ]
    out = conv.analyze(turns)
    assert out.turns[2].result.script == "hant"  # type: ignore[union-attr]
    assert out.state.next_step.lang == "zh-Hant"
    simplified = conv.analyze([Turn(role="customer", text="我的包裹还没到"), Turn(role="customer", text="好")])
    assert simplified.state.next_step.lang == "zh-Hans"
    # a chat that never tells its script keeps the service's default, and a single message is read as before
    assert conv.analyze([Turn(role="customer", text="A12345678")]).state.next_step.lang == "zh-Hans"
    assert Analyzer(tiny_model).analyze(["A12345678"])[0].script == "hans"
