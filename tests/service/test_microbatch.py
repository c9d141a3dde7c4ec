"""Micro-batching: concurrent single requests share one forward, results and order unchanged."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from service.analyzer import Analyzer
from service.microbatch import MicroBatcher

TEXTS = ["為什麼7號還要算錢?", "请问营业时间", "退款", "太离谱了，我要投诉", "好", "你們客服態度太差了!", "包裹坏了"]


def _concurrently(n: int, call: Callable[[int], Any]) -> list[Any]:
    """Run ``call(i)`` for i < n on n threads released together; results by i."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = call(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    if errors:
        raise errors[0]
    return results


class CountingFn:
    def __init__(self) -> None:
        self.calls: list[list[Any]] = []

    def __call__(self, items: list[Any]) -> list[Any]:
        self.calls.append(list(items))
        return [x * 10 for x in items]


def test_microbatch_concurrent_requests_share_one_forward() -> None:
    fn = CountingFn()
    batcher = MicroBatcher(fn, max_wait_ms=500, max_size=8, adaptive=False)
    try:
        results = _concurrently(8, batcher.submit)
    finally:
        batcher.close()
    assert results == [i * 10 for i in range(8)]  # every caller gets its own answer
    assert len(fn.calls) == 1 and sorted(fn.calls[0]) == list(range(8))
    assert batcher.stats.batches == 1 and batcher.stats.largest == 8


def test_microbatch_batches_never_exceed_max_size() -> None:
    fn = CountingFn()
    batcher = MicroBatcher(fn, max_wait_ms=300, max_size=3, adaptive=False)
    try:
        results = _concurrently(7, batcher.submit)
    finally:
        batcher.close()
    assert results == [i * 10 for i in range(7)]
    assert all(len(c) <= 3 for c in fn.calls) and sum(len(c) for c in fn.calls) == 7
    assert len(fn.calls) == 3


def test_microbatch_lone_request_does_not_wait() -> None:
    fn = CountingFn()
    batcher = MicroBatcher(fn, max_wait_ms=2000, max_size=8, adaptive=True)
    try:
        started = time.perf_counter()
        assert batcher.submit(4) == 40
        assert batcher.submit(5) == 50
        assert time.perf_counter() - started < 1.0  # the 2 s window is only for concurrent traffic
    finally:
        batcher.close()
    assert fn.calls == [[4], [5]]


def test_microbatch_requests_arriving_during_a_forward_share_the_next() -> None:
    calls: list[list[int]] = []
    first_running = threading.Event()

    def slow(items: list[int]) -> list[int]:
        calls.append(list(items))
        first_running.set()
        time.sleep(0.3)
        return items

    batcher = MicroBatcher(slow, max_wait_ms=50, max_size=16, adaptive=True)
    try:
        lone = threading.Thread(target=batcher.submit, args=(0,))
        lone.start()  # idle batcher: runs inline in this caller's thread
        assert first_running.wait(5)
        results = _concurrently(6, lambda i: batcher.submit(i + 1))
        lone.join(5)
    finally:
        batcher.close()
    assert results == [1, 2, 3, 4, 5, 6]
    assert calls[0] == [0] and len(calls) == 2 and sorted(calls[1]) == [1, 2, 3, 4, 5, 6]


def test_microbatch_error_reaches_every_caller_and_recovers() -> None:
    fail = threading.Event()
    fail.set()

    def fn(items: list[int]) -> list[int]:
        if fail.is_set():
            raise ValueError("model broke")
        return items

    batcher = MicroBatcher(fn, max_wait_ms=300, max_size=4, adaptive=False)
    try:
        outcomes = _concurrently(4, lambda i: _outcome(batcher, i))
        assert outcomes == ["ValueError"] * 4
        fail.clear()
        assert batcher.submit(3) == 3
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(1)


def _outcome(batcher: MicroBatcher[int, int], i: int) -> str:
    try:
        batcher.submit(i)
    except ValueError as e:
        return type(e).__name__
    return "ok"


def test_microbatch_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_size"):
        MicroBatcher(CountingFn(), max_size=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        MicroBatcher(CountingFn(), max_wait_ms=-1)


def test_microbatch_analyzer_results_identical_to_unbatched_and_in_order(tiny_model) -> None:  # type: ignore[no-untyped-def]
    plain = Analyzer(tiny_model, microbatch_max_size=1)
    assert plain.microbatcher is None
    expected = [plain.analyze([t], ids=[i])[0].model_dump(mode="json") for i, t in enumerate(TEXTS)]

    batched = Analyzer(tiny_model, microbatch_wait_ms=10_000, microbatch_max_size=len(TEXTS))
    assert batched.microbatcher is not None
    batched.microbatcher.adaptive = False  # gather until all are queued (max_size): one forward
    forwards: list[int] = []
    inner = batched._predict_many

    def counting(texts: list[str]) -> Any:
        forwards.append(len(texts))
        return inner(texts)

    batched.microbatcher.fn = counting
    try:
        got = _concurrently(len(TEXTS), lambda i: batched.analyze([TEXTS[i]], ids=[i])[0].model_dump(mode="json"))
    finally:
        batched.microbatcher.close()
    assert forwards == [len(TEXTS)]
    for g, e in zip(got, expected, strict=True):
        assert g["id"] == e["id"]
        assert g["anger"]["level"] == e["anger"]["level"] and g["complaint"]["types"] == e["complaint"]["types"]
        assert g["anger"]["probs"] == pytest.approx(e["anger"]["probs"], abs=1e-5)
        assert g["complaint"]["scores"] == pytest.approx(e["complaint"]["scores"], abs=1e-5)
        assert g["route"] == e["route"]
    # several texts in one call are a batch already: straight to the model, in order
    many = batched.analyze(TEXTS, ids=list(range(len(TEXTS))))
    assert [r.id for r in many] == list(range(len(TEXTS)))


def test_microbatch_never_waits_when_a_slot_is_free_and_batches_only_what_waits() -> None:
    """Two slots: two requests run at once, each alone; the ones arriving meanwhile share the next forward."""
    calls: list[list[int]] = []
    running = threading.Semaphore(0)
    release = threading.Event()

    def slow(items: list[int]) -> list[int]:
        calls.append(list(items))
        running.release()
        release.wait(5)
        return items

    batcher = MicroBatcher(slow, max_wait_ms=0, max_size=16, max_concurrent=2)
    try:
        first = [threading.Thread(target=batcher.submit, args=(i,)) for i in (0, 1)]
        for t in first:
            t.start()
        assert running.acquire(timeout=5) and running.acquire(timeout=5)  # both running, neither waited
        later = [threading.Thread(target=batcher.submit, args=(i,)) for i in (2, 3, 4)]
        for t in later:
            t.start()
        deadline = time.time() + 5
        while len(batcher._queue) < 3 and time.time() < deadline:
            time.sleep(0.01)
        release.set()
        for t in first + later:
            t.join(5)
    finally:
        batcher.close()
    assert sorted(map(sorted, calls)) == [[0], [1], [2, 3, 4]]
    with pytest.raises(ValueError, match="max_concurrent"):
        MicroBatcher(CountingFn(), max_concurrent=0)


class Lanes:
    """A wide ``fn`` and one-thread lanes that record who ran what, and whether they ever overlapped."""

    def __init__(self, lanes: int, *, hold: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.active: set[str] = set()
        self.calls: list[tuple[str, list[int]]] = []
        self.overlaps: list[set[str]] = []
        self.hold = hold
        self.wide = self._make("wide")
        self.lanes = [self._make(f"lane{i}") for i in range(lanes)]

    def _make(self, name: str) -> Callable[[list[int]], list[int]]:
        def fn(items: list[int]) -> list[int]:
            with self.lock:
                self.active.add(name)
                self.calls.append((name, list(items)))
                if len(self.active) > 1:
                    self.overlaps.append(set(self.active))
            time.sleep(self.hold)
            with self.lock:
                self.active.discard(name)
            return [x * 10 for x in items]

        return fn


def test_microbatch_lanes_lone_request_gets_all_cores_concurrent_ones_share_the_lanes() -> None:
    """A lone request runs ``fn`` (every core); under load the lanes run side by side, never beside ``fn``."""
    rec = Lanes(2, hold=0.05)
    batcher = MicroBatcher(rec.wide, max_wait_ms=0, max_size=16, lanes=rec.lanes)
    try:
        assert batcher.submit(1) == 10 and batcher.submit(2) == 20  # one client: all cores each time
        assert [name for name, _ in rec.calls] == ["wide", "wide"]
        rec.calls.clear()
        results = _concurrently(8, batcher.submit)
        assert results == [i * 10 for i in range(8)]
        assert batcher.submit(9) == 90  # alone again: all cores
    finally:
        batcher.close()
    assert sorted(x for _, items in rec.calls for x in items) == [*range(8), 9]
    assert rec.calls[-1] == ("wide", [9])
    assert all("wide" not in both for both in rec.overlaps)  # fn never overlaps a lane
    assert {"lane0", "lane1"} in rec.overlaps  # the lanes did run side by side
    assert batcher.max_concurrent == 2


def test_microbatch_lanes_share_what_waits_between_free_lanes() -> None:
    """Requests that queued behind ``fn`` are split between the lanes, not piled onto one."""
    calls: list[tuple[str, list[int]]] = []
    wide_running = threading.Event()
    release = threading.Event()

    def wide(items: list[int]) -> list[int]:
        calls.append(("wide", list(items)))
        wide_running.set()
        release.wait(5)
        return items

    def lane(name: str) -> Callable[[list[int]], list[int]]:
        def fn(items: list[int]) -> list[int]:
            calls.append((name, list(items)))
            time.sleep(0.2)  # still running when the next share is taken
            return items

        return fn

    batcher = MicroBatcher(wide, max_wait_ms=0, max_size=16, lanes=[lane("lane0"), lane("lane1")])
    try:
        lone = threading.Thread(target=batcher.submit, args=(0,))
        lone.start()
        assert wide_running.wait(5)
        later = [threading.Thread(target=batcher.submit, args=(i,)) for i in (1, 2, 3, 4)]
        for t in later:
            t.start()
        deadline = time.time() + 5
        while len(batcher._queue) < 4 and time.time() < deadline:
            time.sleep(0.01)
        assert [name for name, _ in calls] == ["wide"]  # nothing started beside the all-cores forward
        release.set()
        for t in [lone, *later]:
            t.join(5)
    finally:
        batcher.close()
    assert calls[0] == ("wide", [0])
    lane_calls = calls[1:]
    assert sorted(x for _, items in lane_calls for x in items) == [1, 2, 3, 4]
    assert {name for name, _ in lane_calls} == {"lane0", "lane1"}  # both lanes got a share
    assert max(len(items) for _, items in lane_calls) <= 2  # ceil(4 waiting / 2 lanes)


def test_microbatch_analyzer_lanes_score_like_the_model(tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    """The server's analyzer with ONNX lanes (one-thread sessions on shared weights) answers as without."""
    pytest.importorskip("onnxruntime")
    from service.settings import Settings

    settings = Settings(model_path=str(tiny_model_dir), microbatch_lanes=2, intra_op_threads=2)
    analyzer = Analyzer.from_settings(settings)
    try:
        assert analyzer.microbatcher is not None and len(analyzer.microbatcher.lanes) == 2
        alone = [p.anger_score for p in analyzer.predict(TEXTS)]  # one batch, the main session
        shared = _concurrently(len(TEXTS), lambda i: analyzer.predict([TEXTS[i]])[0].anger_score)
    finally:
        analyzer.close()
    assert shared == pytest.approx(alone, abs=2e-3)  # int8 activations: scales differ per batch
    assert Settings(microbatch_max_size=1, intra_op_threads=2).lanes() == 0  # no micro-batcher, no lanes
    assert Settings(intra_op_threads=1).lanes() == 0  # one thread: nothing to split
    assert Settings(intra_op_threads=2).lanes() == 2


def test_microbatch_submit_async_lone_gets_all_cores_concurrent_share_lanes_loop_never_blocks() -> None:
    """The HTTP path: callers on an event loop await; the forwards run on the workers, as ``submit``'s do."""
    import asyncio

    rec = Lanes(2, hold=0.05)
    batcher = MicroBatcher(rec.wide, max_wait_ms=0, max_size=16, lanes=rec.lanes)

    async def main() -> tuple[list[int], list[int], int]:
        loop_thread = threading.get_ident()
        alone = [await batcher.submit_async(1), await batcher.submit_async(2)]
        ticks = 0

        async def ticker() -> None:  # the loop keeps running while forwards run
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        tick = asyncio.create_task(ticker())
        together = await asyncio.gather(*(batcher.submit_async(i) for i in range(8)))
        tick.cancel()
        assert threading.get_ident() == loop_thread
        return alone, list(together), ticks

    try:
        alone, together, ticks = asyncio.run(main())
    finally:
        batcher.close()
    assert alone == [10, 20] and together == [i * 10 for i in range(8)]
    assert [name for name, _ in rec.calls[:2]] == ["wide", "wide"]  # each lone request: all cores
    later = rec.calls[2:]
    assert sorted(x for _, items in later for x in items) == list(range(8))
    assert {"lane0", "lane1"} <= {name for name, _ in later}  # under load: the lanes, side by side
    assert all("wide" not in both for both in rec.overlaps)
    assert ticks >= 5  # 8 items on 2 lanes took >= 4 x 50 ms; the loop ticked all along


def test_microbatch_submit_async_raises_the_batch_error_and_survives_a_cancelled_caller() -> None:
    import asyncio

    release = threading.Event()

    def fn(items: list[int]) -> list[int]:
        if -1 in items:
            raise ValueError("bad item")
        release.wait(5)
        return [x * 10 for x in items]

    batcher = MicroBatcher(fn, max_wait_ms=0, max_size=16)

    async def main() -> int:
        with pytest.raises(ValueError, match="bad item"):
            await batcher.submit_async(-1)
        waiting = asyncio.create_task(batcher.submit_async(3))
        await asyncio.sleep(0.05)
        waiting.cancel()  # the client went away while its forward ran
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return await batcher.submit_async(4)  # the batcher goes on

    try:
        assert asyncio.run(main()) == 40
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(batcher.submit_async(5))


def test_microbatch_analyzer_analyze_one_is_analyze_for_the_event_loop(tiny_model) -> None:  # type: ignore[no-untyped-def]
    """``POST /v1/analyze``'s path (``Analyzer.analyze_one``) gives what ``analyze`` gives, masked text included."""
    import asyncio

    batched = Analyzer(tiny_model, microbatch_max_size=8)
    plain = Analyzer(tiny_model, microbatch_max_size=1)
    text = "我的手机号13812345678，快点退款!"
    try:
        expected = plain.analyze([text], ids=[0], lang="en", redact=True)[0].model_dump(mode="json")

        async def main() -> list[dict[str, Any]]:
            results = await asyncio.gather(*(batched.analyze_one(text, lang="en", redact=True) for _ in range(3)))
            return [r.model_dump(mode="json") for r in results]

        got = asyncio.run(main())
    finally:
        batched.close()
    for g in got:
        assert g["anger"]["probs"] == pytest.approx(expected["anger"]["probs"], abs=1e-5)
        assert {k: g[k] for k in ("id", "route", "script", "text")} == {
            k: expected[k] for k in ("id", "route", "script", "text")
        }
    assert "13812345678" not in got[0]["text"]
    with pytest.raises(RuntimeError, match="micro-batcher"):
        asyncio.run(plain.analyze_one(text))


def test_microbatch_submit_async_drops_items_whose_caller_gave_up_while_queued() -> None:
    """A caller cancelled while its item waits behind a running forward costs no forward of its own."""
    import asyncio

    started = threading.Event()
    release = threading.Event()
    seen: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        seen.append(list(items))
        started.set()
        release.wait(5)
        return [x * 10 for x in items]

    batcher = MicroBatcher(fn, max_wait_ms=0, max_size=16)

    async def main() -> list[int]:
        first = asyncio.create_task(batcher.submit_async(1))
        while not started.is_set():
            await asyncio.sleep(0.005)
        gave_up = asyncio.create_task(batcher.submit_async(2))
        kept = asyncio.create_task(batcher.submit_async(3))
        await asyncio.sleep(0.05)  # both queued behind the running forward
        gave_up.cancel()
        await asyncio.sleep(0.01)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await gave_up
        return [await first, await kept]

    try:
        assert asyncio.run(main()) == [10, 30]
    finally:
        batcher.close()
    assert seen == [[1], [3]]  # item 2 never reached a forward
