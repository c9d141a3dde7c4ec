"""Live messages before bulk: a budget for the texts of batch requests being scored at once.

Why: a batch request (``POST /v1/analyze/batch``, up to ``max_batch_items`` texts) runs its forwards in
the thread pool, on the same cores as the live single messages. More batches at once do not score more
texts per second (the cores are already full with one), they only share the cores among more forwards:
measured with the shipped model on 2 cores (``make bench-overload``, "bulk beside live",
bench/OVERLOAD.md), 20 live messages a second beside 1 or 4 clients posting 256-item batches back to
back answered at p99 114 and 249 ms, each batch took 1.6 and 6.7 s, and the batches went through at 171
and 137 texts/s (with this budget and 4 clients: p99 111 ms, 1.6 s, 154 texts/s). So past one batch's
worth of texts, a further batch waits its turn at the client (a 503 with ``Retry-After`` at once,
naming ``max_bulk_texts``), and the live messages keep their latency. A batch is always admitted when
no other is being scored, whatever its size, so a client that retries always gets through.

An explanation (``"explain": true``) scores the message and up to 160 variants of it: bulk work, so it
takes its texts from the budget like a batch. Single messages and conversations are live traffic and are
not counted here (``max_inflight`` bounds them). The batch route is a plain ``def`` (FastAPI runs it, and the validation
of its large answer, in the thread pool, off the event loop), so the count takes a lock; with
``--workers N`` each worker has its own budget.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fastapi import HTTPException


class BulkBudget:
    """At most ``limit`` texts of batch requests in scoring at once (0: no limit); see the module doc."""

    def __init__(self, limit: int, *, retry_after_s: int = 1) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.texts = 0  # texts of the admitted batches still being scored
        self.requests = 0  # admitted batches still being scored
        self.refused = 0  # answered 503 since start
        #: told the texts in scoring after every change (``service.api.metrics`` publishes them as a gauge)
        self.watchers: list[Callable[[int], None]] = []
        self._lock = threading.Lock()

    def admit(self, n: int) -> bool:
        """Count ``n`` texts in, or say no: only when another batch is in scoring and ``n`` would pass the limit."""
        with self._lock:
            if self.limit and self.requests and self.texts + n > self.limit:
                self.refused += 1
                return False
            self.texts += n
            self.requests += 1
            self._tell()
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.texts -= n
            self.requests -= 1
            self._tell()

    def _tell(self) -> None:
        for watch in self.watchers:
            watch(self.texts)

    @contextmanager
    def hold(self, n: int) -> Iterator[None]:
        """Admit ``n`` texts for the block, or raise the 503 (with ``Retry-After``) that names the setting.

        No texts (an explanation of an empty message) take nothing and wait for nothing."""
        if n <= 0:
            yield
            return
        if not self.admit(n):
            retry = str(self.retry_after_s)
            raise HTTPException(
                status_code=503,
                detail=f"server busy: {self.texts} texts of other batches are being scored (max_bulk_texts "
                f"{self.limit}); retry after {retry} s",
                headers={"Retry-After": retry},
            )
        try:
            yield
        finally:
            self.release(n)
