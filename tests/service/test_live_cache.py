"""A live chat sent again with one more message costs only its new turns (``service.live_cache``)."""

from __future__ import annotations

import threading

import pytest

from data.vocab import Role
from service.analyzer import Analyzer, ConversationAnalyzer
from service.live_cache import LruCache
from service.routing.agent_steps import AgentTurn, CustomerAnger
from service.routing.conversation import Turn
from tests.service.test_conversation_context import _Recording

CHAT = [
    Turn("customer", "你們到底在搞什麼?!等了兩個禮拜還沒到貨!"),
    Turn("agent", "讓您等了兩個禮拜還沒收到,真的很抱歉"),
    Turn("customer", "訂單號是A12345,我要退款"),
    Turn("agent", "好的,我現在幫您查詢,請稍等"),
    Turn("customer", "快一點"),
    Turn("agent", "已經幫您辦理退款了"),
]


class _Detector:
    """Counts what it reads, one call per batch (and the customer's anger it was given); codes that depend on the
    turn alone."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str | None]]] = []
        self.anger: list[CustomerAnger] = []

    def detect(self, texts, contexts=None, anger=None):  # type: ignore[no-untyped-def]
        self.calls.append(list(zip(texts, contexts or [None] * len(texts), strict=True)))
        self.anger += list(anger or [])
        return [AgentTurn(steps=["apologize"] if "抱歉" in t else [], mistakes=[], scores={"x": len(t)}) for t in texts]


def test_live_cache_lru_keeps_the_most_recent_and_hands_out_copies() -> None:
    cache: LruCache[str, list[int]] = LruCache(2)
    cache.put("a", [1])
    cache.put("b", [2])
    assert cache.get("a") == [1]  # a is now the most recent
    cache.put("c", [3])
    assert cache.get("b") is None and cache.get("a") == [1] and cache.get("c") == [3]
    assert len(cache) == 2
    got = cache.get("a")
    assert got is not None
    got.append(99)  # a caller changing what it got does not change the cache
    assert cache.get("a") == [1]
    computed: list[str] = []
    roomy: LruCache[str, list[int]] = LruCache(3)
    roomy.put("a", [1])
    roomy.put("c", [3])
    values, fresh = roomy.each(["a", "d", "d", "c"], lambda k: computed.append(k) or [ord(k)])
    assert values == [[1], [100], [100], [3]] and fresh == [False, True, False, False]
    assert computed == ["d"]  # only the missing key, once
    with pytest.raises(ValueError, match="size"):
        LruCache(0)


def test_live_cache_is_safe_across_threads() -> None:
    cache: LruCache[int, int] = LruCache(50)

    def work(offset: int) -> None:
        for i in range(2000):
            cache.put((i + offset) % 120, i)
            cache.get((i * 7 + offset) % 120)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50


class _Counting:
    """An observer like ``/metrics``: the customer messages whose results it was told about."""

    def __init__(self) -> None:
        self.messages = 0

    def inference_done(self, size: int, seconds: float) -> None:
        pass

    def results_ready(self, results) -> None:  # type: ignore[no-untyped-def]
        self.messages += len(results)


def test_live_chat_sent_again_scores_only_its_new_turns(tiny_model) -> None:  # type: ignore[no-untyped-def]
    model = _Recording(tiny_model, context_input=True)
    detector = _Detector()
    analyzer = Analyzer(model)
    counted = _Counting()
    analyzer.observers.append(counted)
    cached = ConversationAnalyzer(analyzer, detector, cache_size=64)  # type: ignore[arg-type]

    assert cached.unseen_turns(CHAT[:4]) == 4  # what the call will cost, told before it
    first = cached.analyze(CHAT[:4], id="c1").model_dump(mode="json")
    # two new turns, and the agent turn the new customer turn answers: read again with the customer's reaction
    assert cached.unseen_turns(CHAT[:4]) == 0 and cached.unseen_turns(CHAT) == 3
    hits = cached.customer_cache.hits  # type: ignore[union-attr]
    assert cached.unseen_turns(CHAT) == 3 and cached.customer_cache.hits == hits  # type: ignore[union-attr]  # a look
    assert len(model.seen) == 2 and sum(len(c) for c in detector.calls) == 2
    assert all(len(c) == 1 for c in detector.calls)  # new turns one at a time
    model.seen.clear()
    detector.calls.clear()
    detector.anger.clear()

    second = cached.analyze(CHAT, id="c1").model_dump(mode="json")
    assert len(model.seen) == 1 and model.seen[0].startswith("快一點")  # only the new customer turn
    # the new agent turn, and the one before it, now followed by a customer turn
    assert sorted(c[0][0] for c in detector.calls) == sorted(["好的,我現在幫您查詢,請稍等", "已經幫您辦理退款了"])
    scores = [t["result"]["anger"]["score"] for t in second["turns"] if t["role"] == "customer"]
    by_text = {c[0][0]: a for c, a in zip(detector.calls, detector.anger, strict=True)}
    middle, last = by_text["好的,我現在幫您查詢,請稍等"], by_text["已經幫您辦理退款了"]
    assert (middle.before, middle.after) == pytest.approx((scores[1], scores[2]), abs=1e-6)  # the output rounds
    assert last.before == pytest.approx(scores[2], abs=1e-6) and last.after is None
    assert second["turns"][:4] == first["turns"]  # the turns kept answer exactly as before
    assert second["turns"][1]["steps"] == ["apologize"]

    model.seen.clear()
    again = cached.analyze(CHAT, id="c1").model_dump(mode="json")
    assert model.seen == [] and again == second  # nothing new: nothing scored, the same answer
    assert counted.messages == 3  # each customer message counted once (2 + 1 + 0), not 2 + 3 + 3


def test_live_cache_answers_as_the_uncached_analyzer(tiny_model) -> None:  # type: ignore[no-untyped-def]
    """Scored one at a time or batched, a turn gets the same result (fp32 here; int8 within rounding)."""
    model = _Recording(tiny_model, context_input=True)
    plain = ConversationAnalyzer(Analyzer(model), _Detector())  # type: ignore[arg-type]
    cached = ConversationAnalyzer(Analyzer(model), _Detector(), cache_size=64)  # type: ignore[arg-type]
    a = plain.analyze(CHAT, id="c").model_dump(mode="json")
    cached.analyze(CHAT[:2], id="c")
    b = cached.analyze(CHAT, id="c").model_dump(mode="json")
    assert a["state"] == b["state"]
    for ta, tb in zip(a["turns"], b["turns"], strict=True):
        if ta["role"] == "customer":
            assert ta["result"]["anger"]["level"] == tb["result"]["anger"]["level"]
            assert ta["result"]["anger"]["probs"] == pytest.approx(tb["result"]["anger"]["probs"], abs=1e-5)
        else:
            assert ta == tb


def test_live_cache_off_scores_every_turn_batched(tiny_model) -> None:  # type: ignore[no-untyped-def]
    model = _Recording(tiny_model, context_input=True)
    detector = _Detector()
    conv = ConversationAnalyzer(Analyzer(model), detector)  # type: ignore[arg-type]
    counted = _Counting()
    conv.analyzer.observers.append(counted)
    looked_up: list[tuple[str, int, int]] = []

    class _Turns:
        def turns_looked_up(self, kind: Role, kept: int, scored: int) -> None:
            looked_up.append((str(kind), kept, scored))

    conv.observers.append(_Turns())
    conv.analyze(CHAT, id="c")
    conv.analyze(CHAT, id="c")
    assert looked_up == [("customer", 0, 3), ("agent", 0, 3)] * 2
    assert conv.unseen_turns(CHAT) == 6  # nothing kept: every turn is scored again
    assert len(model.seen) == 6 and [len(c) for c in detector.calls] == [3, 3]
    assert counted.messages == 6  # without the cache nothing tells a chat sent again from a new one
    assert conv.customer_cache is None and conv.agent_cache is None


def test_live_cache_is_on_in_the_server(tiny_analyzer) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from service.settings import Settings
    from tests.service.api.live import running_server

    body = {"id": "chat-1", "turns": [{"role": t.role, "text": t.text} for t in CHAT]}
    with running_server(Settings(), tiny_analyzer) as (server, url):
        first = httpx.post(url + "/v1/conversations/analyze", json=body, timeout=60)
        again = httpx.post(url + "/v1/conversations/analyze", json=body, timeout=60)
        conv = server.config.app.state.conversations  # type: ignore[attr-defined]
        assert first.status_code == again.status_code == 200
        assert first.json() == again.json()
        assert conv.customer_cache is not None and conv.customer_cache.size == Settings().conversation_cache
        assert conv.customer_cache.hits >= 3 and conv.agent_cache.hits >= 3
        from tests.service.api.prom import samples, value

        metrics = samples(httpx.get(url + "/metrics", timeout=10).text)
        for kind in ("customer", "agent"):  # 3 turns each: scored on the first call, kept on the second
            assert value(metrics, "calmfirst_conversation_turns_total", kind=kind, kept="false") == 3
            assert value(metrics, "calmfirst_conversation_turns_total", kind=kind, kept="true") == 3
    with running_server(Settings(conversation_cache=0), tiny_analyzer) as (server, url):
        assert httpx.post(url + "/v1/conversations/analyze", json=body, timeout=60).status_code == 200
        assert server.config.app.state.conversations.customer_cache is None  # type: ignore[attr-defined]
