"""The app factory. The model loads in ``lifespan``, never at import time, and is released at shutdown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.analyzer import Analyzer, ConversationAnalyzer
from service.api.errors import install_error_handlers
from service.api.routes import analyze, console, conversations, health, labels
from service.redact import install_log_redaction
from service.routing.agent_steps import AgentStepDetector
from service.settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, analyzer: Analyzer | None = None) -> FastAPI:
    """Build the app. ``analyzer`` lets tests inject an already-loaded model (the caller then owns it)."""
    settings = settings or Settings()

    install_log_redaction()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded: Analyzer = (
            analyzer if analyzer is not None else await run_in_threadpool(Analyzer.from_settings, settings)
        )
        detector = await run_in_threadpool(AgentStepDetector.from_data)
        app.state.conversations = ConversationAnalyzer(loaded, detector)
        app.state.analyzer = loaded
        try:
            yield
        finally:
            app.state.analyzer = None
            app.state.conversations = None
            if analyzer is None:  # what the app loaded, the app stops (the micro-batcher's worker thread)
                loaded.close()

    app = FastAPI(
        title="CalmFirst",
        summary="Anger level, complaint type, threat and the next step for Chinese customer messages.",
        version="1",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.analyzer = None
    app.state.conversations = None
    install_error_handlers(app)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.method in {"POST", "PUT", "PATCH"}:
            declared = request.headers.get("content-length")
            if declared is not None:
                try:
                    too_big = int(declared) > settings.max_body_bytes
                except ValueError:
                    return JSONResponse(status_code=400, content={"detail": "content-length: not a number"})
            else:
                body = await request.body()
                too_big = len(body) > settings.max_body_bytes
            if too_big:
                return JSONResponse(
                    status_code=413,
                    content={"detail": f"body: larger than the limit of {settings.max_body_bytes} bytes"},
                )
        return await call_next(request)

    for module in (health, labels, analyze, conversations, console):
        app.include_router(module.router)
    return app
