"""Gateway fixtures: tiny real upstreams (fake auth, echo) and the gateway, all uvicorn servers in the test loop."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as StarletteRoute

from customer_cli.processes import free_port
from gateway.app import create_app
from gateway.routes import DEFAULT_ROUTES, Route
from gateway.settings import Settings

CHUNK = 64 * 1024




def pattern_bytes(size: int) -> Iterator[bytes]:
    """Deterministic bytes in chunks, so both ends can hash them without holding them."""
    block = bytes(range(256)) * (CHUNK // 256)
    sent = 0
    while sent < size:
        piece = block[: min(CHUNK, size - sent)]
        sent += len(piece)
        yield piece


def pattern_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern_bytes(size):
        digest.update(piece)
    return digest.hexdigest()


class _Server(uvicorn.Server):
    """uvicorn in the test's event loop; pytest keeps its own signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class RunningServer:
    app: Any
    http: str = "auto"
    port: int = field(default_factory=free_port)
    server: _Server | None = None
    task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RunningServer:
        # proxy_headers off as in shared/server.py: uvicorn would otherwise take 127.0.0.1's X-Forwarded-For.
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None, access_log=False,
                                http=self.http, lifespan="on", timeout_graceful_shutdown=1, proxy_headers=False)
        self.server = _Server(config)
        self.task = asyncio.create_task(self.server.serve())
        for _ in range(500):
            if self.server.started:
                return self
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)
        raise TimeoutError(f"server on port {self.port} did not start")

    async def stop(self) -> None:
        assert self.server is not None and self.task is not None
        self.server.should_exit = True
        await self.task


@dataclass
class Upstreams:
    """What the fake services saw, and gates that tests use to prove streaming."""

    validate_calls: list[dict[str, str]] = field(default_factory=list)
    echo_calls: list[str] = field(default_factory=list)
    download_gate: asyncio.Event = field(default_factory=asyncio.Event)
    upload_gate: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        self.validate_calls.clear()
        self.echo_calls.clear()
        self.download_gate = asyncio.Event()
        self.upload_gate = asyncio.Event()


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    body = {"type": f"https://customer-service.example/problems/{status}", "title": title, "status": status,
            "detail": detail}
    return JSONResponse(body, status_code=status, media_type="application/problem+json",
                        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)


def fake_auth_app(seen: Upstreams) -> Starlette:
    """/validate as auth_service answers it: identity headers for token "good", a problem otherwise."""

    async def validate(request: Request) -> Response:
        seen.validate_calls.append(dict(request.headers))
        authorization = request.headers.get("authorization", "")
        if not authorization:
            return _problem(401, "Unauthorized", "fake-auth: no bearer token")
        if authorization == "Bearer good":
            return JSONResponse(
                {"user_id": "u-good", "roles": ["customer"], "email": "good@example.com"},
                headers={"X-User-Id": "u-good", "X-User-Roles": "customer", "X-User-Email": "good@example.com"},
            )
        if authorization == "Bearer forbidden":
            return _problem(403, "Forbidden", "fake-auth: role may not pass")
        if authorization == "Bearer anonymous":
            return JSONResponse({})
        return _problem(401, "Unauthorized", "fake-auth: token not valid")

    async def revocations(request: Request) -> Response:  # what the gateway polls (shared/auth.py)
        return JSONResponse({"revoked": []})

    return Starlette(routes=[
        StarletteRoute("/validate", validate, methods=["GET", "POST"]),
        StarletteRoute("/revocations", revocations, methods=["GET"]),
        StarletteRoute("/{path:path}", echo_endpoint(seen), methods=["GET", "POST"]),
    ])


def echo_endpoint(seen: Upstreams) -> Any:
    async def echo(request: Request) -> Response:
        path = request.url.path
        seen.echo_calls.append(path)
        if path.startswith("/api/slow"):
            await asyncio.sleep(1.5)
        if path.endswith("/download"):
            size = int(request.query_params.get("size", "0"))

            async def chunks() -> AsyncIterator[bytes]:
                for piece in pattern_bytes(size):
                    yield piece

            return StreamingResponse(chunks(), media_type="application/octet-stream")
        if path.endswith("/download-gate"):

            async def gated() -> AsyncIterator[bytes]:
                yield b"first;"
                # Only a gateway that passes the first chunk on lets the test open this gate.
                await asyncio.wait_for(seen.download_gate.wait(), 10)
                yield b"rest"

            return StreamingResponse(gated(), media_type="text/plain")
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.stream():
            if chunk and size == 0:
                seen.upload_gate.set()
            digest.update(chunk)
            size += len(chunk)
        body = {
            "method": request.method,
            "path": path,
            "raw_path": request.scope["raw_path"].decode("latin-1"),
            "query": request.scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers.raw],
            "body_size": size,
            "body_sha256": digest.hexdigest(),
        }
        response = Response(json.dumps(body), media_type="application/json")
        # Hop-by-hop headers the gateway must not pass back, and a repeated header it must keep.
        response.headers["Connection"] = "X-Upstream-Hop"
        response.headers["X-Upstream-Hop"] = "secret"
        response.headers["Keep-Alive"] = "timeout=5"
        response.headers.append("Set-Cookie", "a=1")
        response.headers.append("Set-Cookie", "b=2")
        return response

    return echo


def echo_app(seen: Upstreams) -> Starlette:
    return Starlette(routes=[
        StarletteRoute("/{path:path}", echo_endpoint(seen),
                       methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
    ])


async def start_broken_server() -> tuple[asyncio.Server, str]:
    """An upstream that breaks HTTP: hangs up without answering, or sends less body than it announced."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ", 2)[1]
        if target.endswith(b"/short"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nshort")
        elif target.endswith(b"/truncated"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000000\r\n\r\n"
                         + b"x" * 70_000)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


@dataclass
class GatewayUnderTest:
    url: str
    seen: Upstreams
    dead_url: str

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=20)


def gateway_settings(auth_url: str, echo_url: str, dead_url: str, broken_url: str = "") -> Settings:
    return Settings(
        env="test",
        eureka_server_url="",
        log_level="WARNING",
        log_json=False,
        body_read_timeout_secs=1,
        routes=[
            *DEFAULT_ROUTES,
            Route(prefix="/api/slow", app="SLOW-SERVICE", timeout_secs=0.5),
            Route(prefix="/api/flaky", app="FLAKY-SERVICE"),
            Route(prefix="/api/dead", app="DEAD-SERVICE", public=True),
            Route(prefix="/api/broken", app="BROKEN-SERVICE", public=True),
            # One instance that breaks off its answers beside one that works.
            Route(prefix="/api/halfbroken", app="HALFBROKEN-SERVICE", public=True),
        ],
        static_instances={
            "AUTH-SERVICE": [auth_url],
            "ORDER-SERVICE": [echo_url],
            "INVENTORY-SERVICE": [echo_url],
            "SLOW-SERVICE": [echo_url],
            # A refused connection first: the gateway must move on to the live instance.
            "FLAKY-SERVICE": [dead_url, echo_url],
            "DEAD-SERVICE": [dead_url],
            "BROKEN-SERVICE": [broken_url or dead_url],
            "HALFBROKEN-SERVICE": [broken_url or dead_url, echo_url],
        },
    )


@pytest.fixture(scope="session")
async def upstream_servers() -> AsyncIterator[tuple[Upstreams, RunningServer, RunningServer, str]]:
    seen = Upstreams()
    auth = await RunningServer(fake_auth_app(seen)).start()
    echo = await RunningServer(echo_app(seen)).start()
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    try:
        yield seen, auth, echo, dead_url
    finally:
        await echo.stop()
        await auth.stop()


@pytest.fixture(scope="session")
async def running_gateway(
    upstream_servers: tuple[Upstreams, RunningServer, RunningServer, str],
) -> AsyncIterator[GatewayUnderTest]:
    seen, auth, echo, dead_url = upstream_servers
    broken, broken_url = await start_broken_server()
    gateway = await RunningServer(create_app(gateway_settings(auth.url, echo.url, dead_url, broken_url))).start()
    try:
        yield GatewayUnderTest(gateway.url, seen, dead_url)
    finally:
        await gateway.stop()
        broken.close()


@pytest.fixture
async def gw(running_gateway: GatewayUnderTest) -> GatewayUnderTest:
    running_gateway.seen.reset()
    return running_gateway


@dataclass
class Instance:
    """A fake service instance that counts what reached it and answers with planned statuses."""

    name: str
    # path → statuses to answer first, in order; then `always[path]`, else 200.
    plans: dict[str, list[int]] = field(default_factory=dict)
    always: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def count(self, path: str, method: str | None = None) -> int:
        return sum(1 for m, p, _ in self.calls if p == path and (method is None or m == method))

    def app(self) -> Starlette:
        async def answer(request: Request) -> Response:
            body = await request.body()
            path = request.url.path
            self.calls.append((request.method, path, dict(request.headers)))
            plan = self.plans.get(path)
            status = plan.pop(0) if plan else self.always.get(path, 200)
            return JSONResponse({"instance": self.name, "path": path, "body_size": len(body)}, status_code=status)

        methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        return Starlette(routes=[StarletteRoute("/{path:path}", answer, methods=methods)])


def quiet_settings(**overrides: Any) -> Settings:
    """Gateway settings for in-process tests: no registry, warnings only."""
    return Settings(env="test", eureka_server_url="", log_level="WARNING", log_json=False, **overrides)


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[RunningServer]:
    server = await RunningServer(app).start()
    try:
        yield server
    finally:
        await server.stop()
