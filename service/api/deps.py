"""Dependencies of the routes: the settings, the API key check, and the loaded analyzers.

They are ``async def`` on purpose: none of them blocks, and FastAPI runs every plain ``def``
dependency in the thread pool, a round trip per dependency and request (four for
``POST /v1/analyze``, whose route is ``async`` too: ``Analyzer.analyze_one``). On one message that
is measurable next to a forward of a few milliseconds (``make bench``'s c=1 row).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from service.analyzer import Analyzer, ConversationAnalyzer
from service.api.admission import BulkBudget
from service.api.errors import FieldError
from service.api.middleware import is_public, key_matches
from service.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def require_key(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> None:
    """With ``CALMFIRST_API_KEY`` set, a route not in ``public_paths`` wants it in ``x-api-key``.

    ``service.api.middleware.ApiKeyMiddleware`` already guards every path (routes added later too);
    this is the same check (constant time) again, for a route mounted without the middleware.
    """
    if settings.api_key is None or is_public(request.url.path, settings):
        return
    if not key_matches(request.headers.get("x-api-key"), settings.api_key):
        raise HTTPException(status_code=401, detail="x-api-key: missing or wrong API key")


async def get_analyzer(request: Request) -> Analyzer:
    a: Analyzer | None = request.app.state.analyzer
    if a is None:
        raise HTTPException(status_code=503, detail="model not loaded yet")
    return a


async def get_conversations(request: Request, _: Annotated[Analyzer, Depends(get_analyzer)]) -> ConversationAnalyzer:
    conv: ConversationAnalyzer = request.app.state.conversations
    return conv


async def get_bulk_budget(request: Request) -> BulkBudget:
    budget: BulkBudget = request.app.state.bulk_budget
    return budget


def check_text(text: str, field: str, settings: Settings) -> None:
    """Texts over ``max_text_chars`` are a 422 naming the field (the model truncates, the client should know)."""
    if len(text) > settings.max_text_chars:
        raise FieldError(field, f"longer than {settings.max_text_chars} characters")


def check_lang(lang: str | None, analyzer: Analyzer) -> None:
    """A next-step language the playbook in force has no texts for is a 422 naming ``lang`` (it was a 500: a
    contact center may ship a playbook without English)."""
    if (problem := analyzer.playbook.lang_problem(lang)) is not None:
        raise FieldError("lang", f"{str(lang)!r}: {problem}")


def check_count(n: int, field: str, what: str, settings: Settings) -> None:
    if n > settings.max_batch_items:
        raise FieldError(field, f"more than {settings.max_batch_items} {what}")


Auth = Annotated[None, Depends(require_key)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
AnalyzerDep = Annotated[Analyzer, Depends(get_analyzer)]
BulkBudgetDep = Annotated[BulkBudget, Depends(get_bulk_budget)]
ConversationsDep = Annotated[ConversationAnalyzer, Depends(get_conversations)]
