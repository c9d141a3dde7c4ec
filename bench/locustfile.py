"""The load of ``make soak`` (run by ``bench/soak.py``, headless): single messages, batches and conversations,
with personal data in 30% of the texts and 5% hostile bodies.

Every answer is checked: the well-formed requests must get a 200 with the contract's top-level keys,
a hostile one exactly the 4xx it deserves. Anything else is a failure, classified as ``5xx``,
``connection`` (reset, refused, timed out: a dropped connection) or ``unexpected status``. At the end
the counts, and the latencies of every request (exact percentiles, not locust's rounded ones), go to
the JSON file named by ``SOAK_RESULTS``.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter, defaultdict
from typing import Any

from locust import FastHttpUser, between, events, task

from bench.soak_data import AGENT_TURNS, HOSTILE, Messages

HOSTILE_SHARE = float(os.environ.get("SOAK_HOSTILE_SHARE", "0.05"))

LATENCIES: dict[str, list[float]] = defaultdict(list)
STATUSES: dict[str, Counter[int]] = defaultdict(Counter)
FAILURES: Counter[str] = Counter()
FAILURE_EXAMPLES: dict[str, str] = {}
STARTED = time.time()


def _record(kind: str, status: int, ms: float, problem: str | None) -> None:
    LATENCIES[kind].append(ms)
    STATUSES[kind][status] += 1
    if problem is not None:
        if status == 0:
            cls = "connection"
        elif status >= 500:
            cls = "5xx"
        else:
            cls = "unexpected status"
        FAILURES[cls] += 1
        FAILURE_EXAMPLES.setdefault(f"{cls}: {kind}", problem[:300])


class Client(FastHttpUser):
    wait_time = between(0.05, 0.25)
    network_timeout = 120.0
    connection_timeout = 30.0

    def on_start(self) -> None:
        self.messages = Messages(seed=random.randrange(1 << 30))
        self.rng = random.Random(random.randrange(1 << 30))

    def _post(self, kind: str, path: str, body: bytes, content_type: str, ok: set[int], **extra: Any) -> int:
        headers = {"content-type": content_type, **extra.pop("headers", {})}
        started = time.perf_counter()
        with self.client.post(path, data=body, headers=headers, name=kind, catch_response=True) as r:
            ms = (time.perf_counter() - started) * 1000
            status = int(r.status_code or 0)
            problem = None
            if status not in ok:
                problem = f"{status}: {getattr(r, 'error', None) or (r.text or '')[:200]}"
            elif status == 200 and not self._contract_ok(kind, r.text or ""):
                problem = f"200 without the contract's fields: {(r.text or '')[:200]}"
            _record(kind, status, ms, problem)
            if problem is None:
                r.success()
            else:
                r.failure(problem)
            return status

    @staticmethod
    def _contract_ok(kind: str, text: str) -> bool:
        try:
            out = json.loads(text)
        except ValueError:
            return False
        if kind == "single":
            return {"anger", "complaint", "threat", "route", "script"} <= set(out)
        if kind == "batch":
            return all("anger" in r for r in out.get("results", []))
        return {"turns", "state"} <= set(out)

    def _json(self, kind: str, path: str, payload: dict[str, Any], **extra: Any) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self._post(kind, path, body, "application/json", {200}, **extra)

    @task(11)
    def single(self) -> None:
        if self.rng.random() < HOSTILE_SHARE:
            return self.hostile()
        payload = {"text": self.messages.text(), "redact": self.rng.random() < 0.3}
        query = f"?customer={self.messages.personal_value()}" if self.rng.random() < 0.2 else ""
        headers = {"x-request-id": self.messages.personal_value().replace(" ", "")} if self.rng.random() < 0.1 else {}
        self._json("single", "/v1/analyze" + query, payload, headers=headers)

    @task(4)
    def batch(self) -> None:
        if self.rng.random() < HOSTILE_SHARE:
            return self.hostile()
        items = [{"id": f"b{i}", "text": self.messages.text()} for i in range(self.rng.randint(2, 16))]
        self._json("batch", "/v1/analyze/batch", {"items": items, "redact": self.rng.random() < 0.3})

    @task(4)
    def conversation(self) -> None:
        if self.rng.random() < HOSTILE_SHARE:
            return self.hostile()
        turns = []
        for i in range(self.rng.randint(2, 10)):
            if i % 2 == 0:
                turns.append({"role": "customer", "text": self.messages.text()})
            else:
                turns.append({"role": "agent", "text": self.rng.choice(AGENT_TURNS)})
        self._json("conversation", "/v1/conversations/analyze", {"id": "c", "turns": turns})

    def hostile(self) -> None:
        name, path, body, content_type, ok = self.rng.choice(HOSTILE)
        status = self._post("hostile", path, body, content_type, ok)
        STATUSES[f"hostile: {name}"][status] += 1


@events.quitting.add_listener
def _write_results(environment: Any, **_: Any) -> None:
    target = os.environ.get("SOAK_RESULTS")
    if not target:
        return
    with open(target, "w", encoding="utf-8") as f:
        json.dump(
            {
                "duration_s": round(time.time() - STARTED, 1),
                "latencies_ms": {k: v for k, v in LATENCIES.items()},
                "statuses": {k: {str(s): n for s, n in v.items()} for k, v in STATUSES.items() if sum(v.values())},
                "failures": dict(FAILURES),
                "failure_examples": FAILURE_EXAMPLES,
            },
            f,
        )
