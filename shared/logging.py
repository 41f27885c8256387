"""Structured JSON logs with structlog; every line of a request carries its request id and trace id."""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import problem
from shared.metrics import observe_request
from shared.tracing import request_traceparent

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's request id is kept only if it looks like one (a UUID, a ULID, an AWS trace id…): it is logged and
# echoed in a response header, so an unbounded one could make the answer itself unsendable.
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:=+/-]{0,127}")


def request_id_of(value: str | None) -> str:
    """The caller's request id if it is valid, else a new one: never the raw value of a bad one."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


def configure_logging(service: str, level: str = "INFO", json: bool = True) -> None:
    """Render both structlog and stdlib logging with one JSON renderer on stderr.

    structlog's own lines (every request's, the services') are rendered and written by structlog itself: through
    stdlib logging (a LogRecord, the handler, ProcessorFormatter) a line cost twice the CPU, 38 against 18 µs.
    Libraries' stdlib lines get the same processors and renderer through ProcessorFormatter.
    """
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*processors, renderer],
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=processors,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "py_eureka_client", "httpx", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.contextvars.bind_contextvars(service=service)


class RequestMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware task hop): request id, trace id, NUL guard, metrics, one log line.

    Measured on the gateway: three `@app.middleware("http")` layers cost more than the proxying itself.
    """

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service
        self.log = structlog.get_logger("request")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        query: bytes = scope.get("query_string", b"")
        if "\x00" in path or b"%00" in query or b"\x00" in query:
            # A NUL byte can reach no valid record, and PostgreSQL refuses it in text.
            response = problem(400, "Bad request", "The path or query contains a NUL byte.", "bad-request")
            await response(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = request_id_of(headers.get(REQUEST_ID_HEADER))
        # The caller's trace (or a new one): the gateway forwards exactly this, so every hop logs one trace id.
        traceparent = request_traceparent(headers.get("traceparent", ""))
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["traceparent"] = traceparent
        structlog.contextvars.bind_contextvars(request_id=request_id, trace_id=traceparent[3:35])
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            # An app may name the route itself (the gateway: the route table's prefix, not its catch-all).
            route = state.get("route_label") or getattr(scope.get("route"), "path", "unmatched")
            if route not in ("/metrics", "/health", "/ready"):
                observe_request(self.service, scope["method"], route, status, elapsed)
                self.log.info("request", method=scope["method"], path=path, status=status,
                              duration_ms=round(elapsed * 1000, 2))
            structlog.contextvars.unbind_contextvars("request_id", "trace_id")
