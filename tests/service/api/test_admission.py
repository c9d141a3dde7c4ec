"""The bulk budget (``service.api.admission``): live single messages before batches."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi import HTTPException

from service.api.admission import BulkBudget
from service.settings import Settings
from tests.service.api.live import HeldModel, live_client
from tests.service.api.prom import samples, value

FAST_S = 2.0


def test_budget_admits_a_lone_batch_of_any_size_and_refuses_past_the_limit() -> None:
    b = BulkBudget(10)
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
    b = BulkBudget(0)
    assert all(b.admit(256) for _ in range(50))
    assert b.refused == 0


def test_budget_hold_raises_503_naming_the_setting_and_always_releases() -> None:
    b = BulkBudget(5, retry_after_s=7)
    with b.hold(3):
        with pytest.raises(HTTPException) as refused, b.hold(3):
            pass
        assert refused.value.status_code == 503
        assert refused.value.headers == {"Retry-After": "7"}
        assert "max_bulk_texts 5" in refused.value.detail
        assert b.texts == 3  # the refused one took nothing
    assert (b.texts, b.requests) == (0, 0)
    with pytest.raises(RuntimeError), b.hold(2):
        raise RuntimeError("a forward failed")
    assert (b.texts, b.requests) == (0, 0)
    with b.hold(5), b.hold(0):  # nothing to score: never refused, never counted
        assert (b.texts, b.requests) == (5, 1)


def test_batch_waits_its_turn_while_live_messages_pass(tiny_model) -> None:  # type: ignore[no-untyped-def]
    """One batch held inside the model fills ``max_bulk_texts=3``: a second batch, and an explanation (bulk
    work), are a 503 at once with Retry-After and the setting named (counted in /metrics under their routes), a
    422 batch is still a 422, while single messages and a conversation are answered; once the first finishes,
    batches and explanations pass again."""
    from service.analyzer import Analyzer

    held = HeldModel(tiny_model, hold_if=lambda texts: len(texts) >= 3)  # the batch's forward, not the singles'
    settings = Settings(max_bulk_texts=3, retry_after_s=2)
    batch = {"items": [{"id": i, "text": t} for i, t in enumerate(["你们的快递到现在还没到!", "謝謝", "退款呢?"])]}
    with live_client(settings, Analyzer(held)) as c, ThreadPoolExecutor(1) as pool:  # type: ignore[arg-type]
        try:
            first = pool.submit(c.post, "/v1/analyze/batch", json=batch)
            assert held.entered.acquire(timeout=30), "the first batch never reached the model"
            started = time.perf_counter()
            refused = c.post("/v1/analyze/batch", json={"items": [{"text": "包裹坏了"}]})
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
