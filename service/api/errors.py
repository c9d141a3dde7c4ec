"""One error format for every 422: a summary naming the field(s), and the list of problems.

Both pydantic's request validation and the service's own limits (text too long, too many items)
answer ``{"detail": "field: message; ...", "errors": [{"field", "message"}, ...]}``, so a client
parses one shape. Other client errors (400, 401, 413, 415, 503) answer ``{"detail": "..."}``.

At most :data:`MAX_PROBLEMS` problems are listed (a 100,000-item batch of bad items must not get a
100,000-entry answer); the summary then says how many more there were. Field names and messages
are made printable (a key holding a lone surrogate is shown escaped).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.api.schemas import ErrorResponse, FieldProblem
from service.text import printable

#: The most problems one 422 lists.
MAX_PROBLEMS = 20


class FieldError(Exception):
    """A request field the service rejects after parsing (a configured limit); answered as a 422."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def field_name(loc: Sequence[Any]) -> str:
    """``items.1.text`` from pydantic's location tuple (without the leading ``body``)."""
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def problems_response(problems: Sequence[FieldProblem]) -> JSONResponse:
    shown = [FieldProblem(field=printable(p.field), message=printable(p.message)) for p in problems[:MAX_PROBLEMS]]
    summary = "; ".join(f"{p.field}: {p.message}" for p in shown)
    if len(problems) > len(shown):
        summary += f"; and {len(problems) - len(shown)} more problems"
    body = ErrorResponse(detail=summary, errors=shown)
    return JSONResponse(status_code=422, content=body.model_dump(mode="json"))


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return problems_response(
        [FieldProblem(field=field_name(e.get("loc", ())), message=e.get("msg", "")) for e in exc.errors()]
    )


async def _field_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FieldError)
    return problems_response([FieldProblem(field=exc.field, message=exc.message)])


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(FieldError, _field_error_handler)
