"""The app factory. The model loads in ``lifespan``, never at import time, and is released at shutdown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service.analyzer import Analyzer, ConversationAnalyzer
from service.api.admission import BulkBudget
from service.api.docs import install_docs
from service.api.errors import install_error_handlers
from service.api.logs import install_request_id_logging
from service.api.metrics import install_metrics
from service.api.middleware import install_middleware
from service.api.routes import analyze, console, conversations, health, labels
from service.redact import install_log_redaction
from service.routing.agent_model import load_agent_detector
from service.settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, analyzer: Analyzer | None = None) -> FastAPI:
    """Build the app. ``analyzer`` lets tests inject an already-loaded model (the caller then owns it)."""
    settings = settings or Settings()

    install_log_redaction()
    install_request_id_logging()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded: Analyzer = (
            analyzer if analyzer is not None else await run_in_threadpool(partial(Analyzer.from_settings, settings))
        )
        # the agent-turn encoder follows the customer model's backend: ONNX Runtime without PyTorch by default
        detector = await run_in_threadpool(
            lambda: load_agent_detector(backend=settings.backend, threads=settings.threads())
        )
        app.state.conversations = ConversationAnalyzer(loaded, detector, cache_size=settings.conversation_cache)
        app.state.analyzer = loaded
        logger.info(
            "admission: max_inflight %s, max_bulk_texts %s (bulk_queue %s, bulk_wait_s %g, bulk_chat_turns %s), "
            "conversation_cache %s",
            settings.max_inflight or "off",
            settings.max_bulk_texts or "off",
            settings.bulk_queue,
            settings.bulk_wait_s,
            settings.bulk_chat_turns,
            settings.conversation_cache or "off",
        )
        metrics = getattr(app.state, "metrics", None)
        if metrics is not None:
            metrics.attach(loaded)
            metrics.watch(app.state.conversations, app.state.bulk_budget)
        try:
            yield
        finally:
            if metrics is not None:
                metrics.detach(loaded)
            app.state.analyzer = None
            app.state.conversations = None
            if analyzer is None:  # what the app loaded, the app stops (the micro-batcher's worker thread)
                loaded.close()

    app = FastAPI(
        title="CalmFirst",
        summary="Anger level, complaint type, threat and the next step for Chinese customer messages.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served from the installed assets below, not from a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.analyzer = None
    app.state.conversations = None
    app.state.bulk_budget = BulkBudget(
        settings.max_bulk_texts,
        queue=settings.bulk_queue,
        wait_s=settings.bulk_wait_s,
        retry_after_s=settings.retry_after_s,
    )
    install_error_handlers(app)

    install_middleware(app, settings)

    for module in (health, labels, analyze, conversations, console):
        app.include_router(module.router)
    install_docs(app)
    if settings.metrics:
        install_metrics(app)  # last: its middleware is the outermost, so it counts every answer
    return app
