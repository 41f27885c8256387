"""The request-body bound of every server (MAX_BODY_BYTES), as pure ASGI middleware.

A declared Content-Length over the limit is answered 413 before a byte of the body is read (nginx's
`client_max_body_size`); a chunked body is counted as it arrives and, at the limit, answered 413 while the
app is told the client went away (`http.disconnect`), so nothing is parsed past the bound. Both answers are
problem+json. A body whose next piece does not arrive within `read_timeout_secs` (BODY_READ_TIMEOUT_SECS) is
answered 408 the same way (nginx's `client_body_timeout`): a slow client holds nothing for long. FastAPI's own
`max_body_size`
(Starlette's RequestBodyLimitMiddleware) does the counting too, but answers text/plain and replaces whatever
the app answered to a request with a large declared length, so the services' error contract would not hold.
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import BodyTimeout, PayloadTooLarge, domain_problem


def too_slow(read_timeout_secs: float) -> JSONResponse:
    # Closed after the answer: the rest of a stalled body is not waited for.
    response = domain_problem(BodyTimeout.after(read_timeout_secs))
    response.headers["Connection"] = "close"
    return response


def too_large(max_bytes: int) -> JSONResponse:
    # The connection is kept: uvicorn discards the rest of the body unparsed, and a client still sending it
    # would not read this answer if the connection were closed under it (nginx lingers for the same reason).
    return domain_problem(PayloadTooLarge.over(max_bytes))


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_secs: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_secs = read_timeout_secs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            await too_large(self.max_bytes)(scope, receive, send)
            return
        received = 0
        cut_off = app_started = answered = body_done = False

        async def counted_receive() -> Message:
            nonlocal received, cut_off, answered, body_done
            if cut_off:
                return {"type": "http.disconnect"}
            if body_done or app_started:  # nothing more to wait for but the client going away
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout_secs)
            except TimeoutError:
                cut_off = answered = True
                await too_slow(self.read_timeout_secs)(scope, receive, send)
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    cut_off = True
                    if not app_started:
                        answered = True
                        await too_large(self.max_bytes)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def app_send(message: Message) -> None:
            nonlocal app_started
            if answered:
                return  # the 413 went out; the app's late answer (to the disconnect) is dropped
            if message["type"] == "http.response.start":
                app_started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, app_send)
        except Exception:
            if not answered:
                raise
            # The app failed on the disconnect it was handed (e.g. ClientDisconnect): already answered.
