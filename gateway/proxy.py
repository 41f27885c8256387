"""Forwarding to the services: header rules, forward-auth against /validate, bodies streamed both ways."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass

import aiohttp
import structlog
from multidict import CIMultiDict
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from yarl import URL

from gateway.routes import Route, RouteTable
from gateway.settings import Settings
from shared.errors import DomainError, ServiceUnavailable
from shared.logging import REQUEST_ID_HEADER
from shared.registry_client import Instance, RegistryClient

log = structlog.get_logger(__name__)

# RFC 9110 §7.6.1 plus the non-standard Proxy-Connection; each hop sets these for itself.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})
# Set by the gateway itself; a client's value is dropped (X-Forwarded-For is appended to, not dropped).
_GATEWAY_SET = frozenset({
    "x-request-id", "traceparent", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
    # Answered by this hop (uvicorn sends the 100 once the body is read).
    "expect",
})
# The gateway's uvicorn adds its own; an upstream's copy would be a duplicate.
_RESPONSE_DROPPED = frozenset({"date", "server"})
IDENTITY_HEADERS = ("X-User-Id", "X-User-Roles", "X-User-Email")
_IDENTITY_PREFIX = "x-user-"
# aiohttp would otherwise invent these; the upstream must see only what the client sent.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# A response with a known length up to this size is read whole (cheaper than a streamed response).
_SMALL_BODY = 64 * 1024

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


class BadGateway(DomainError):
    status, title, type_slug = 502, "Bad gateway", "bad-gateway"


class GatewayTimeout(DomainError):
    status, title, type_slug = 504, "Gateway timeout", "gateway-timeout"


def valid_traceparent(value: str) -> bool:
    """W3C Trace Context: version 00 format, not version ff, trace and parent ids not all zero."""
    match = _TRACEPARENT.match(value)
    if match is None:
        return False
    version, trace_id, parent_id = match.groups()
    return version != "ff" and trace_id != "0" * 32 and parent_id != "0" * 16


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Header names a sender listed in Connection: hop-by-hop by declaration (RFC 9110 §7.6.1)."""
    return {
        token.strip().lower()
        for name, value in headers
        if name == "connection"
        for token in value.split(",")
        if token.strip()
    }


def _decoded(raw_headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in raw_headers]


@dataclass(frozen=True)
class CallContext:
    """What the gateway adds to every call it makes for one client request."""

    request_id: str
    traceparent: str
    client_addr: str | None
    scheme: str
    path_qs: str

    @classmethod
    def of(cls, request: Request, path_qs: str) -> CallContext:
        # The logging middleware already chose the id (the client's or a new one) and returns it.
        request_id = (
            getattr(request.state, "request_id", "") or request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        )
        client_tp = request.headers.get("traceparent", "")
        traceparent = client_tp if valid_traceparent(client_tp) else new_traceparent()
        client = request.client
        return cls(request_id, traceparent, client.host if client else None, request.scope.get("scheme", "http"),
                   path_qs)


def upstream_request_headers(
    raw_headers: Iterable[tuple[bytes, bytes]], ctx: CallContext, identity: Mapping[str, str]
) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop and identity headers, plus tracing, forwarding and identity."""
    headers = _decoded(raw_headers)
    listed = _connection_tokens(headers)
    out: CIMultiDict[str] = CIMultiDict()
    forwarded_for: list[str] = []
    host = ""
    keep_tracestate = False
    for name, value in headers:
        if name == "x-forwarded-for":
            forwarded_for.append(value)
        elif name == "traceparent":
            keep_tracestate = value == ctx.traceparent
        elif name == "host":
            host = value
        if name in HOP_BY_HOP or name in listed or name in _GATEWAY_SET or name.startswith(_IDENTITY_PREFIX):
            continue
        out.add(name, value)
    if not keep_tracestate:
        out.popall("tracestate", None)
    if ctx.client_addr:
        forwarded_for.append(ctx.client_addr)
    out[REQUEST_ID_HEADER] = ctx.request_id
    out["traceparent"] = ctx.traceparent
    if forwarded_for:
        out["X-Forwarded-For"] = ", ".join(forwarded_for)
    out["X-Forwarded-Proto"] = ctx.scheme
    if host:
        out["X-Forwarded-Host"] = host
    for name, value in identity.items():
        out[name] = value
    return out


def client_response_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers minus hop-by-hop ones, as ASGI raw headers (duplicates kept)."""
    headers = _decoded(raw_headers)
    listed = _connection_tokens(headers)
    return [
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in headers
        if name not in HOP_BY_HOP and name not in listed and name not in _RESPONSE_DROPPED
    ]


def new_client_session(settings: Settings) -> aiohttp.ClientSession:
    """The process's one upstream client: a keep-alive pool, no cookie jar, bodies passed through as sent."""
    connector = aiohttp.TCPConnector(
        limit=settings.upstream_pool_size,
        limit_per_host=0,
        # Below uvicorn's 5 s keep-alive, so the gateway never reuses a connection the upstream is closing.
        keepalive_timeout=settings.upstream_keepalive_secs,
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        # A shared jar would hand one user's cookies to the next request: never store any.
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=_SKIP_AUTO_HEADERS,
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
    )


class RequestBody:
    """The client's body as an async iterator for aiohttp; remembers whether any of it was consumed."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self.started = False

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        async for chunk in self._request.stream():
            if chunk:
                yield chunk


def _has_body(request: Request) -> bool:
    headers = request.headers
    return "transfer-encoding" in headers or headers.get("content-length", "0") not in ("", "0")


class Gateway:
    """The request path: forward-auth against AUTH-SERVICE, then the call to an instance of the owning app."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession, registry: RegistryClient) -> None:
        self.settings = settings
        self.session = session
        self.registry = registry
        self.routes = RouteTable(settings.routes)

    async def validate(self, request: Request, ctx: CallContext) -> dict[str, str] | Response:
        """Ask /validate (forward-auth). 2xx → the identity headers; anything else → auth's answer as it is."""
        headers = {
            REQUEST_ID_HEADER: ctx.request_id,
            "traceparent": ctx.traceparent,
            # As Traefik ForwardAuth does: lets auth decide per method and path if it wants to.
            "X-Forwarded-Method": request.method,
            "X-Forwarded-Uri": ctx.path_qs,
        }
        authorization = request.headers.get("authorization")
        if authorization is not None:
            headers["Authorization"] = authorization
        app = self.settings.auth_app
        async with await self._send(app, "GET", self.settings.validate_path, headers, None,
                                    self.settings.validate_timeout_secs) as answer:
            try:
                body = await answer.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise BadGateway(f"{app} broke off its /validate answer.", service=app) from exc
            if 200 <= answer.status < 300:
                identity = {name: answer.headers[name] for name in IDENTITY_HEADERS if name in answer.headers}
                if "X-User-Id" not in identity:
                    # Fail closed: a pass without an identity would reach the service anonymous.
                    raise BadGateway(f"{app} accepted the token but named no user.", service=app)
                return identity
            passed = {k: answer.headers[k] for k in ("Content-Type", "WWW-Authenticate", "Retry-After")
                      if k in answer.headers}
            return Response(body, status_code=answer.status, headers=passed)

    async def forward(self, request: Request, route: Route, ctx: CallContext, identity: Mapping[str, str]) -> Response:
        """Proxy the request to the route's app and stream the answer back."""
        headers = upstream_request_headers(request.headers.raw, ctx, identity)
        body = RequestBody(request) if _has_body(request) else None
        upstream = await self._send(route.app, request.method, ctx.path_qs, headers, body, route.timeout_secs)
        response_headers = client_response_headers(upstream.raw_headers)
        length = upstream.content_length
        if length is not None and length <= _SMALL_BODY:
            try:
                content = await upstream.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                upstream.close()
                raise BadGateway(f"{route.app} broke off its answer.", service=route.app) from exc
            upstream.release()
            response: Response = Response(content, status_code=upstream.status)
        else:
            response = StreamingResponse(_stream(upstream, route.app), status_code=upstream.status)
        response.raw_headers = response_headers
        return response

    async def _send(
        self,
        app: str,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        body: RequestBody | None,
        read_timeout: float,
    ) -> aiohttp.ClientResponse:
        """Send to an UP instance; a refused connection moves on to another instance while no body was sent.

        No UP instance or none reachable → 503; no answer within `read_timeout` → 504; a broken answer → 502.
        """
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.settings.connect_timeout_secs, sock_read=read_timeout
        )
        tried: set[str] = set()
        while True:
            instance = self._choose(app, tried)
            url = URL(instance.base_url + path_qs, encoded=True)
            try:
                return await self.session.request(
                    method, url, headers=headers, data=body.chunks() if body is not None else None,
                    allow_redirects=False, timeout=timeout,
                )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # Connection not established, so nothing reached the upstream: another instance is safe.
                tried.add(instance.instance_id)
                log.warning("upstream unreachable", app=app, instance=instance.instance_id, error=repr(exc))
                if (body is not None and body.started) or len(tried) >= self.settings.connect_attempts:
                    raise ServiceUnavailable(f"{app} cannot be reached.", service=app) from exc
            except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
                log.warning("upstream timeout", app=app, instance=instance.instance_id, timeout_secs=read_timeout)
                raise GatewayTimeout(f"{app} did not answer within {read_timeout:g} s.", service=app) from exc
            except aiohttp.ClientError as exc:
                log.warning("upstream failed", app=app, instance=instance.instance_id, error=repr(exc))
                raise BadGateway(f"{app} answered with a broken response.", service=app) from exc

    def _choose(self, app: str, tried: set[str]) -> Instance:
        try:
            return self.registry.choose(app, exclude=frozenset(tried))
        except ServiceUnavailable:
            if tried:
                raise ServiceUnavailable(f"{app} cannot be reached.", service=app) from None
            raise


async def _stream(upstream: aiohttp.ClientResponse, app: str) -> AsyncIterator[bytes]:
    """The upstream's body as it arrives. A break mid-way aborts the client's connection (never a clean end)."""
    complete = False
    try:
        async for chunk in upstream.content.iter_any():
            yield chunk
        complete = True
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("upstream response broke off", app=app, error=repr(exc))
        raise
    finally:
        if complete:
            upstream.release()
        else:
            upstream.close()
