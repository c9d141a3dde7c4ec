"""HTTP API (FastAPI). The model loads in ``lifespan``, never at import time."""

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from data.schema import ANGER_LABELS, COMPLAINT_TYPES, SCHEMA_VERSION
from data.vocab import Flag, values
from service.agent_steps import AgentStepDetector
from service.analyzer import Analyzer, occlusion_explanation
from service.conversation import ConversationAnalyzer, Turn
from service.redact import install_log_redaction, redact
from service.settings import Settings

logger = logging.getLogger(__name__)

Lang = Literal["zh-Hant", "zh-Hans", "en"]
CONSOLE_PAGE = Path(__file__).resolve().parent / "static" / "console.html"


class AnalyzeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(..., description="one customer message")
    lang: Lang | None = Field(None, description="language of next_step; default follows the script")
    explain: bool = Field(False, description="add the phrases that drove the anger score (occlusion)")
    redact: bool = Field(False, description="return the text with personal data masked")

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
    redact: bool = False


class TurnIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["customer", "agent"]
    text: str
    ts: str | int | float | None = None

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text must not be empty")
        return v


class ConversationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | int | None = None
    turns: list[TurnIn] = Field(..., min_length=1)
    lang: Lang | None = None
    redact: bool = False
    explain: bool = Field(False, description="explain the last customer turn's anger score")

    @field_validator("turns")
    @classmethod
    def _has_customer(cls, v: list[TurnIn]) -> list[TurnIn]:
        if not any(t.role == "customer" for t in v):
            raise ValueError("a conversation needs at least one customer turn")
        return v


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

    install_log_redaction()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded: Analyzer = (
            analyzer if analyzer is not None else await run_in_threadpool(Analyzer.from_settings, settings)
        )
        detector = await run_in_threadpool(AgentStepDetector.from_data)
        app.state.conversations = ConversationAnalyzer(loaded, detector)
        app.state.analyzer = loaded
        yield
        app.state.analyzer = None
        app.state.conversations = None

    app = FastAPI(
        title="CalmFirst",
        summary="Anger level, complaint type, threat and the next step for Chinese customer messages.",
        version="1",
        lifespan=lifespan,
    )
    app.state.analyzer = None
    app.state.conversations = None
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
            raise HTTPException(status_code=422, detail=f"{field}: longer than {settings.max_text_chars} characters")

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
            "flags": list(values(Flag)),
            "policy": a.policy.to_dict(),
            "playbook": a.playbook.to_dict(),
            "model": a.model_info,
        }

    @app.post("/v1/analyze")
    def analyze(req: AnalyzeRequest, a: Dep, _: Auth) -> dict[str, Any]:
        check_text(req.text, "text")
        return a.analyze([req.text], ids=[0], lang=req.lang, explain=req.explain, redact=req.redact)[0]

    @app.post("/v1/analyze/batch")
    def analyze_batch(req: BatchRequest, a: Dep, _: Auth) -> dict[str, Any]:
        if len(req.items) > settings.max_batch_items:
            raise HTTPException(
                status_code=422, detail=f"items: more than {settings.max_batch_items} items in one batch"
            )
        for i, item in enumerate(req.items):
            check_text(item.text, f"items.{i}.text")
        ids = [item.id if item.id is not None else i for i, item in enumerate(req.items)]
        return {"results": a.analyze([it.text for it in req.items], ids=ids, lang=req.lang, redact=req.redact)}

    @app.post("/v1/conversations/analyze")
    def analyze_conversation(req: ConversationRequest, request: Request, a: Dep, _: Auth) -> dict[str, Any]:
        if len(req.turns) > settings.max_batch_items:
            raise HTTPException(
                status_code=422, detail=f"turns: more than {settings.max_batch_items} turns in one conversation"
            )
        for i, t in enumerate(req.turns):
            check_text(t.text, f"turns.{i}.text")
        conv: ConversationAnalyzer = request.app.state.conversations
        turns = [Turn(role=t.role, text=t.text, ts=t.ts) for t in req.turns]
        out = conv.analyze(turns, id=req.id, lang=req.lang)
        if req.explain:
            last = max(i for i, t in enumerate(req.turns) if t.role == "customer")
            out["turns"][last]["result"]["explanation"] = occlusion_explanation(a.model, req.turns[last].text)
        if req.redact:
            for ot, t in zip(out["turns"], req.turns, strict=True):
                ot["text"] = redact(t.text)
        return out

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def console() -> HTMLResponse:
        return HTMLResponse(CONSOLE_PAGE.read_text(encoding="utf-8"))

    return app
