"""Routes of the saga dashboard: the HTML pages and their static files, and the bus's events as they happen
(Server-Sent Events); the data comes from the saga API.

The pages hold no data: their JavaScript logs in through the gateway (`/api/auth/login`), keeps the
access token in sessionStorage and reads `/api/customer-orders` with it, so the dashboard needs no
credentials, session or state of its own and every call it makes is checked like any other client's.

The event stream (`GET /dashboard/api/events/stream`) tells a page when to read again instead of its polling.
An EventSource cannot send an Authorization header, so the page first hands its access token to
`POST /dashboard/api/events/token` (with the header), which sets it as an HttpOnly, SameSite=Strict cookie
sent to the stream's path only; the stream checks that token exactly as any bearer token (signature, expiry,
revocation, the admin role), again at every batch or heartbeat, and ends with an `auth` event when it no
longer passes. No token goes into a URL, where a proxy's access log would keep it.

The stream's frames: `status` first and whenever the bus connection drops or comes back ({"live", "detail"}),
`resync` when the page's queue overflowed, `auth` before it closes for the token, and unnamed messages whose
data is a bus event, the CloudEvent as it was published.
"""

from __future__ import annotations

import html
import json
from collections.abc import AsyncIterator
from functools import cache
from importlib.resources import files
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request
from sse_starlette import EventSourceResponse
from starlette.responses import HTMLResponse, Response

from dashboard.live import LiveFeed, sse_frame
from shared.auth import Identity, TokenVerifier, bearer_token
from shared.errors import DomainError, Forbidden, NotFound, Unauthorized

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


# --- the live event stream ---------------------------------------------------------------------------------------

EVENTS = "/api/events"
EVENTS_PATH = router.prefix + EVENTS  # the cookie's path: sent to the token and stream routes only
STREAM_COOKIE = "cs_dashboard_events"
# A page reconnects this long after its stream dropped (the browser's EventSource does it by itself).
RECONNECT_MS = 2000
# A page whose socket takes no frame for this long is let go (its queue freed): it reconnects when it can.
SEND_TIMEOUT_SECS = 30.0
# A gateway without a feed (the router mounted alone): never live, says so.
_NO_FEED = LiveFeed(None)


async def _admin(verifier: TokenVerifier, token: str) -> Identity:
    identity = await verifier.verify(token)  # 401 when it is not a valid, unrevoked access token
    if not identity.is_admin:
        raise Forbidden("The dashboard's event stream is for admins only.")
    return identity


@router.post(f"{EVENTS}/token", status_code=204)
async def stream_token(request: Request) -> Response:
    """The caller's access token (an admin's) as the cookie the event stream reads."""
    token = bearer_token(request)
    await _admin(request.app.state.verifier, token)
    response = Response(status_code=204, headers={"Cache-Control": "no-store"})
    response.set_cookie(STREAM_COOKIE, token, path=EVENTS_PATH, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.delete(f"{EVENTS}/token", status_code=204)
async def forget_stream_token() -> Response:
    response = Response(status_code=204, headers={"Cache-Control": "no-store"})
    response.delete_cookie(STREAM_COOKIE, path=EVENTS_PATH, httponly=True, samesite="strict")
    return response


@router.get(f"{EVENTS}/stream")
async def event_stream(
    request: Request,
    family: Annotated[list[str] | None, Query(description="Event families to receive (all if none).")] = None,
) -> Response:
    """The bus's events as Server-Sent Events, for an admin (the bearer header, else the cookie set above)."""
    token = request.headers.get("authorization", "")
    token = bearer_token(request) if token else request.cookies.get(STREAM_COOKIE, "")
    if not token:
        raise Unauthorized("The event stream needs an admin's token: POST it to "
                           f"{EVENTS_PATH}/token first, or send it as a bearer token.")
    verifier: TokenVerifier = request.app.state.verifier
    await _admin(verifier, token)
    feed: LiveFeed = getattr(request.app.state, "live_feed", None) or _NO_FEED
    return EventSourceResponse(
        _frames(feed, frozenset(family or ()), verifier, token),
        ping=feed.heartbeat_secs,
        send_timeout=SEND_TIMEOUT_SECS,
        sep="\n",
        headers={"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"},
    )


async def _frames(feed: LiveFeed, families: frozenset[str], verifier: TokenVerifier,
                  token: str) -> AsyncIterator[bytes]:
    yield f"retry: {RECONNECT_MS}\n\n".encode()
    await feed.wanted()
    with feed.listen(families) as listener:
        while True:
            frames = await listener.next_frames(feed.heartbeat_secs)
            try:
                await _admin(verifier, token)  # cached: a dict look-up, the clock and the revocation list
            except DomainError as refused:
                yield sse_frame(json.dumps({"status": refused.status, "detail": refused.detail}).encode(),
                                event="auth")
                return
            for frame in frames:
                yield frame
