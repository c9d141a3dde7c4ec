"""``/docs`` (Swagger UI) and ``/redoc`` from assets installed with the package, never from a CDN.

FastAPI's own pages load Swagger UI and ReDoc from jsDelivr, so on a contact center's closed
network they render blank. The ``fastapi-offline`` package (MIT, a dependency) ships the same
assets (``swagger-ui-bundle.js``, ``swagger-ui.css``, ``redoc.standalone.js``, a favicon); they
are served from ``/static-docs`` and the two pages point there. ReDoc is served without Google
Fonts for the same reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

if TYPE_CHECKING:
    from fastapi import FastAPI

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
STATIC_URL = "/static-docs"
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def assets_dir() -> Path:
    """The folder of the installed Swagger UI / ReDoc assets."""
    import fastapi_offline

    path = Path(fastapi_offline.__file__).resolve().parent / "static"
    missing = [a for a in ASSETS if not (path / a).is_file()]
    if missing:  # pragma: no cover - a broken install
        raise FileNotFoundError(f"API docs assets missing from {path}: {missing}")
    return path


def install_docs(app: FastAPI) -> None:
    """Mount the assets and serve ``/docs`` and ``/redoc`` from them (create the app with ``docs_url=None``)."""
    app.mount(STATIC_URL, StaticFiles(directory=assets_dir()), name="static-docs")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_redirect}",
            swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png",
            with_google_fonts=False,
        )
