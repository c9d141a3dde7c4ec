"""HTTP API (FastAPI). The model loads in ``lifespan``, never at import time."""


import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from data.schema import ANGER_LABELS, COMPLAINT_TYPES, SCHEMA_VERSION
from service.analyzer import Analyzer
from service.settings import Settings

logger = logging.getLogger(__name__)

Lang = Literal["zh-Hant", "zh-Hans", "en"]


class AnalyzeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(..., description="one customer message")
    lang: Lang | None = Field(None, description="language of next_step; default follows the script")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text must not be empty")
        return v


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | int | None = None
    text: str

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text must not be empty")
        return v


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[BatchItem] = Field(..., min_length=1)
    lang: Lang | None = None


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    details = [{"field": _field_name(tuple(e.get("loc", ()))), "message": e.get("msg", "")} for e in errors]
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return JSONResponse(status_code=422, content={"detail": summary, "errors": details})


def create_app(settings: Settings | None = None, *, analyzer: Analyzer | None = None) -> FastAPI:
    """Build the app. ``analyzer`` lets tests inject an already-loaded model."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.analyzer = analyzer or await run_in_threadpool(Analyzer.from_settings, settings)
        yield
        app.state.analyzer = None

    app = FastAPI(
        title="CalmFirst",
        summary="Anger level, complaint type, threat and the next step for Chinese customer messages.",
        version="1",
        lifespan=lifespan,
    )
    app.state.analyzer = None
    app.add_exception_handler(RequestValidationError, _validation_handler)

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

    def require_key(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("x-api-key", "")
        if not secrets.compare_digest(given.encode(), settings.api_key.encode()):
            raise HTTPException(status_code=401, detail="x-api-key: missing or wrong API key")

    def get_analyzer(request: Request) -> Analyzer:
        a: Analyzer | None = request.app.state.analyzer
        if a is None:
            raise HTTPException(status_code=503, detail="model not loaded yet")
        return a

    Auth = Annotated[None, Depends(require_key)]
    Dep = Annotated[Analyzer, Depends(get_analyzer)]

    def check_text(text: str, field: str) -> None:
        if len(text) > settings.max_text_chars:
            raise HTTPException(
                status_code=422, detail=f"{field}: longer than {settings.max_text_chars} characters"
            )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(request: Request) -> JSONResponse:
        a: Analyzer | None = request.app.state.analyzer
        if a is None:
            return JSONResponse(status_code=503, content={"status": "loading"})
        return JSONResponse(content={"status": "ready", "model": a.model_info})

    @app.get("/v1/labels")
    def labels(a: Dep, _: Auth) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "anger_levels": [{"level": i, "label": name} for i, name in enumerate(ANGER_LABELS)],
            "complaint_types": list(COMPLAINT_TYPES),
            "threat": "boolean",
            "flags": ["calm_first", "ready_for_solutions"],
            "policy": a.policy.to_dict(),
            "playbook": a.playbook.to_dict(),
            "model": a.model_info,
        }

    @app.post("/v1/analyze")
    def analyze(req: AnalyzeRequest, a: Dep, _: Auth) -> dict[str, Any]:
        check_text(req.text, "text")
        return a.analyze([req.text], ids=[0], lang=req.lang)[0]

    @app.post("/v1/analyze/batch")
    def analyze_batch(req: BatchRequest, a: Dep, _: Auth) -> dict[str, Any]:
        if len(req.items) > settings.max_batch_items:
            raise HTTPException(
                status_code=422, detail=f"items: more than {settings.max_batch_items} items in one batch"
            )
        for i, item in enumerate(req.items):
            check_text(item.text, f"items.{i}.text")
        ids = [item.id if item.id is not None else i for i, item in enumerate(req.items)]
        return {"results": a.analyze([it.text for it in req.items], ids=ids, lang=req.lang)}

    return app
