"""The API docs pages (Swagger UI, ReDoc) with their scripts and styles served by the app itself, not a CDN."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

# fastapi-offline ships the very files FastAPI's default pages take from cdn.jsdelivr.net
# (swagger-ui-dist@5's bundle and stylesheet, redoc@2's standalone script) and a favicon.
ASSETS_PACKAGE = ("fastapi_offline", "static")
ASSETS_URL = "/docs/assets"


def install_docs(app: FastAPI, *, openapi_url: str, docs_url: str | None, redoc_url: str | None) -> None:
    """Serve Swagger UI at `docs_url` and ReDoc at `redoc_url` (None: not served) on the document at `openapi_url`.

    Their assets are under ASSETS_URL. Install before any catch-all route (the gateway's proxy): routes are
    matched in the order they were added.
    """
    if docs_url is None and redoc_url is None:
        return
    app.mount(ASSETS_URL, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")
    if docs_url is not None:
        _install_swagger_ui(app, openapi_url, docs_url)
    if redoc_url is not None:
        _install_redoc(app, openapi_url, redoc_url)


def _root(request: Request) -> str:
    """Behind a proxy that strips a prefix, every URL the page loads carries it back."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _install_swagger_ui(app: FastAPI, openapi_url: str, docs_url: str) -> None:
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            oauth2_redirect_url=root + oauth2_redirect_url if oauth2_redirect_url else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    # FastAPI routes rather than Starlette's (FastAPI's own pages): metrics label them by path, not "unmatched".
    app.get(docs_url, include_in_schema=False)(swagger_ui)

    if oauth2_redirect_url:

        async def swagger_ui_oauth2_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

        app.get(oauth2_redirect_url, include_in_schema=False)(swagger_ui_oauth2_redirect)


def _install_redoc(app: FastAPI, openapi_url: str, redoc_url: str) -> None:
    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,  # fonts.googleapis.com: ReDoc falls back to the system's fonts
        )

    app.get(redoc_url, include_in_schema=False)(redoc)
