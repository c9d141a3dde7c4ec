"""``GET /metrics``: Prometheus text parsed with prometheus_client's own parser; one process and ``--workers 2``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.settings import Settings
from tests.conftest import copy_model
from tests.service.api.live import free_port, live_client
from tests.service.api.prom import samples, value


@pytest.fixture(scope="module")
def client(tiny_analyzer) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    with live_client(Settings(max_batch_items=5), tiny_analyzer) as c:
        yield c


def test_metrics_counts_requests_inference_and_product(client: httpx.Client) -> None:
    texts = ["為什麼7號還要算錢?你們到底怎麼算的!", "请问营业时间", "我要投訴你們，再不處理就找消保官"]
    results = [client.post("/v1/analyze", json={"text": t}).json() for t in texts]
    batch = client.post("/v1/analyze/batch", json={"items": [{"text": "退款"}, {"text": "包裹坏了"}]})
    results += batch.json()["results"]
    assert client.post("/v1/analyze", json={"text": ""}).status_code == 422
    assert client.get("/no/such/path").status_code == 404
    # answered by the middleware before routing, and by a plain Starlette route: still counted on their route
    bad_json = client.post("/v1/conversations/analyze", content=b"{bad", headers={"content-type": "application/json"})
    assert bad_json.status_code == 422
    assert (
        client.post("/v1/conversations/analyze", content=b"hi", headers={"content-type": "text/plain"}).status_code
        == 415
    )
    assert client.get("/openapi.json").status_code == 200
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = samples(r.text)

    # HTTP: per route template, method and status; a histogram of the same requests
    assert value(m, "calmfirst_http_requests_total", route="/v1/analyze", method="POST", status="200") == 3
    assert value(m, "calmfirst_http_requests_total", route="/v1/analyze", status="422") == 1
    assert value(m, "calmfirst_http_requests_total", route="/v1/analyze/batch", status="200") == 1
    assert value(m, "calmfirst_http_requests_total", route="<unmatched>", status="404") == 1
    assert value(m, "calmfirst_http_requests_total", route="/v1/conversations/analyze", status="422") == 1
    assert value(m, "calmfirst_http_requests_total", route="/v1/conversations/analyze", status="415") == 1
    assert value(m, "calmfirst_http_requests_total", route="/openapi.json", status="200") == 1
    assert value(m, "calmfirst_http_request_duration_seconds_count", route="/v1/analyze", status="200") == 3
    assert value(m, "calmfirst_http_request_duration_seconds_bucket", route="/v1/analyze", status="200", le="+Inf") == 3
    assert value(m, "calmfirst_http_request_duration_seconds_sum", route="/v1/analyze", status="200") > 0

    # inference: one model call per request here (3 singles, 1 batch of 2)
    assert value(m, "calmfirst_inference_batch_size_count") == 4
    assert value(m, "calmfirst_inference_batch_size_sum") == 5
    assert value(m, "calmfirst_inference_seconds_count") == 4
    assert value(m, "calmfirst_model_info", name="tiny", version="0.0.1", lanes="0") == 1  # built by hand: no lanes

    # product counters agree with what the responses said
    assert value(m, "calmfirst_messages_total") == 5
    for level in range(4):
        expected = sum(x["anger"]["level"] == level for x in results)
        assert value(m, "calmfirst_messages_total", anger_level=str(level)) == expected
    calm_first = sum(x["route"]["flag"] == "calm_first" for x in results)
    assert value(m, "calmfirst_route_flags_total", flag="calm_first") == calm_first
    assert value(m, "calmfirst_route_flags_total", flag="ready_for_solutions") == 5 - calm_first
    # present even at 0 (value() reads a missing sample as 0, so a renamed counter would pass unseen)
    assert {"calmfirst_escalations_total", "calmfirst_threats_total"} <= set(m)
    assert value(m, "calmfirst_escalations_total") == sum(x["route"]["escalate"] for x in results)
    assert value(m, "calmfirst_threats_total") == sum(x["threat"]["detected"] for x in results)
    assert value(m, "calmfirst_complaints_total") == 5


def test_metrics_off_by_setting(tiny_analyzer, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CALMFIRST_METRICS", "false")
    before = list(tiny_analyzer.observers)
    settings = Settings()
    assert settings.metrics is False
    with live_client(settings, tiny_analyzer) as client:
        assert client.get("/metrics").status_code == 404
        assert client.post("/v1/analyze", json={"text": "请问营业时间"}).status_code == 200
    assert tiny_analyzer.observers == before  # nothing attached to the shared analyzer


def test_metrics_summed_over_workers(tiny_model_dir: Path, tmp_path: Path) -> None:
    """``calmfirst serve --workers 2``: every scrape, whichever worker answers it, counts all workers' requests."""
    from model.onnx import ensure_export

    model = tmp_path / "model"
    copy_model(tiny_model_dir, model)
    ensure_export(model)  # built once here, so the two workers only load it
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CALMFIRST_METRICS": "true"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", "2", "--model", str(model)]
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        pids: set[str] = set()
        while time.time() < deadline and len(pids) < 2:  # both workers up: each publishes its model_info
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                r = httpx.get(url + "/metrics", timeout=5)
                if r.status_code == 200:
                    pids = {lab["pid"] for lab, _ in samples(r.text).get("calmfirst_model_info", [])}
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert len(pids) == 2, f"expected model info from 2 workers, got {pids}"
        for i in range(12):  # a new connection each time, so the kernel spreads them over the workers
            assert (
                httpx.post(url + "/v1/analyze", json={"text": f"第{i}次了，快递还没到!"}, timeout=30).status_code == 200
            )
        batch = {"items": [{"text": "退款呢?"}, {"text": "謝謝"}]}
        for _ in range(3):
            assert httpx.post(url + "/v1/analyze/batch", json=batch, timeout=30).status_code == 200
        for _ in range(4):
            m = samples(httpx.get(url + "/metrics", timeout=10).text)
            assert value(m, "calmfirst_http_requests_total", route="/v1/analyze", status="200") == 12
            assert value(m, "calmfirst_messages_total") == 18
            assert "calmfirst_bulk_texts_in_progress" in m  # summed over the live workers (livesum)
            assert value(m, "calmfirst_bulk_texts_in_progress") == 0  # every batch released what it took
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
