"""gateway routes: its own (route listing, merged OpenAPI, the bus's AsyncAPI) and the catch-all that limits,
checks and proxies.

The docs pages on the merged document come before these, from shared/docs.py.
"""

from __future__ import annotations

import functools
import json
from typing import Any
from urllib.parse import quote

import structlog
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from gateway import metrics
from gateway.openapi import MergedOpenApi
from gateway.proxy import CallContext, Gateway
from gateway.ratelimit import RateLimits, Verdict, tighter
from gateway.routes import check_path
from gateway.schemas import RouteTableOut
from shared.asyncapi import asyncapi_document
from shared.errors import NotFound, PayloadTooLarge, problem

router = APIRouter()

PROXIED_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@router.get("/gateway/routes", response_model=RouteTableOut, tags=["gateway"])
async def list_routes(request: Request) -> RouteTableOut:
    gateway: Gateway = request.app.state.gateway
    return RouteTableOut(routes=gateway.routes.routes)


@router.get("/openapi.json", include_in_schema=False)
async def openapi_document(request: Request) -> JSONResponse:
    """Every proxied route in one document, merged from the services' own (public, like the docs pages)."""
    merged: MergedOpenApi = request.app.state.openapi
    ctx = CallContext.of(request, "/openapi.json", merged.gateway.trusted_proxies)
    document: dict[str, Any] = await merged.document(ctx)
    return JSONResponse(document)


@functools.cache
def _asyncapi_body() -> bytes:
    # Encoded once: the catalogue is code, fixed while the process runs.
    return json.dumps(asyncapi_document(), separators=(",", ":")).encode()


@router.get("/asyncapi.json", include_in_schema=False)
async def asyncapi_json() -> Response:
    """The bus's events (AsyncAPI 3.0), generated from the event catalogue; public, like /openapi.json."""
    return Response(_asyncapi_body(), media_type="application/json")


def _too_many(verdict: Verdict, limit: str) -> Response:
    metrics.RATE_LIMITED.labels(limit).inc()
    who = "this client address" if limit == "address" else "this user"
    return problem(429, "Too many requests", f"Rate limit for {who} exceeded; retry after "
                   f"{verdict.retry_after_secs} s.", "rate-limited", headers=dict(verdict.headers()), limit=limit)


@router.api_route("/{path:path}", methods=PROXIED_METHODS, include_in_schema=False)
async def proxy(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    limits: RateLimits = request.app.state.rate_limits
    request.state.route_label = "unmatched"
    raw = request.scope.get("raw_path")
    raw_path = raw.decode("latin-1") if raw else quote(request.scope["path"])
    path = check_path(raw_path)
    route = gateway.routes.match(request.method, path)
    if route is None or not route.routed:
        # An internal endpoint is answered exactly as a path nobody serves.
        raise NotFound(f"No route for {request.method} {path}.")
    # Metrics by route table entry: the catch-all's own template would lump every service together.
    request.state.route_label = route.prefix
    query = request.scope.get("query_string", b"").decode("latin-1")
    ctx = CallContext.of(request, f"{raw_path}?{query}" if query else raw_path, gateway.trusted_proxies)
    verdict: Verdict | None = None
    if limits.address.enabled and ctx.client_addr is not None:
        # Behind trusted proxies the client they name, so that not everyone shares the proxy's bucket.
        verdict = limits.address.hit(ctx.client_addr)
        if not verdict.allowed:
            return _too_many(verdict, "address")
    length = request.headers.get("content-length", "")
    max_bytes = gateway.settings.max_body_bytes
    if length.isdigit() and int(length) > max_bytes:
        # Refused before a byte of the body is read (and before /validate), as nginx's client_max_body_size.
        raise PayloadTooLarge.over(max_bytes)
    structlog.contextvars.bind_contextvars(upstream=route.app)
    identity: dict[str, str] = {}
    if not route.public:
        answer = await gateway.validate(request, ctx)
        if isinstance(answer, Response):
            return answer
        identity = answer
        if limits.user.enabled:
            user_verdict = limits.user.hit(identity["X-User-Id"])
            if not user_verdict.allowed:
                return _too_many(user_verdict, "user")
            verdict = tighter(verdict, user_verdict)
    response = await gateway.forward(request, route, ctx, identity)
    if verdict is not None:
        response.raw_headers.extend(verdict.raw_headers())
    return response
