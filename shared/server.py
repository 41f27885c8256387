"""Run a service's app factory with uvicorn (uvloop and httptools), with the bounds uvicorn itself lacks.

uvicorn bounds idle keep-alive time (`timeout_keep_alive`) but neither the size of a request's head with
httptools (h11 has `h11_max_incomplete_event_size`; httptools accepts an 8 MB header) nor the time a client
may take to send it: a connection that sends nothing, or one header byte at a time (slowloris), is kept open
forever. `BoundedHttpToolsProtocol` adds both, as nginx's `large_client_header_buffers` and
`client_header_timeout` or Go's `ReadHeaderTimeout` do. Bodies are bounded by shared/body_limit.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.settings import ServerBounds


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools with a bound on the request line plus headers (431) and on the time to receive them (408).

    The header-read clock starts when the connection is made and again when a request's first byte arrives;
    it stops when its headers are complete. Between requests uvicorn's keep-alive timeout applies.
    """

    max_head_bytes = 32 * 1024
    header_timeout_secs = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._head_too_large = False
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to a parser error; ours, raised from a callback above, is a 431.
        if self._head_too_large:
            self._refuse(431, "Request Header Fields Too Large",
                         f"The request line and headers exceed {self.max_head_bytes} bytes.")
            return
        super().send_400_response(msg)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_head_bytes:
            self._head_too_large = True
            raise ValueError("request head over the limit")  # httptools stops parsing: send_400_response

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_secs, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a pipelined request mid-head behind a running one: just close
            return
        self._refuse(408, "Request Timeout", f"The request headers did not arrive within "
                     f"{self.header_timeout_secs:g} s.")

    def _refuse(self, status: int, reason: str, detail: str) -> None:
        body = json.dumps({"type": f"https://customer-service.example/problems/{status}", "title": reason,
                           "status": status, "detail": detail}).encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/problem+json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body)
        )
        self.transport.close()


def bounded_protocol(bounds: ServerBounds) -> type[BoundedHttpToolsProtocol]:
    """The protocol class with these bounds (uvicorn takes a class, not an instance)."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {
        "max_head_bytes": bounds.max_header_bytes,
        "header_timeout_secs": bounds.header_read_timeout_secs,
    })


def serve(app: Any, settings: ServerBounds, *, factory: bool = True) -> None:
    """Run `app` (an import string of an app factory, or with factory=False an app) until stopped."""
    uvicorn.run(
        app,
        factory=factory,
        host=settings.host,
        port=settings.port,
        http=bounded_protocol(settings),
        timeout_keep_alive=settings.keep_alive_timeout_secs,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        # uvicorn rewrites no address from X-Forwarded-*: the gateway sanitizes that header, and a service that
        # needs the client (auth_service's login throttling) resolves it itself from TRUSTED_PROXIES.
        proxy_headers=False,
    )
