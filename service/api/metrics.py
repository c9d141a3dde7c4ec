"""``GET /metrics`` in the Prometheus text format (prometheus_client).

What a contact center's dashboards and alerts need from a serving process:

- **HTTP**: ``calmfirst_http_requests_total`` and ``calmfirst_http_request_duration_seconds``
  (histogram) by method, route template (``/v1/analyze``, never the raw path, so ids in paths
  cannot blow up the series) and status; ``calmfirst_http_requests_in_progress``.
- **Inference**: ``calmfirst_inference_batch_size`` and ``calmfirst_inference_seconds``
  (histograms, one observation per model call: a micro-batch, a batch request, a chat's turns).
- **Model**: ``calmfirst_model_info{name, version, backend, quantized, lanes}`` = 1 (``lanes``: the micro-batcher's
  one-thread forward lanes, ``service.microbatch``; 0 when off).
- **Load**: ``calmfirst_bulk_texts_in_progress`` (texts of batches and explanations being scored, against
  ``CALMFIRST_MAX_BULK_TEXTS``, ``service.api.admission``); ``calmfirst_conversation_turns_total{kind, kept}``
  (conversation turns by ``customer``/``agent``, ``kept="true"`` when answered from the kept turns of a chat
  sent again, ``service.live_cache``: a low kept share with long chats says ``CALMFIRST_CONVERSATION_CACHE`` is
  too small).
- **Product**: ``calmfirst_messages_total{anger_level, anger_label}``, ``calmfirst_route_flags_total{flag}``,
  ``calmfirst_escalations_total``, ``calmfirst_threats_total``, ``calmfirst_complaints_total{type}``.
  Rates are PromQL's job, e.g. the calm_first rate over five minutes::

      sum(rate(calmfirst_route_flags_total{flag="calm_first"}[5m])) / sum(rate(calmfirst_messages_total[5m]))

With ``calmfirst serve --workers N`` every worker is its own process, so the counters live in
prometheus_client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` (set by ``calmfirst serve``
before the workers start, to a fresh temporary folder unless the operator set one) holds one
file per process and metric, and ``/metrics`` on any worker sums them. The variable must be set
before ``prometheus_client`` is first imported, which is why this module imports it only inside
functions. ``CALMFIRST_METRICS=false`` leaves the route and the instrumentation out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from fastapi import FastAPI

    from data.vocab import Role
    from service.analyzer import Analyzer, ConversationAnalyzer
    from service.api.admission import BulkBudget
    from service.results import MessageResult

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Request latency buckets (seconds): single messages take milliseconds, batches up to seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
INFERENCE_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
UNMATCHED = "<unmatched>"


def multiprocess() -> bool:
    """True when prometheus_client runs in multiprocess mode (the variable is read at its import)."""
    return bool(os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()))


class Metrics:
    """The service's metrics, in a registry of their own (so several apps in one process do not clash)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "calmfirst_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "calmfirst_http_request_duration_seconds",
            "Time from request to the end of the response",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "calmfirst_http_requests_in_progress",
            "Requests being answered now",
            ["method"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.batch_size = Histogram(
            "calmfirst_inference_batch_size", "Texts per model call", buckets=BATCH_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "calmfirst_inference_seconds",
            "Time of one model call (tokenize, forward, scores)",
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "calmfirst_model_info",
            "The model being served (value 1)",
            ["name", "version", "backend", "quantized", "lanes"],
            multiprocess_mode="liveall",
            registry=r,
        )
        self.bulk_texts = Gauge(
            "calmfirst_bulk_texts_in_progress",
            "Texts of batch requests and explanations being scored now (CALMFIRST_MAX_BULK_TEXTS)",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.conversation_turns = Counter(
            "calmfirst_conversation_turns",
            "Conversation turns, by kind and whether the answer came from the kept turns",
            ["kind", "kept"],
            registry=r,
        )
        self.messages = Counter(
            "calmfirst_messages", "Messages scored, by anger level", ["anger_level", "anger_label"], registry=r
        )
        self.flags = Counter("calmfirst_route_flags", "Messages scored, by routing flag", ["flag"], registry=r)
        self.escalations = Counter("calmfirst_escalations", "Messages routed to a supervisor", registry=r)
        self.threats = Counter("calmfirst_threats", "Messages with a threat detected", registry=r)
        self.complaints = Counter(
            "calmfirst_complaints", "Messages scored, by primary complaint type", ["type"], registry=r
        )

    # -- the Analyzer's observer interface (service.analyzer.AnalysisObserver)
    def inference_done(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def results_ready(self, results: Sequence[MessageResult]) -> None:
        for r in results:
            self.messages.labels(str(r.anger.level), str(r.anger.label)).inc()
            self.flags.labels(str(r.route.flag)).inc()
            self.complaints.labels(str(r.complaint.type)).inc()
            if r.route.escalate:
                self.escalations.inc()
            if r.threat.detected:
                self.threats.inc()

    # -- the ConversationAnalyzer's observer interface (service.analyzer.ConversationObserver)
    def turns_looked_up(self, kind: Role, kept: int, scored: int) -> None:
        if kept:
            self.conversation_turns.labels(str(kind), "true").inc(kept)
        if scored:
            self.conversation_turns.labels(str(kind), "false").inc(scored)

    def bulk_changed(self, texts: int) -> None:
        self.bulk_texts.set(texts)

    def watch(self, conversations: ConversationAnalyzer, budget: BulkBudget) -> None:
        """Count the conversation turns and publish the bulk budget from now on (the lifespan calls this)."""
        if self not in conversations.observers:
            conversations.observers.append(self)
        if self.bulk_changed not in budget.watchers:
            budget.watchers.append(self.bulk_changed)
        self.bulk_changed(budget.texts)

    def attach(self, analyzer: Analyzer) -> None:
        """Count what ``analyzer`` does from now on, and publish its model (the app's lifespan calls this)."""
        model = analyzer.model
        quantized = str(bool(getattr(model, "quantized", False))).lower()
        backend = str(getattr(model, "backend", "torch"))
        lanes = str(len(analyzer.lane_models))
        self.model_info.labels(model.config.name, model.config.version, backend, quantized, lanes).set(1)
        if self not in analyzer.observers:
            analyzer.observers.append(self)

    def detach(self, analyzer: Analyzer) -> None:
        """Stop counting (at shutdown); a worker process also leaves the multiprocess sums."""
        if self in analyzer.observers:
            analyzer.observers.remove(self)
        mark_process_dead()

    def exposition(self) -> tuple[bytes, str]:
        """The text format: this registry, or every worker's files in multiprocess mode."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

        if not multiprocess_dir_ready():
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def multiprocess_dir_ready() -> bool:
    return multiprocess() and os.path.isdir(os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower(), ""))


def mark_process_dead() -> None:
    """A worker that stops drops its live gauges (in-progress requests, model info) from the sums."""
    if multiprocess_dir_ready():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())


class MetricsMiddleware:
    """Pure ASGI middleware (cheaper than ``BaseHTTPMiddleware``): counts and times every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope.get("method", "GET")
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        progress = self.metrics.in_progress.labels(method)
        progress.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            progress.dec()
            route = _route_path(scope)  # the router has put the matched route into the scope by now
            labels = (method, route, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)


def _route_path(scope: Scope) -> str:
    """The matched route's template (``/v1/analyze``): the one the router put into the scope, else the one the
    request's method and path match (:func:`route_of`); ``<unmatched>`` for a path or method the API does not have."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else route_of(scope) or UNMATCHED


def route_of(scope: Scope) -> str | None:
    """The route template a request's path names, found without routing it: a path of the app's OpenAPI schema
    (FastAPI builds it once) or the schema's own URL.

    A request answered before routing (a middleware's 401, 413, 415, 422 or shed 503) or by a plain Starlette
    route (``/openapi.json``) has no route in its scope; counting it under ``<unmatched>`` would hide which
    endpoint gets the bad bodies. None for a path the API does not have: no series per made-up path. (The API's
    paths have no parameters, so the path is its own template.)"""
    app: Any = scope.get("app")
    path = scope.get("path")
    if app is None or not isinstance(path, str):
        return None
    if path in app.openapi().get("paths", {}) or path == getattr(app, "openapi_url", None):
        return path
    return None


def install_metrics(app: FastAPI) -> Metrics:
    """``GET /metrics`` and the middleware; the lifespan connects the analyzer (``attach``)."""
    metrics = Metrics()
    app.state.metrics = metrics

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics(request: Request) -> Response:
        body, content_type = request.app.state.metrics.exposition()
        return Response(content=body, media_type=content_type)

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return metrics


def prepare_multiprocess() -> str:
    """Before ``serve --workers N`` starts its workers: a clean ``PROMETHEUS_MULTIPROC_DIR`` they all share.

    The operator's folder is used when the variable is set (its stale files from an earlier run are
    removed, as prometheus_client asks); otherwise a fresh temporary folder, removed at exit.
    """
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    given = os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower())
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink(missing_ok=True)
    else:
        folder = Path(tempfile.mkdtemp(prefix="calmfirst-metrics-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    return str(folder)
