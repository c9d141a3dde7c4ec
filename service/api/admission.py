"""Live messages before bulk: a budget for the texts of batch requests being scored at once.

Why: a batch request (``POST /v1/analyze/batch``, up to ``max_batch_items`` texts) runs its forwards in
the thread pool, on the same cores as the live single messages. More batches at once do not score more
texts per second (the cores are already full with one), they only share the cores among more forwards:
measured with the shipped model on 2 cores (``make bench-overload``, "bulk beside live",
bench/OVERLOAD.md, 2026-12-05 17:44 UTC), 20 live messages a second beside 1 or 4 clients posting
256-item batches back to back answered at p99 85 and 216 ms, each batch took 1.6 and 6.9 s, and the
batches went through at 171 and 137 texts/s. So past ``max_bulk_texts`` texts in scoring, a further
batch waits its turn, and the live messages keep their latency.

The wait is a queue, first come first served (``bulk_queue`` places, at most ``bulk_wait_s`` each): a
batch that only got a 503 and retried after ``Retry-After`` would lose the free budget, again and again,
to a client that posts its next batch the moment its last one is answered (measured, same run: with no
queue one of 4 clients got all 10 batches, with it 3 / 2 / 3 / 3; live p99 79 and 73 ms). Past the queue's places or its
time, a 503 with ``Retry-After`` at once, naming the setting. A batch is always admitted when no other is
being scored and none is waiting, whatever its size. Waiting requests still count against
``max_inflight`` (``service.api.middleware.LoadShedder``), which is why the queue is short.

An explanation (``"explain": true`` on a message or a chat) scores the message and up to 159 variants of
it: bulk work, so it takes its texts from the budget like a batch. A chat with more than ``bulk_chat_turns``
turns still to score is a transcript, not a live chat (which sends a new turn or two and has the rest kept,
``service.live_cache``), and takes the whole budget: it scores turn by turn, so counting its turns as texts
would let four 60-turn transcripts run at once (measured, 2026-12-05 ~19:00 UTC, 20 live messages/s beside 4
clients posting 60-turn transcripts never seen before, by hand: counted by turns, live p50
/ p99 50 / 227 ms; one at a time, 21 / 97 ms, with 14 transcripts done in 15 s against 12). Single messages
and live chats are not counted here (``max_inflight`` bounds them). The batch route is a plain ``def``
(FastAPI runs it, and the validation of its large answer, in the thread pool, off the event loop) and the
explanation waits in the thread pool too, so the budget waits on a ``threading.Condition``, never on the
event loop; with ``--workers N`` each worker has its own budget.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fastapi import HTTPException


class BulkBudget:
    """At most ``limit`` texts of bulk work in scoring at once (0: no limit), a short queue before it."""

    def __init__(self, limit: int, *, queue: int = 8, wait_s: float = 30.0, retry_after_s: int = 1) -> None:
        self.limit = limit
        self.queue = queue
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.texts = 0  # texts of the admitted requests still being scored
        self.requests = 0  # admitted requests still being scored
        self.refused = 0  # answered 503 since start
        #: told the texts in scoring after every change (``service.api.metrics`` publishes them as a gauge)
        self.watchers: list[Callable[[int], None]] = []
        self._waiting: deque[object] = deque()
        self._cond = threading.Condition()

    def _fits(self, n: int) -> bool:
        return not self.limit or not self.requests or self.texts + n <= self.limit

    def admit(self, n: int) -> bool:
        """Count ``n`` texts in, after the requests already waiting; False when the queue is full or the wait
        passed ``wait_s`` (then nothing was taken)."""
        with self._cond:
            if not self._waiting and self._fits(n):
                self._take(n)
                return True
            if len(self._waiting) >= self.queue:
                self.refused += 1
                return False
            ticket = object()
            self._waiting.append(ticket)
            deadline = time.monotonic() + self.wait_s
            try:
                while not (self._waiting[0] is ticket and self._fits(n)):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.refused += 1
                        return False
                    self._cond.wait(left)
                self._take(n)
                return True
            finally:
                self._waiting.remove(ticket)
                self._cond.notify_all()  # the next in line may fit now

    def whole(self, n: int) -> int:
        """What a transcript with ``n`` turns to score takes: the whole budget, or ``n`` where that is more. It scores
        turn by turn (as a live chat's new turns are scored), so it holds the model as long as a full batch would."""
        return max(n, self.limit)

    def _take(self, n: int) -> None:
        self.texts += n
        self.requests += 1
        self._tell()

    def release(self, n: int) -> None:
        with self._cond:
            self.texts -= n
            self.requests -= 1
            self._tell()
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _tell(self) -> None:
        for watch in self.watchers:
            watch(self.texts)

    @contextmanager
    def hold(self, n: int) -> Iterator[None]:
        """Admit ``n`` texts for the block (waiting in line), or raise the 503 (with ``Retry-After``) that names
        the settings. Blocks the calling thread while it waits: call it from the thread pool.

        No texts (an explanation of an empty message) take nothing and wait for nothing."""
        if n <= 0:
            yield
            return
        if not self.admit(n):
            retry = str(self.retry_after_s)
            raise HTTPException(
                status_code=503,
                detail=f"server busy: {self.texts} texts of other batches are being scored (max_bulk_texts "
                f"{self.limit}) and {self.waiting} wait (bulk_queue {self.queue}, bulk_wait_s {self.wait_s:g}); "
                f"retry after {retry} s",
                headers={"Retry-After": retry},
            )
        try:
            yield
        finally:
            self.release(n)
