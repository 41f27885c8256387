"""Which HTTP client should the gateway use? A FastAPI proxy making two upstream calls per request
(validate + forward), measured with httpx's default AsyncClient and with an aiohttp ClientSession.

    .venv/bin/python bench/gateway_client.py [--requests 3000] [--concurrency 64] [--variants ...]

Every server is one uvicorn process on 127.0.0.1 (uvloop and httptools where installed); the load
generator is an aiohttp client in this process. Variants:
  direct   the upstream alone (one call per request: the ceiling)
  httpx    minimal proxy, httpx.AsyncClient() with its defaults, one per process
  aiohttp  minimal proxy, one aiohttp.ClientSession per process
  gateway  the real gateway (`python -m gateway`, no registry, instances pinned): middleware included
  gateway-bare  the same app with the shared HTTP middlewares (metrics, NUL check, request log) removed:
                shows what the gateway's own code costs and what the middleware stack costs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from fastapi import FastAPI, Request
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from customer_cli.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
AUTH = {"Authorization": "Bearer bench-token"}
ITEM = json.dumps({"id": "o-1", "status": "PENDING", "lines": [{"sku": "sku-1", "quantity": 2}]}).encode()


# ---------------------------------------------------------------- the servers (run in child processes)

def upstream_app() -> Starlette:
    """The trivial upstream: /validate answers with identity headers, anything under /api a small JSON body."""
    async def validate(request: Request) -> Response:
        if request.headers.get("authorization") != AUTH["Authorization"]:
            return Response(b'{"status":401}', 401, media_type="application/problem+json")
        return Response(b'{"user_id":"u-1"}', media_type="application/json",
                        headers={"X-User-Id": "u-1", "X-User-Roles": "customer"})

    async def item(request: Request) -> Response:
        return Response(ITEM, media_type="application/json")

    return Starlette(routes=[Route("/validate", validate), Route("/health", item), Route("/api/{rest:path}", item)])


def _proxy_app(open_client: Callable[[], AbstractAsyncContextManager[Any]],
               forward: Callable[[Any, str, str], Awaitable[Response]]) -> FastAPI:
    """The minimal proxy around one client per process, opened with the app: `forward(client, path,
    authorization)` makes the two upstream calls, so the variants differ in the client alone."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_client() as client:
            app.state.client = client
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "UP"}

    @app.get("/api/{path:path}")
    async def proxy(path: str, request: Request) -> Response:
        return await forward(request.app.state.client, path, request.headers["authorization"])

    return app


def httpx_proxy_app(upstream: str) -> FastAPI:
    async def forward(client: httpx.AsyncClient, path: str, authorization: str) -> Response:
        check = await client.get(f"{upstream}/validate", headers={"Authorization": authorization})
        if check.status_code != 200:
            return Response(check.content, check.status_code, media_type=check.headers.get("content-type"))
        answer = await client.get(f"{upstream}/api/{path}", headers={"X-User-Id": check.headers["x-user-id"]})
        return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))

    return _proxy_app(httpx.AsyncClient, forward)


def aiohttp_proxy_app(upstream: str) -> FastAPI:
    async def forward(session: aiohttp.ClientSession, path: str, authorization: str) -> Response:
        async with session.get(f"{upstream}/validate", headers={"Authorization": authorization}) as check:
            body = await check.read()
            if check.status != 200:
                return Response(body, check.status, media_type=check.headers.get("content-type"))
            user_id = check.headers["X-User-Id"]
        async with session.get(f"{upstream}/api/{path}", headers={"X-User-Id": user_id}) as answer:
            return Response(await answer.read(), answer.status, media_type=answer.headers.get("content-type"))

    return _proxy_app(lambda: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)), forward)


def bare_gateway_app(upstream: str) -> FastAPI:
    sys.path.insert(0, str(ROOT))
    from gateway.app import create_app
    from gateway.settings import Settings

    app = create_app(Settings(env="test", eureka_server_url="", log_level="WARNING",
                              static_instances={"AUTH-SERVICE": [upstream], "ORDER-SERVICE": [upstream]}))
    app.user_middleware = []
    return app


def serve(role: str, port: int, upstream: str) -> None:
    import uvicorn

    app = {"upstream": upstream_app, "httpx": lambda: httpx_proxy_app(upstream),
           "aiohttp": lambda: aiohttp_proxy_app(upstream), "gateway-bare": lambda: bare_gateway_app(upstream)}[role]()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---------------------------------------------------------------- the driver



def start(role: str, upstream: str = "") -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    if role == "gateway":
        env = {**os.environ, "PORT": str(port), "EUREKA_SERVER_URL": "", "LOG_LEVEL": "WARNING", "ENV": "test",
               "GATEWAY_STATIC_INSTANCES": json.dumps({"AUTH-SERVICE": [upstream], "ORDER-SERVICE": [upstream]})}
        command = [sys.executable, "-m", "gateway"]
    else:
        env = dict(os.environ)
        command = [sys.executable, __file__, "--serve", role, "--port", str(port), "--upstream", upstream]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{role} exited with {proc.returncode}") from None
            time.sleep(0.05)
    proc.kill()
    raise TimeoutError(f"{role} did not start")


async def drive(url: str, requests: int, concurrency: int) -> dict[str, float]:
    """`concurrency` clients on keep-alive connections; every answer must be 200 with the item."""
    latencies: list[float] = []
    errors = 0
    remaining = requests

    async def client(session: aiohttp.ClientSession, count: bool) -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                async with session.get(f"{url}/api/orders/o-1", headers=AUTH) as response:
                    body = await response.read()
                    ok = response.status == 200 and body == ITEM
            except aiohttp.ClientError:
                ok = False
            if count:
                latencies.append(time.perf_counter() - started)
                errors += not ok

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        remaining = min(500, requests)  # warm-up: connections opened, code paths hot
        await asyncio.gather(*(client(session, False) for _ in range(concurrency)))
        remaining = requests
        started = time.perf_counter()
        await asyncio.gather(*(client(session, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": requests / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--variants", default="direct,httpx,aiohttp,gateway,gateway-bare")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.upstream)
        return

    upstream, upstream_url = start("upstream")
    print(f"{os.cpu_count()} CPUs, {args.requests} requests, {args.concurrency} concurrent clients, "
          "two upstream calls per proxied request")
    try:
        for variant in args.variants.split(","):
            proc, url = (None, upstream_url) if variant == "direct" else start(variant, upstream_url)
            try:
                result = asyncio.run(drive(url, args.requests, args.concurrency))
            finally:
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)
            print(f"{variant:12} {result['rps']:8.0f} req/s   p50 {result['p50_ms']:6.1f} ms   "
                  f"p99 {result['p99_ms']:6.1f} ms   errors {result['errors']:.0f}", flush=True)
    finally:
        upstream.terminate()
        upstream.wait(10)


if __name__ == "__main__":
    main()
