"""Property-based fuzzing of the real server from its own contract (``/openapi.json``), with schemathesis.

A uvicorn server on a free loopback port (the session's tiny model) is fuzzed operation by
operation: schema-valid and schema-breaking bodies (schemathesis' positive and negative modes,
its examples and coverage phases), a fixed seed and a bounded number of examples so the suite
stays fast. Every answer must be no 5xx, carry a status code the document lists, and match the
schema the document gives for that status (a 422 has ``detail`` and ``errors``, a 200 is a
contract result).

How many examples each operation got is printed at the end of the session and, when
``CALMFIRST_FUZZ_REPORT`` names a file, written there as JSON (``CALMFIRST_FUZZ_REPORT=f.json make test``).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.settings import Settings
from tests.service.api.live import live_server

# schemathesis 4's lazy (fixture) schemas rename the test node through ``node._nodeid``, which pytest 9
# no longer has; the name is only for reporting, so a read-only stand-in is enough.
if not hasattr(pytest.Function, "_nodeid"):
    pytest.Function._nodeid = property(lambda self: self.nodeid, lambda self, value: None)  # type: ignore[attr-defined]

SEED = 20261124
#: Examples per operation and phase (fuzzing); the examples and coverage phases add their own few.
MAX_EXAMPLES = int(os.environ.get("CALMFIRST_FUZZ_EXAMPLES", "30"))
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]

#: examples tried per operation, and the status codes they got
TRIED: Counter[str] = Counter()
STATUSES: dict[str, Counter[int]] = defaultdict(Counter)


@pytest.fixture(scope="module")
def fuzz_url(tiny_analyzer) -> Iterator[str]:  # type: ignore[no-untyped-def]
    # small limits keep every example cheap: texts of 300 characters, 8 items or turns
    settings = Settings(max_text_chars=300, max_batch_items=8, max_body_bytes=64_000)
    with live_server(settings, tiny_analyzer) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(fuzz_url: str):  # type: ignore[no-untyped-def]
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": MAX_EXAMPLES, "mode": "all", "database": "none", "deterministic": True},
            "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True}},
        }
    )
    return schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


DOCUMENTED = {
    "GET /healthz",
    "GET /readyz",
    "GET /v1/labels",
    "POST /v1/analyze",
    "POST /v1/analyze/batch",
    "POST /v1/conversations/analyze",
}


@schema.parametrize()
def test_fuzz_operation(case, fuzz_url: str) -> None:  # type: ignore[no-untyped-def]
    response = case.call_and_validate(base_url=fuzz_url, checks=CHECKS, timeout=30)
    label = f"{case.method.upper()} {case.path}"
    if label not in DOCUMENTED:  # the coverage phase also tries the methods a path does not have (405)
        label = "other methods"
    TRIED[label] += 1
    STATUSES[label][response.status_code] += 1


def test_fuzz_every_operation_was_exercised(fuzz_url: str) -> None:
    import httpx

    document = httpx.get(f"{fuzz_url}/openapi.json").json()
    operations = {f"{m.upper()} {p}" for p, item in document["paths"].items() for m in item}
    assert operations == DOCUMENTED, "a new operation: add it to DOCUMENTED"
    assert operations <= set(TRIED), operations - set(TRIED)
    for label in operations:
        assert TRIED[label] >= 1
    for label in ("POST /v1/analyze", "POST /v1/analyze/batch", "POST /v1/conversations/analyze"):
        assert TRIED[label] >= MAX_EXAMPLES // 2, TRIED
        # both sides of the contract were exercised: accepted bodies and rejected ones
        assert STATUSES[label][200] > 0 and STATUSES[label][422] > 0, STATUSES[label]
    assert set(STATUSES["other methods"]) <= {405}
    report = {
        "seed": SEED,
        "max_examples": MAX_EXAMPLES,
        "examples": dict(sorted(TRIED.items())),
        "statuses": {k: dict(sorted(v.items())) for k, v in sorted(STATUSES.items())},
    }
    target = os.environ.get("CALMFIRST_FUZZ_REPORT")
    if target:
        Path(target).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print("\nfuzzing:", json.dumps(report["examples"]))
