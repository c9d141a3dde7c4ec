"""Stopping the server (SIGTERM: a rolling deploy, a scale-down) loses no request it has admitted.

uvicorn stops accepting at once, lets the requests in progress finish (at most ``graceful_shutdown_s``),
and only then runs the lifespan's shutdown, which closes the micro-batcher. Tested on a real server
whose model is held mid-forward when the stop comes: a single message inside the micro-batcher, one
queued behind it, and a batch request in the thread pool.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from service.analyzer import Analyzer
from service.settings import Settings
from tests.service.api.live import HeldModel, running_server


def test_shutdown_finishes_admitted_requests_then_closes(tiny_model) -> None:  # type: ignore[no-untyped-def]
    held = HeldModel(tiny_model)
    analyzer = Analyzer(held, microbatch_max_size=16)  # type: ignore[arg-type]
    batch = {"items": [{"id": f"m{i}", "text": f"第{i}次了,快递还没到!"} for i in range(5)]}
    try:
        with running_server(Settings(), analyzer) as (server, url), ThreadPoolExecutor(3) as pool:
            app: Any = server.config.app
            try:
                first = pool.submit(httpx.post, url + "/v1/analyze", json={"text": "什麼態度!"}, timeout=60)
                assert held.entered.acquire(timeout=30)  # the lone message runs in the micro-batcher
                second = pool.submit(httpx.post, url + "/v1/analyze", json={"text": "謝謝"}, timeout=60)
                many = pool.submit(httpx.post, url + "/v1/analyze/batch", json=batch, timeout=60)
                assert held.entered.acquire(timeout=30)  # the batch runs in a thread beside it
                deadline = time.time() + 10
                while analyzer.microbatcher is not None and not analyzer.microbatcher._queue:
                    assert time.time() < deadline, "the second message never queued"
                    time.sleep(0.01)

                server.should_exit = True  # what uvicorn's SIGTERM handler does
                deadline = time.time() + 10
                while True:  # within a tick of the stop (0.1 s), no new connection is accepted
                    try:
                        httpx.get(url + "/healthz", timeout=5)
                    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                        break  # refused, or reset from the accept queue as the listener closed: not admitted
                    assert time.time() < deadline, "the server still accepts after the stop"
                    time.sleep(0.05)
                assert app.state.analyzer is analyzer  # the lifespan has not shut down under them
            finally:
                held.release.set()
            answers = [f.result(timeout=60) for f in (first, second, many)]
            assert [a.status_code for a in answers] == [200, 200, 200]
            assert answers[0].json()["anger"]["level"] in range(4)
            assert answers[1].json()["anger"]["level"] in range(4)
            assert [r["id"] for r in answers[2].json()["results"]] == [f"m{i}" for i in range(5)]
            deadline = time.time() + 15
            while app.state.analyzer is not None:  # then the lifespan's shutdown ran
                assert time.time() < deadline, "the server did not shut down after the last answer"
                time.sleep(0.05)
    finally:
        held.release.set()
        analyzer.close()


def test_shutdown_grace_period_is_a_setting() -> None:
    assert Settings().graceful_shutdown_s == 30
    with pytest.raises(ValueError, match="graceful_shutdown_s"):
        Settings(graceful_shutdown_s=0)
