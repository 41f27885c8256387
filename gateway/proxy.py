"""Forwarding to the services: header rules, forward-auth against /validate, bodies streamed both ways."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass

import aiohttp
import httpx
import structlog
from multidict import CIMultiDict
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from yarl import URL

from gateway import metrics
from gateway.resilience import Breakers, BreakerState, may_resend, retry_on_status
from gateway.routes import Route, RouteTable
from gateway.settings import Settings
from shared.auth import ServiceTokens
from shared.errors import DomainError, PayloadTooLarge, ServiceUnavailable
from shared.forwarded import TrustedProxies
from shared.logging import REQUEST_ID_HEADER, request_id_of
from shared.registry_client import Instance, RegistryClient, RoundRobin
from shared.tracing import new_traceparent, valid_traceparent

log = structlog.get_logger(__name__)

# RFC 9110 §7.6.1 plus the non-standard Proxy-Connection; each hop sets these for itself.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})
# Set by the gateway itself; a client's value is dropped (a trusted proxy's X-Forwarded-For is carried over in
# CallContext.forwarded_for). Host is the instance's (aiohttp sets it from the URL): a client's would make the
# service build its redirects to wherever the client names (the client's Host goes as X-Forwarded-Host).
_GATEWAY_SET = frozenset({
    "host", "x-request-id", "traceparent", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
    # The gateway's own credential towards auth_service (Gateway.forward): never a client's.
    "x-gateway-authorization",
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
# The largest response line or header field read from an upstream (aiohttp's default is 8190 bytes): percent
# encoding at most triples a path, and the gateway takes at most MAX_HEADER_BYTES (32 KiB) of request head.
_UPSTREAM_MAX_FIELD_BYTES = 128 * 1024


class BadGateway(DomainError):
    status, title, type_slug = 502, "Bad gateway", "bad-gateway"


class GatewayTimeout(DomainError):
    status, title, type_slug = 504, "Gateway timeout", "gateway-timeout"


class BodyIncomplete(DomainError):
    status, title, type_slug = 400, "Bad request", "body-incomplete"


# Fields whose meaning is end to end: a Connection header listing one does not make it hop-by-hop (a client
# could otherwise strip what the gateway or the service relies on, e.g. `Connection: host`).
_END_TO_END = frozenset({
    "host", "content-length", "content-type", "content-encoding", "authorization", "idempotency-key", "prefer",
    "accept", "location", "www-authenticate", "retry-after", "cache-control",
})


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Header names a sender listed in Connection: hop-by-hop by declaration (RFC 9110 §7.6.1)."""
    return {
        token.strip().lower()
        for name, value in headers
        if name == "connection"
        for token in value.split(",")
        if token.strip()
    } - _END_TO_END


def _decoded(raw_headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in raw_headers]


@dataclass(frozen=True)
class CallContext:
    """What the gateway adds to every call it makes for one client request."""

    request_id: str
    traceparent: str
    # The client (the peer, or the one a trusted proxy names) and the X-Forwarded-For the services get.
    client_addr: str | None
    forwarded_for: str | None
    scheme: str
    path_qs: str

    @classmethod
    def of(cls, request: Request, path_qs: str, trusted: TrustedProxies) -> CallContext:
        # The logging middleware already chose the id (the client's or a new one) and returns it.
        request_id = getattr(request.state, "request_id", "") or request_id_of(request.headers.get(REQUEST_ID_HEADER))
        # Chosen by the shared middleware too (and logged there): the caller's, the tracing span's, or new.
        traceparent = getattr(request.state, "traceparent", "")
        if not valid_traceparent(traceparent):
            client_tp = request.headers.get("traceparent", "")
            traceparent = client_tp if valid_traceparent(client_tp) else new_traceparent()
        peer = request.client.host if request.client else None
        # The header is read only when someone may be believed: the common case skips it.
        chain = request.headers.getlist("x-forwarded-for") if trusted else ()
        client_addr, forwarded_for = trusted.resolve(peer, chain)
        return cls(request_id, traceparent, client_addr, forwarded_for, request.scope.get("scheme", "http"), path_qs)


def upstream_request_headers(
    raw_headers: Iterable[tuple[bytes, bytes]], ctx: CallContext, identity: Mapping[str, str]
) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop and identity headers, plus tracing, forwarding and identity."""
    headers = _decoded(raw_headers)
    listed = _connection_tokens(headers)
    out: CIMultiDict[str] = CIMultiDict()
    host = ""
    keep_tracestate = False
    for name, value in headers:
        if name == "traceparent":
            keep_tracestate = value == ctx.traceparent
        elif name == "host":
            host = value
        if name in HOP_BY_HOP or name in listed or name in _GATEWAY_SET or name.startswith(_IDENTITY_PREFIX):
            continue
        out.add(name, value)
    if not keep_tracestate:
        out.popall("tracestate", None)
    out[REQUEST_ID_HEADER] = ctx.request_id
    out["traceparent"] = ctx.traceparent
    if ctx.forwarded_for:
        out["X-Forwarded-For"] = ctx.forwarded_for
    out["X-Forwarded-Proto"] = ctx.scheme
    if host:
        out["X-Forwarded-Host"] = host
    for name, value in identity.items():
        out[name] = value
    return out


def client_response_headers(raw_headers: Iterable[tuple[bytes, bytes]], origin: str = "") -> list[tuple[bytes, bytes]]:
    """The upstream's response headers minus hop-by-hop ones, as ASGI raw headers (duplicates kept).

    A Location on the instance's own `origin` (a service's redirect, built from the Host it was sent) becomes
    a path on the gateway, as nginx's `proxy_redirect default` does: the internal address never leaves.
    """
    headers = _decoded(raw_headers)
    listed = _connection_tokens(headers)
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name in HOP_BY_HOP or name in listed or name in _RESPONSE_DROPPED:
            continue
        if name == "location" and origin and value.startswith(origin):
            value = value[len(origin):]
            if not value.startswith("/"):
                value = "/" + value
        out.append((name.encode("latin-1"), value.encode("latin-1")))
    return out


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
        # A service may echo what it was sent (a redirect's Location carries the path): well above what the
        # gateway accepts from a client (MAX_HEADER_BYTES), so a client's long request never makes an answer
        # unreadable — which would count against the instance's breaker for the client's doing.
        max_line_size=_UPSTREAM_MAX_FIELD_BYTES,
        max_field_size=_UPSTREAM_MAX_FIELD_BYTES,
        auto_decompress=False,
        # A shared jar would hand one user's cookies to the next request: never store any.
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=_SKIP_AUTO_HEADERS,
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
    )


class _BodyStopped(Exception):
    """Raised inside the body iterator: aiohttp then aborts the upstream request instead of ending it cleanly."""


class RequestBody:
    """The client's body streamed to aiohttp, counted on the way: past `max_bytes` the upload is cut off.

    Remembers whether any of it was consumed (a started stream cannot be sent again) and whether it failed on
    the client's side (too large, or the client went away), which is no fault of the upstream.
    """

    def __init__(self, request: Request, max_bytes: int) -> None:
        self._request = request
        self.max_bytes = max_bytes
        self.started = False
        self.too_large = False
        self.client_gone = False
        self.size = 0

    @property
    def failed_here(self) -> bool:
        return self.too_large or self.client_gone

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        try:
            async for chunk in self._request.stream():
                if not chunk:
                    continue
                self.size += len(chunk)
                if self.size > self.max_bytes:
                    self.too_large = True
                    raise _BodyStopped("request body over the limit")
                yield chunk
        except ClientDisconnect:
            self.client_gone = True
            raise _BodyStopped("client went away during the upload") from None

    def refusal(self) -> DomainError:
        if self.too_large:
            return PayloadTooLarge.over(self.max_bytes)
        return BodyIncomplete("The request body ended before it was complete.")


def _has_body(request: Request) -> bool:
    headers = request.headers
    return "transfer-encoding" in headers or headers.get("content-length", "0") not in ("", "0")


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


Body = bytes | RequestBody | None


def _small(upstream: aiohttp.ClientResponse) -> bool:
    """An answer read whole before it is passed on (larger or unsized ones are streamed)."""
    return upstream.content_length is not None and upstream.content_length <= _SMALL_BODY


class Gateway:
    """The request path: forward-auth against AUTH-SERVICE, then the call to an instance of the owning app.

    Every upstream call goes through `_send`: round robin over the UP instances whose circuit breaker lets
    them be chosen, failover on a refused connection, and re-sends of repeatable requests on 502/503.
    """

    def __init__(self, settings: Settings, session: aiohttp.ClientSession, registry: RegistryClient,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`clock`: what the breakers' cool-downs are counted by (a test moves its own)."""
        self.settings = settings
        self.session = session
        self.registry = registry
        # The gateway's own service token: auth_service believes the X-Forwarded-For of a login only with it.
        self.tokens = ServiceTokens(settings, registry)
        self.routes = RouteTable(settings.routes)
        self.trusted_proxies = TrustedProxies(settings.trusted_proxies)
        self.breakers = Breakers(settings.breaker_failure_threshold, settings.breaker_cooldown_secs,
                                 on_change=self._breaker_changed, on_create=metrics.breaker_created,
                                 on_drop=metrics.breaker_dropped, clock=clock)
        self._failure_statuses = frozenset(settings.breaker_failure_statuses)
        self._turns = RoundRobin()
        self._pruned_at: dict[str, float] = {}

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
        started = time.perf_counter()
        outcome = "error"
        try:
            async with await self._send(app, "GET", self.settings.validate_path, headers, None,
                                        self.settings.validate_timeout_secs, resend=True) as answer:
                try:
                    body = await answer.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise BadGateway(f"{app} broke off its /validate answer.", service=app) from exc
                if 200 <= answer.status < 300:
                    identity = {name: answer.headers[name] for name in IDENTITY_HEADERS if name in answer.headers}
                    if "X-User-Id" not in identity:
                        # Fail closed: a pass without an identity would reach the service anonymous.
                        raise BadGateway(f"{app} accepted the token but named no user.", service=app)
                    outcome = "pass"
                    return identity
                outcome = "refused"
                passed = {k: answer.headers[k] for k in ("Content-Type", "WWW-Authenticate", "Retry-After")
                          if k in answer.headers}
                return Response(body, status_code=answer.status, headers=passed)
        finally:
            metrics.observe_validate(outcome, time.perf_counter() - started)

    async def forward(self, request: Request, route: Route, ctx: CallContext, identity: Mapping[str, str]) -> Response:
        """Proxy the request to the route's app and stream the answer back."""
        headers = upstream_request_headers(request.headers.raw, ctx, identity)
        if route.app == self.settings.auth_app:
            await self._authenticate_to_auth(headers)
        resend = may_resend(request.method, headers)
        body: Body = None
        if _has_body(request):
            length = _content_length(request)
            if resend and length is not None and length <= self.settings.retry_body_max_bytes:
                # Small enough to hold, so a 502/503 can be answered by sending it to another instance.
                body = await self._read_small_body(request)
            else:
                body = RequestBody(request, self.settings.max_body_bytes)
        upstream = await self._send(route.app, request.method, ctx.path_qs, headers, body, route.timeout_secs,
                                    resend=resend)
        response_headers = client_response_headers(upstream.raw_headers, str(upstream.url.origin()))
        if _small(upstream):
            content = await upstream.read()  # in memory already (_send)
            upstream.release()
            response: Response = Response(content, status_code=upstream.status)
        else:
            response = StreamingResponse(_stream(upstream, route.app), status_code=upstream.status)
        response.raw_headers = response_headers
        return response

    async def _authenticate_to_auth(self, headers: CIMultiDict[str]) -> None:
        """X-Gateway-Authorization: the gateway's service token, so auth_service may believe its X-Forwarded-For.
        Without one (auth_service unreachable for it) the call goes on and auth counts the gateway as the client."""
        token = self.tokens.current()
        if token is None:
            try:
                token = await self.tokens.token()
            except (DomainError, httpx.HTTPError) as exc:
                log.warning("no service token for the gateway", error=repr(exc))
                return
        headers["X-Gateway-Authorization"] = f"Bearer {token}"

    async def get_json(self, app: str, path: str, ctx: CallContext, timeout_secs: float) -> object:
        """A JSON document from an instance of `app` (the gateway's own use: the services' OpenAPI documents)."""
        headers = {REQUEST_ID_HEADER: ctx.request_id, "traceparent": ctx.traceparent, "Accept": "application/json"}
        async with await self._send(app, "GET", path, headers, None, timeout_secs, resend=True) as answer:
            if answer.status != 200:
                raise BadGateway(f"{app} answered {path} with {answer.status}.", service=app)
            try:
                return await answer.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise BadGateway(f"{app} sent no JSON for {path}.", service=app) from exc

    async def _read_small_body(self, request: Request) -> bytes:
        try:
            return await request.body()
        except ClientDisconnect:
            raise BodyIncomplete("The request body ended before it was complete.") from None

    async def _send(
        self,
        app: str,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        body: Body,
        read_timeout: float,
        *,
        resend: bool,
    ) -> aiohttp.ClientResponse:
        """Send to an UP instance whose breaker allows it; on failure move on to another where that is safe.

        A refused connection moves on for any method (nothing was sent) while no byte of a streamed body has
        gone. A dropped connection or a 502/503 answer is sent again only when `resend` (the request may be
        repeated) and the body is held in memory, at most `retry_attempts` times, each to an instance not yet
        tried; with none left, the upstream's own 502/503 is returned. No UP instance, or none reachable →
        503; no answer within `read_timeout` → 504; a broken answer → 502.
        """
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.settings.connect_timeout_secs, sock_read=read_timeout
        )
        tried: set[str] = set()
        resent = 0
        while True:
            instance = self._choose(app, tried)
            tried.add(instance.instance_id)
            breaker = self.breakers.get(app, instance.instance_id)
            url = URL(instance.base_url + path_qs, encoded=True)
            streamed = body if isinstance(body, RequestBody) else None
            replayable = resend and streamed is None and resent < self.settings.retry_attempts
            started = time.perf_counter()
            try:
                upstream = await self.session.request(
                    method, url, headers=headers, data=streamed.chunks() if streamed is not None else body,
                    allow_redirects=False, timeout=timeout,
                )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # Connection not established, so nothing reached the upstream: another instance is safe.
                self._attempt_failed(app, instance.instance_id, "connect_error", started, exc)
                if (streamed is not None and streamed.started) or len(tried) >= self.settings.connect_attempts \
                        or not self._has_another(app, tried):
                    raise ServiceUnavailable(f"{app} cannot be reached.", service=app) from exc
                metrics.UPSTREAM_RETRIES.labels(app, "connect_error").inc()
                continue
            except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
                if streamed is not None and streamed.failed_here:
                    raise streamed.refusal() from exc
                self._attempt_failed(app, instance.instance_id, "timeout", started, exc)
                raise GatewayTimeout(f"{app} did not answer within {read_timeout:g} s.", service=app) from exc
            except aiohttp.ClientError as exc:
                if streamed is not None and streamed.failed_here:
                    raise streamed.refusal() from exc
                self._attempt_failed(app, instance.instance_id, "error", started, exc)
                # Connected, then lost before an answer: the upstream may have acted on it.
                if replayable and isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError) \
                        and self._has_another(app, tried):
                    resent += 1
                    metrics.UPSTREAM_RETRIES.labels(app, "disconnected").inc()
                    continue
                raise BadGateway(f"{app} answered with a broken response.", service=app) from exc
            status = upstream.status
            metrics.observe_upstream(app, str(status), time.perf_counter() - started)
            if streamed is not None and streamed.failed_here:
                # It answered before the cut-off body was complete; the client still gets the refusal.
                upstream.close()
                raise streamed.refusal()
            if status in self._failure_statuses:
                breaker.record_failure()
            else:
                breaker.record_success()
            if replayable and retry_on_status(status) and self._has_another(app, tried):
                log.warning("upstream refused; sending to another instance", app=app,
                            instance=instance.instance_id, status=status)
                upstream.release()
                resent += 1
                metrics.UPSTREAM_RETRIES.labels(app, f"status_{status}").inc()
                continue
            if _small(upstream):
                # A small answer is read here, inside the loop (the callers read it from memory): an instance
                # that dies between its head and its body is one more failure, not the client's 502.
                try:
                    await upstream.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    upstream.close()
                    self._attempt_failed(app, instance.instance_id, "broken_answer", started, exc)
                    if replayable and self._has_another(app, tried):
                        resent += 1
                        metrics.UPSTREAM_RETRIES.labels(app, "broken_answer").inc()
                        continue
                    raise BadGateway(f"{app} broke off its answer.", service=app) from exc
            return upstream

    def _attempt_failed(self, app: str, instance_id: str, outcome: str, started: float, exc: Exception) -> None:
        metrics.observe_upstream(app, outcome, time.perf_counter() - started)
        self.breakers.get(app, instance_id).record_failure()
        log.warning("upstream attempt failed", app=app, instance=instance_id, outcome=outcome, error=repr(exc))

    def _untried(self, app: str, tried: set[str]) -> list[Instance]:
        """UP instances not tried yet (their breakers renewed for any that registered anew)."""
        instances = self.registry.instances(app)
        self._prune_breakers(app, instances)
        breakers = self.breakers
        untried = [i for i in instances if i.instance_id not in tried]
        for instance in untried:
            breakers.get(app, instance.instance_id, instance.registered_ms)
        return untried

    def _has_another(self, app: str, tried: set[str]) -> bool:
        return bool(self._untried(app, tried))

    def _choose(self, app: str, tried: set[str]) -> Instance:
        """Round robin over the instances whose breaker lets a request through; when every breaker is open,
        the instance that rested longest at once, as a half-open trial (a 503 only when none is left to try)."""
        untried = self._untried(app, tried)
        if not untried:
            detail = f"{app} cannot be reached." if tried else f"No UP instance of {app} is registered."
            raise ServiceUnavailable(detail, service=app)
        breakers = self.breakers
        usable = [i for i in untried if breakers.get(app, i.instance_id).available()]
        if not usable:
            rested = min(untried, key=lambda i: breakers.get(app, i.instance_id).opened_at)
            breakers.get(app, rested.instance_id).begin_trial()
            return rested
        instance = self._turns.pick(app, usable)
        breakers.get(app, instance.instance_id).begin()
        return instance

    def _prune_breakers(self, app: str, instances: list[Instance]) -> None:
        # Instances that left the registry take their breakers (and metric series) with them; once a minute.
        now = time.monotonic()
        pruned_at = self._pruned_at.get(app)
        if pruned_at is None or now - pruned_at >= 60:
            self._pruned_at[app] = now
            self.breakers.prune(app, [i.instance_id for i in instances])

    def _breaker_changed(self, app: str, instance_id: str, state: BreakerState) -> None:
        metrics.breaker_changed(app, instance_id, state)
        log.warning("circuit breaker", app=app, instance=instance_id, state=state.name.lower())


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
