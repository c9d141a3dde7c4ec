"""The agent console: one self-contained page that calls the API from the browser."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

CONSOLE_PAGE = Path(__file__).resolve().parent.parent / "static" / "console.html"

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def console() -> HTMLResponse:
    return HTMLResponse(CONSOLE_PAGE.read_text(encoding="utf-8"))
