"""What a live chat sends again: the turns already scored, kept so a growing chat costs only its new turns.

Why: a contact center's routing sends the *whole* chat on every new message (``POST
/v1/conversations/analyze``), so without memory the n-th message of a chat re-scores n turns, and the
latency grows with the chat (2-core Intel Xeon, shipped models: 12 ms at 2 turns, 37 ms at 6, 120 ms at 10).
A customer turn's scores depend only on what the model reads (the turn with its context), an agent turn's
codes only on the turn, the customer's turn before it and the customer model's scores of the customer turns just
before and after it (so an agent turn is read again when the customer answers it; the e5 model keeps its text
parts, ``AgentTurnModel.keep_parts``, so that re-read costs only its stack), so both are kept by exactly that,
in a bounded LRU map per server process (``CALMFIRST_CONVERSATION_CACHE`` entries each, 1,024 by default: about 5 KB a
turn, so ~10 MB, enough for ~100 chats of 20 turns; 0 turns it off). Replaying 5 chats of 12 turns as a router
sends them (the whole chat after each message; ``work/s36/livechat.py``, 2026-12-05): 3.8 s without the cache,
0.49 s with it; the 12-turn call 132 ms against 6 ms; the same conversation state and agent codes.
With the agent turns read again when answered (``work/s38/livechat.py``, 2026-12-05 20:45 UTC, 5 chats of 12 turns,
each sent whole after each message): a call after a customer message 6.6 ms (6.2-6.6 before), after an agent
message 8.8 ms (8.5-9.2); without the kept parts the first took 15 ms.
Only the server uses it: ``calmfirst qa`` scores each conversation once, batched. With it, the product counters
of ``/metrics`` (messages per anger level, flags, threats...) count a chat's customer turns once, when first
scored, not again each time the chat is sent.

A turn not seen before is scored on its own, never batched with the chat's other new turns: int8 activations
are scaled per forward, so a turn's scores would otherwise depend on which turns arrived with it, and a cached
turn would keep whatever its first company gave it. Alone, a turn gets the same scores whatever it came with.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """At most ``size`` entries, the least recently used dropped first; safe across threads.

    Values are handed out as deep copies, so a caller that changes what it got cannot change the cache.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.size = size
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is kept; a look only: neither its place nor the hit counts change."""
        with self._lock:
            return key in self._data

    def get(self, key: K) -> V | None:
        with self._lock:
            if key not in self._data:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            value = self._data[key]
        return copy.deepcopy(value)

    def put(self, key: K, value: V) -> None:
        kept = copy.deepcopy(value)
        with self._lock:
            self._data[key] = kept
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def each(self, keys: Sequence[K], compute: Callable[[K], V]) -> tuple[list[V], list[bool]]:
        """The value of every key: kept ones from the cache, the others computed one at a time and kept;
        and, per key, whether it was computed now (the first time it appears in ``keys``)."""
        done: dict[K, V] = {}
        fresh: list[bool] = []
        for key in keys:
            if key in done:
                fresh.append(False)
                continue
            got = self.get(key)
            fresh.append(got is None)
            if got is None:
                got = compute(key)
                self.put(key, got)
            done[key] = got
        return [done[k] for k in keys], fresh
