"""A real uvicorn server on a free loopback port, for the tests that talk to the API as an outsider would."""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time
import unittest.mock
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import uvicorn

from service.api import create_app
from service.routing.agent_steps import AgentStepDetector
from service.settings import Settings

_REAL_FROM_DATA = AgentStepDetector.from_data


@functools.cache
def _detector() -> AgentStepDetector:
    return _REAL_FROM_DATA()


def _cached_from_data(*args: Any, **kwargs: Any) -> AgentStepDetector:
    return _detector() if not args and not kwargs else _REAL_FROM_DATA(*args, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(settings: Settings, analyzer: Any, **config: Any) -> Iterator[tuple[uvicorn.Server, str]]:
    """Serve ``create_app(settings, analyzer=analyzer)`` in a thread; yields the server and its base URL.

    ``server.should_exit = True`` is what uvicorn's SIGTERM handler does (a thread gets no signals).
    """
    port = free_port()
    app = create_app(settings, analyzer=analyzer)
    options: dict[str, Any] = {"log_level": "warning", **config}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    # the agent-step detector takes seconds to build; the servers of a test session share one
    with unittest.mock.patch.object(AgentStepDetector, "from_data", _cached_from_data):
        thread.start()
        deadline = time.time() + 60
        while not server.started and time.time() < deadline:
            if not thread.is_alive():
                raise RuntimeError("server thread died at start")
            time.sleep(0.02)
    assert server.started, "server did not start"
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextlib.contextmanager
def live_server(settings: Settings, analyzer: Any, **config: Any) -> Iterator[str]:
    """Serve ``create_app(settings, analyzer=analyzer)`` in a thread; yields the base URL."""
    with running_server(settings, analyzer, **config) as (_, url):
        yield url


@contextlib.contextmanager
def live_client(settings: Settings, analyzer: Any, **config: Any) -> Iterator[httpx.Client]:
    with live_server(settings, analyzer, **config) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


class HeldModel:
    """The tiny model, but every forward (or those ``hold_if`` picks) waits for ``release`` (and says it started)."""

    def __init__(self, inner: Any, *, hold_if: Callable[[Sequence[str]], bool] | None = None) -> None:
        self.inner = inner
        self.config = inner.config
        self.backend = inner.backend
        self.hold_if = hold_if
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def predict(self, texts: Sequence[str], *, batch_size: int = 32) -> Any:
        if self.hold_if is not None and not self.hold_if(texts):
            return self.inner.predict(texts, batch_size=batch_size)
        self.entered.release()
        assert self.release.wait(30), "the test never released the held forwards"
        return self.inner.predict(texts, batch_size=batch_size)
