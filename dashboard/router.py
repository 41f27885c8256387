"""Routes of the saga dashboard: the HTML pages and their static files; the data comes from the saga API.

The pages hold no data: their JavaScript logs in through the gateway (`/api/auth/login`), keeps the
access token in sessionStorage and reads `/api/customer-orders` with it, so the dashboard needs no
credentials, session or state of its own and every call it makes is checked like any other client's.
"""

from __future__ import annotations

import html
from functools import cache
from importlib.resources import files
from uuid import UUID

from fastapi import APIRouter
from starlette.responses import HTMLResponse, Response

from shared.errors import NotFound

router = APIRouter(prefix="/dashboard", tags=["dashboard"], include_in_schema=False)

_PACKAGE = files("dashboard")
_MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
# The pages load only their own scripts and styles and talk only to their own origin; no inline
# script runs, so text from the API (errors, addresses) can never become code.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@cache
def _template(name: str) -> str:
    """A page with the bar and login form every page shares (_chrome.html) in place of {{chrome}}."""
    templates = _PACKAGE / "templates"
    chrome = (templates / "_chrome.html").read_text(encoding="utf-8").split("\n", 1)[1].strip()
    return (templates / name).read_text(encoding="utf-8").replace("{{chrome}}", chrome)


@cache
def static_files() -> dict[str, bytes]:
    """Every file under static/, by name (read once: the set is fixed when the package is installed)."""
    return {entry.name: entry.read_bytes() for entry in (_PACKAGE / "static").iterdir()
            if entry.is_file() and entry.name.endswith(tuple(_MEDIA_TYPES))}


def _page(name: str, **values: str) -> HTMLResponse:
    body = _template(name)
    for key, value in values.items():
        body = body.replace("{{" + key + "}}", html.escape(value, quote=True))
    return HTMLResponse(body, headers={**_SECURITY_HEADERS, "Cache-Control": "no-store"})


@router.get("")
@router.get("/")
async def saga_list_page() -> HTMLResponse:
    return _page("sagas.html")


@router.get("/sagas/{saga_id}")
async def saga_page(saga_id: str) -> HTMLResponse:
    try:
        canonical = str(UUID(saga_id))
    except ValueError:
        raise NotFound(f"Saga {saga_id} does not exist.") from None
    return _page("saga.html", saga_id=canonical)


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    content = static_files().get(name)
    if content is None:
        raise NotFound(f"No dashboard file {name}.")
    media_type = _MEDIA_TYPES[name[name.rindex("."):]]
    return Response(content, media_type=media_type,
                    headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"})
