"""Micro-batching: single-text requests from many threads share one forward pass.

Why: a BERT forward on 8 short texts costs far less than 8 forwards of one text
(the weights are read once, the matrix kernels run at full width), but the HTTP
API receives one text per request. Each request thread hands its item to one
worker thread and blocks; the worker takes everything that is queued (up to
``max_size``) and runs it as one batch.

Never slower than no batching: a request that finds a free forward slot (at most
``max_concurrent`` forwards run at once) and nobody queued runs at once, in its own
thread, with no hand-off; only requests that arrive while every slot is busy queue,
and a worker takes *what is already waiting* (up to ``max_size``) as soon as a slot
frees. Under load, batches fill naturally because requests pile up while forwards
run. Waiting for company (``max_wait_ms``, default 0 in the service) is opt-in, and
even then only when there is evidence of concurrent traffic: more items were already
queued, or the previous batch had more than one item. ``adaptive=False`` always
queues and always waits (deterministic batching, used in tests).

Lanes (``lanes``: the service's default with the ONNX backend on 2 or more threads): one forward
over all cores is the fastest way to answer a *lone* request, but under concurrent load the cores
do more as separate single-threaded forwards running side by side (a 40-token forward split over
2 threads waits at ~150 op boundaries for the slower thread). With lanes, ``fn`` (all cores) runs
only for a request that finds nothing running and nothing queued; anything else runs on a free
lane (``lanes[i]``, one-thread sessions sharing the weights: ``model.onnx.weights``), and ``fn``
and the lanes never overlap. A lane takes its share of what waits (1/``len(lanes)``, so the next
lane to free up finds the rest), not all of it: one lane running a long batch on one thread while
the other idles made the slowest requests slower (c=8 p99 165-175 ms against 125-145 ms, same
throughput). Measured on a 2-core Intel Xeon (2026-12-05, ``make bench``'s server at 8 concurrent
clients): 117.5 requests/s with one forward at a time, 134 with two lanes; single-request latency
unchanged (p50 6.1 ms).

Without lanes, one slot by default: ONNX Runtime's threads spin during a forward
(``Settings.ort_spin``) and have the cores to themselves; a second slot overlaps the
next batch's Python work with it, which pays only where forwards sleep between ops
(``CALMFIRST_MICROBATCH_LANES=0 CALMFIRST_ORT_SPIN=never CALMFIRST_MICROBATCH_CONCURRENCY=2``).

Callers on an event loop (the HTTP API's ``POST /v1/analyze``) use :meth:`MicroBatcher.submit_async`:
the item always goes to a worker (the loop must not block on a forward), which follows the same rules
(a lone item with nothing running gets ``fn``) and settles the batch's futures with one call into the
loop. It replaced a ``submit`` per request in the thread pool: same batching, no pool thread per
waiting request. Measured on the 2-core Intel Xeon (2026-12-05, three alternating rounds of 2,400
requests at 8 concurrent clients against fresh servers): 159-163 requests/s against 152-157.

When it pays: where a batch of k texts costs much less than k single forwards (many
cores, a GPU, int8 kernels that want tall matrices); ``make bench`` measures it against
no batching at concurrency 8 on the same server (``bench/RESULTS.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Slot(Generic[T, R]):
    item: T
    done: threading.Event | None = field(default_factory=threading.Event)
    result: R | None = None
    error: BaseException | None = None
    #: set for :meth:`MicroBatcher.submit_async`: the caller awaits this future on its event loop
    future: asyncio.Future[R] | None = None


def _settle(slots: list[_Slot[T, R]]) -> None:
    """On the event loop: hand each awaiting caller its result or the batch's error."""
    for slot in slots:
        fut = slot.future
        if fut is None or fut.done():  # a caller that gave up (cancelled) no longer waits
            continue
        if slot.error is not None:
            fut.set_exception(slot.error)
        else:
            fut.set_result(slot.result)  # type: ignore[arg-type]


@dataclass
class BatchStats:
    """Counters for tests and logs: how many forwards ran and how full they were."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    sizes: list[int] = field(default_factory=list)

    def record(self, size: int) -> None:
        self.batches += 1
        self.items += size
        self.largest = max(self.largest, size)
        if len(self.sizes) < 10_000:
            self.sizes.append(size)


class MicroBatcher(Generic[T, R]):
    """Calls ``fn(items) -> results`` (same length, same order) for items submitted one at a time.

    ``lanes``: functions like ``fn`` that may run side by side (one per forward session); when
    given, ``max_concurrent`` is their number and ``fn`` runs only alone (see the module doc).
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        max_wait_ms: float = 2.0,
        max_size: int = 16,
        adaptive: bool = True,
        max_concurrent: int = 1,
        lanes: Sequence[Callable[[list[T]], Sequence[R]]] = (),
        name: str = "calmfirst-microbatch",
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {max_wait_ms}")
        self.fn = fn
        self.lanes = list(lanes)
        self.max_wait = max_wait_ms / 1000.0
        self.max_size = max_size
        self.adaptive = adaptive
        self.max_concurrent = len(self.lanes) if self.lanes else max_concurrent
        self.name = name
        self.stats = BatchStats()
        self._cond = threading.Condition()
        self._queue: list[_Slot[T, R]] = []
        self._running = 0  # forwards running now (in workers or inline in callers)
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._last_size = 1
        self._free = list(range(len(self.lanes)))[::-1]  # with lanes: lanes not running now

    @property
    def _wide(self) -> bool:
        """With lanes: the all-cores ``fn`` is running (a forward that holds no lane)."""
        return self._running > len(self.lanes) - len(self._free)

    @property
    def _busy(self) -> bool:
        """No forward may start now for queued items."""
        if self.lanes:
            return self._wide or not self._free
        return self._running >= self.max_concurrent

    def submit(self, item: T, *, timeout: float | None = None) -> R:
        """Run ``item`` in the next batch and return its result (re-raises the batch's error)."""
        slot: _Slot[T, R] = _Slot(item)
        with self._cond:
            if self._closed:
                raise RuntimeError("micro-batcher is closed")
            # Fast path: a free slot and nobody queued. Run in the caller's thread, so a lone client
            # pays no hand-off; requests arriving while every slot is busy queue for the workers.
            inline = self.adaptive and not self._busy and not self._queue
            lane: int | None = None
            if inline:
                if self.lanes and self._running:  # company: a free lane, not the all-cores forward
                    lane = self._free.pop()
                self._running += 1
            else:
                self._queue.append(slot)
                self._ensure_worker()
                self._cond.notify_all()
        if inline:
            self._execute([slot], lane)
        elif slot.done is not None and not slot.done.wait(timeout):
            raise TimeoutError(f"no result within {timeout} s")
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    async def submit_async(self, item: T) -> R:
        """:meth:`submit` for a caller on an event loop: the forward runs on a worker, the loop never blocks.

        Why not ``submit`` in a thread pool: that hop costs a pool thread per waiting request, and a
        lock hand-off and a wake-up on each side of it, all under the GIL the event loop needs for
        HTTP. Here the loop queues the item and awaits a future; a worker runs the batch and
        settles every future of it with *one* call into the loop. A request that finds nothing
        running and nothing queued still gets the all-cores forward (``fn``) at once.
        """
        loop = asyncio.get_running_loop()
        slot: _Slot[T, R] = _Slot(item, done=None, future=loop.create_future())
        with self._cond:
            if self._closed:
                raise RuntimeError("micro-batcher is closed")
            self._queue.append(slot)
            self._ensure_worker()
            self._cond.notify()
        return await slot.future  # type: ignore[misc]

    def close(self) -> None:
        """Stop the workers after the queued items; later submits fail."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=10)
        self._threads = []

    # ------------------------------------------------------------------ worker
    def _ensure_worker(self) -> None:
        if len(self._threads) < self.max_concurrent:  # called with the lock held
            thread = threading.Thread(target=self._run, name=f"{self.name}-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _next_batch(self) -> tuple[list[_Slot[T, R]], int | None] | None:
        """Wait for work and a free slot, then (if configured) gather company for up to ``max_wait``."""
        with self._cond:
            while True:
                while not self._queue or self._busy:
                    if self._closed and not self._queue:
                        return None
                    self._cond.wait(0.5 if self._closed else None)
                concurrent = len(self._queue) > 1 or self._last_size > 1
                if self.max_wait > 0 and (concurrent or not self.adaptive):
                    deadline = time.monotonic() + self.max_wait
                    while len(self._queue) < self.max_size and not self._closed:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                # a caller that gave up while queued (its task cancelled: a graceful stop's deadline, a client
                # timeout in the caller's code) needs no forward; until settled, a future is done only that way
                self._queue = [s for s in self._queue if s.future is None or not s.future.done()]
                if not self._queue or self._busy:  # another worker took them, or the slots filled meanwhile
                    continue
                size = self.max_size
                lane: int | None = None
                # a lone item with nothing running gets all the cores (``fn``), as ``submit``'s inline path does;
                # ``submit_async``'s items always come this way
                alone = self.adaptive and not self._running and len(self._queue) == 1
                if self.lanes and not alone:  # a lane's share of what waits: the next lane to free up takes the rest
                    size = min(size, -(-len(self._queue) // len(self.lanes)))
                    lane = self._free.pop()
                batch = self._queue[:size]
                del self._queue[:size]
                self._running += 1
                return batch, lane

    def _run(self) -> None:
        while True:
            got = self._next_batch()
            if got is None:
                return
            self._execute(*got)

    def _execute(self, batch: list[_Slot[T, R]], lane: int | None = None) -> None:
        """Run one forward for ``batch`` (on ``lane``, else ``fn``); every waiting caller hears about a failure."""
        fn = self.fn if lane is None else self.lanes[lane]
        try:
            results = list(fn([s.item for s in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            for slot, res in zip(batch, results, strict=True):
                slot.result = res
        except BaseException as e:
            logger.exception("micro-batch of %d failed", len(batch))
            for slot in batch:
                slot.error = e
        finally:
            with self._cond:
                self._running -= 1
                if lane is not None:
                    self._free.append(lane)
                self._last_size = len(batch)
                self.stats.record(len(batch))
                self._cond.notify_all()
            waiting: dict[asyncio.AbstractEventLoop, list[_Slot[T, R]]] = {}
            for slot in batch:
                if slot.done is not None:
                    slot.done.set()
                elif slot.future is not None:
                    waiting.setdefault(slot.future.get_loop(), []).append(slot)
            for loop, slots in waiting.items():
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                    loop.call_soon_threadsafe(_settle, slots)  # one wake-up of each loop per batch
