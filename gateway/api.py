"""gateway routes: its own route listing, and the catch-all that routes, checks the token and proxies."""

from __future__ import annotations

from urllib.parse import quote

import structlog
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.proxy import CallContext, Gateway
from gateway.routes import check_path
from gateway.schemas import RouteTableOut
from shared.errors import NotFound

router = APIRouter()

PROXIED_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@router.get("/gateway/routes", response_model=RouteTableOut, tags=["gateway"])
async def list_routes(request: Request) -> RouteTableOut:
    gateway: Gateway = request.app.state.gateway
    return RouteTableOut(routes=gateway.routes.routes)


@router.api_route("/{path:path}", methods=PROXIED_METHODS, include_in_schema=False)
async def proxy(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    raw = request.scope.get("raw_path")
    raw_path = raw.decode("latin-1") if raw else quote(request.scope["path"])
    path = check_path(raw_path)
    route = gateway.routes.match(request.method, path)
    if route is None:
        raise NotFound(f"No route for {request.method} {path}.")
    query = request.scope.get("query_string", b"").decode("latin-1")
    ctx = CallContext.of(request, f"{raw_path}?{query}" if query else raw_path)
    structlog.contextvars.bind_contextvars(trace_id=ctx.traceparent.split("-")[1], upstream=route.app)
    identity: dict[str, str] = {}
    if not route.public:
        verdict = await gateway.validate(request, ctx)
        if isinstance(verdict, Response):
            return verdict
        identity = verdict
    return await gateway.forward(request, route, ctx, identity)
