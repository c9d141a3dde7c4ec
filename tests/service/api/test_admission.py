"""The bulk budget (``service.api.admission``): live single messages before batches."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi import HTTPException

from service.api.admission import BulkBudget
from service.settings import Settings
from tests.service.api.live import HeldModel, live_client
from tests.service.api.prom import samples, value

FAST_S = 2.0


def test_budget_admits_a_lone_batch_of_any_size_and_refuses_past_the_limit() -> None:
    b = BulkBudget(10, queue=0)  # no queue: refused at once
    assert b.admit(25)  # alone: always, or a large batch could never pass
    assert not b.admit(1)  # another batch in scoring and 26 > 10
    b.release(25)
    assert (b.texts, b.requests, b.refused) == (0, 0, 1)
    assert b.admit(4) and b.admit(6)  # 10 <= 10
    assert not b.admit(1)
    b.release(4)
    assert b.admit(4)
    assert (b.texts, b.requests) == (10, 2)


def test_budget_zero_means_no_limit() -> None:
    b = BulkBudget(0, queue=0)
    assert all(b.admit(256) for _ in range(50))
    assert b.refused == 0


def test_a_transcript_takes_the_whole_budget() -> None:
    b = BulkBudget(64, queue=0)
    assert b.whole(40) == 64  # fewer turns than the budget: still all of it
    assert b.whole(300) == 300  # more: the turns themselves
    assert b.admit(b.whole(40)) and not b.admit(1)  # nothing else fits beside it
    assert BulkBudget(0).whole(40) == 40  # no limit: only what it scores


def _admit_in_thread(b: BulkBudget, n: int, name: str, order: list[str]) -> threading.Thread:
    def run() -> None:
        if b.admit(n):
            order.append(name)
        else:
            order.append(f"{name} refused")

    t = threading.Thread(target=run)
    t.start()
    return t


def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_budget_waiters_go_first_come_first_served() -> None:
    """A client that posts its next batch the moment its last one is answered queues behind the ones already
    waiting: it cannot take the freed budget from them (it could, if they were only told to retry later)."""
    b = BulkBudget(10, queue=4, wait_s=30)
    assert b.admit(10)  # X in scoring
    order: list[str] = []
    a = _admit_in_thread(b, 10, "A", order)
    _until(lambda: b.waiting == 1)
    b.release(10)  # X done; X's client posts again at once
    x_again = _admit_in_thread(b, 10, "X again", order)
    a.join(10)
    assert order == ["A"]
    _until(lambda: b.waiting == 1)  # X again waits for A
    b.release(10)
    x_again.join(10)
    assert order == ["A", "X again"]
    b.release(10)
    assert (b.texts, b.requests, b.waiting, b.refused) == (0, 0, 0, 0)


def test_budget_queue_places_and_wait_are_bounded() -> None:
    b = BulkBudget(10, queue=1, wait_s=0.3)
    assert b.admit(10)
    order: list[str] = []
    a = _admit_in_thread(b, 5, "A", order)
    _until(lambda: b.waiting == 1)
    started = time.monotonic()
    assert not b.admit(5)  # the one place is taken: refused at once
    assert time.monotonic() - started < 0.2
    a.join(10)
    assert order == ["A refused"]  # waited its 0.3 s, took nothing
    assert (b.texts, b.requests, b.waiting, b.refused) == (10, 1, 0, 2)


def test_budget_hold_raises_503_naming_the_setting_and_always_releases() -> None:
    b = BulkBudget(5, queue=0, retry_after_s=7)
    with b.hold(3):
        with pytest.raises(HTTPException) as refused, b.hold(3):
            pass
        assert refused.value.status_code == 503
        assert refused.value.headers == {"Retry-After": "7"}
        assert "max_bulk_texts 5" in refused.value.detail and "bulk_queue 0" in refused.value.detail
        assert b.texts == 3  # the refused one took nothing
    assert (b.texts, b.requests) == (0, 0)
    with pytest.raises(RuntimeError), b.hold(2):
        raise RuntimeError("a forward failed")
    assert (b.texts, b.requests) == (0, 0)
    with b.hold(5), b.hold(0):  # nothing to score: never refused, never counted
        assert (b.texts, b.requests) == (5, 1)


def test_batch_waits_its_turn_while_live_messages_pass(tiny_model) -> None:  # type: ignore[no-untyped-def]
    """One 3-item batch held inside the model, ``max_bulk_texts=6`` (no queue): a 4-item batch, an explanation of
    a message or of a chat, and a chat with more new turns than ``bulk_chat_turns`` (a transcript: the whole
    budget) are a 503 at once with Retry-After and the setting named (counted in /metrics under their routes); a
    422 batch is still a 422, while single messages and a live chat are answered; once the first finishes, all
    of them pass."""
    from service.analyzer import Analyzer

    held = HeldModel(tiny_model, hold_if=lambda texts: len(texts) >= 3)  # the batch's forward, not the singles'
    settings = Settings(max_bulk_texts=6, bulk_queue=0, retry_after_s=2, bulk_chat_turns=2)
    batch = {"items": [{"id": i, "text": t} for i, t in enumerate(["你们的快递到现在还没到!", "謝謝", "退款呢?"])]}
    with live_client(settings, Analyzer(held)) as c, ThreadPoolExecutor(1) as pool:  # type: ignore[arg-type]
        try:
            first = pool.submit(c.post, "/v1/analyze/batch", json=batch)
            assert held.entered.acquire(timeout=30), "the first batch never reached the model"
            started = time.perf_counter()
            refused = c.post("/v1/analyze/batch", json={"items": [{"text": "包裹坏了"}] * 4})  # 3 + 4 > 6
            assert time.perf_counter() - started < FAST_S
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "2"
            assert "max_bulk_texts" in refused.json()["detail"]
            too_long = c.post("/v1/analyze/batch", json={"items": [{"text": "x" * (settings.max_text_chars + 1)}]})
            assert too_long.status_code == 422
            assert "items.0.text" in too_long.json()["detail"]
            explain = c.post("/v1/analyze", json={"text": "什麼態度!我要投訴你", "explain": True})
            assert explain.status_code == 503 and "max_bulk_texts" in explain.json()["detail"]  # 10 forwards
            single = c.post("/v1/analyze", json={"text": "什麼態度!我要投訴你"})
            assert single.status_code == 200 and single.json()["anger"]["level"] in range(4)
            turns = [{"role": "customer", "text": "我的退款到底什么时候到?"}]
            assert c.post("/v1/conversations/analyze", json={"turns": turns}).status_code == 200
            transcript = [{"role": "customer", "text": t} for t in ("快递呢?", "还没到!", "我要退款")]
            # 3 new turns > 2: a transcript, which takes the whole budget (3 + 6 > 6; its 3 turns alone would fit)
            bulk_chat = c.post("/v1/conversations/analyze", json={"turns": transcript})
            assert bulk_chat.status_code == 503 and "max_bulk_texts" in bulk_chat.json()["detail"]
            explained_chat = c.post("/v1/conversations/analyze", json={"turns": turns, "explain": True})
            assert explained_chat.status_code == 503 and "max_bulk_texts" in explained_chat.json()["detail"]
            metrics = samples(c.get("/metrics").text)
            assert value(metrics, "calmfirst_http_requests_total", route="/v1/analyze/batch", status="503") == 1
            assert value(metrics, "calmfirst_http_requests_total", route="/v1/analyze", status="503") == 1
            assert value(metrics, "calmfirst_bulk_texts_in_progress") == 3
        finally:
            held.release.set()
        answer = first.result(timeout=60)
        assert answer.status_code == 200
        assert [r["id"] for r in answer.json()["results"]] == [0, 1, 2]
        assert c.post("/v1/analyze/batch", json={"items": [{"text": "包裹坏了"}]}).status_code == 200
        explained = c.post("/v1/analyze", json={"text": "什麼態度!我要投訴你", "explain": True})
        assert explained.status_code == 200 and explained.json()["explanation"]["base_score"] is not None
        assert value(samples(c.get("/metrics").text), "calmfirst_bulk_texts_in_progress") == 0
        assert c.post("/v1/conversations/analyze", json={"turns": transcript}).status_code == 200
        chat = c.post("/v1/conversations/analyze", json={"turns": turns, "explain": True})
        assert chat.status_code == 200 and chat.json()["turns"][0]["result"]["explanation"]["spans"] is not None


def test_batches_queue_in_order_then_get_503(tiny_model) -> None:  # type: ignore[no-untyped-def]
    """With one place in the queue: the second batch waits (it is answered once the first is), the third is a
    503 at once, naming the queue."""
    from service.analyzer import Analyzer
    from tests.service.api.live import running_server

    held = HeldModel(tiny_model, hold_if=lambda texts: len(texts) >= 3)
    settings = Settings(max_bulk_texts=3, bulk_queue=1, bulk_wait_s=60)
    batch = {"items": [{"text": t} for t in ["你们的快递到现在还没到!", "謝謝", "退款呢?"]]}
    small = {"items": [{"text": "包裹坏了"}]}
    with running_server(settings, Analyzer(held)) as (server, url), ThreadPoolExecutor(2) as pool:  # type: ignore[arg-type]
        import httpx

        budget = server.config.app.state.bulk_budget  # type: ignore[attr-defined]
        with httpx.Client(base_url=url, timeout=60) as c:
            try:
                first = pool.submit(c.post, "/v1/analyze/batch", json=batch)
                assert held.entered.acquire(timeout=30)
                second = pool.submit(c.post, "/v1/analyze/batch", json=small)
                _until(lambda: budget.waiting == 1)
                third = c.post("/v1/analyze/batch", json=small)
                assert third.status_code == 503 and "bulk_queue 1" in third.json()["detail"]
                assert not second.done()
                assert c.post("/v1/analyze", json={"text": "謝謝"}).status_code == 200  # live: not in line
            finally:
                held.release.set()
            assert first.result(timeout=60).status_code == 200
            assert second.result(timeout=60).status_code == 200
            assert (budget.texts, budget.waiting) == (0, 0)


def test_server_logs_its_admission_settings_at_start(tiny_analyzer, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """An operator checks the limits a server runs with in its first log lines (0 reads "off")."""
    import logging

    caplog.set_level(logging.INFO, logger="service.api.app")
    with live_client(Settings(max_inflight=0, max_bulk_texts=512, bulk_queue=2), tiny_analyzer) as c:
        assert c.get("/readyz").status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "service.api.app"]
    assert any(
        "max_inflight off, max_bulk_texts 512 (bulk_queue 2, bulk_wait_s 30, bulk_chat_turns 32), "
        "conversation_cache 1024" in line
        for line in lines
    ), lines
