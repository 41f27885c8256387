"""The gateway in process against real upstream servers: forward-auth, routing, errors, streaming, path tricks."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import create_app
from tests.gateway.conftest import (
    GatewayUnderTest,
    RunningServer,
    Upstreams,
    gateway_settings,
    pattern_bytes,
    pattern_sha256,
)

GOOD = {"Authorization": "Bearer good"}
FIVE_MB = 5 * 1024 * 1024


def echoed_headers(body: dict[str, object]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in body["headers"]:  # type: ignore[attr-defined]
        found.setdefault(name, []).append(value)
    return found


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["status"] == status
    return body


async def raw_request(url: str, target: str, extra: str = "") -> tuple[int, dict[str, str], bytes]:
    """A request written byte for byte: HTTP clients normalise the very paths these tests need to send."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer good\r\n{extra}"
                 "Connection: close\r\n\r\n".encode("latin-1"))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def test_missing_token_gets_auths_own_401(gw: GatewayUnderTest) -> None:
    async with gw.client() as client:
        response = await client.get("/api/orders")
    body = assert_problem(response, 401)
    assert body["detail"] == "fake-auth: no bearer token"
    assert response.headers["www-authenticate"] == "Bearer"
    assert len(gw.seen.validate_calls) == 1
    assert gw.seen.echo_calls == []


async def test_bad_token_gets_auths_own_401(gw: GatewayUnderTest) -> None:
    async with gw.client() as client:
        response = await client.get("/api/orders", headers={"Authorization": "Bearer forged"})
    assert assert_problem(response, 401)["detail"] == "fake-auth: token not valid"
    assert gw.seen.echo_calls == []


async def test_any_other_auth_answer_is_passed_through(gw: GatewayUnderTest) -> None:
    async with gw.client() as client:
        response = await client.delete("/api/orders/o-1", headers={"Authorization": "Bearer forbidden"})
    assert assert_problem(response, 403)["detail"] == "fake-auth: role may not pass"
    assert gw.seen.echo_calls == []


async def test_a_pass_without_identity_fails_closed(gw: GatewayUnderTest) -> None:
    async with gw.client() as client:
        response = await client.get("/api/orders", headers={"Authorization": "Bearer anonymous"})
    assert_problem(response, 502)
    assert gw.seen.echo_calls == []


async def test_good_token_reaches_the_service_with_validated_identity(gw: GatewayUnderTest) -> None:
    async with gw.client() as client:
        response = await client.post(
            "/api/orders/o-1/cancel?b=2&a=%2F1",
            content=b'{"lines": []}',
            headers={
                **GOOD,
                "Content-Type": "application/json",
                "X-User-Id": "admin",
                "X-User-Roles": "admin",
                "Cookie": "session=s",
                "Connection": "keep-alive, X-Private-Hop",
                "X-Private-Hop": "1",
                "X-Request-ID": "req-from-client",
            },
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["method"], body["path"], body["query"]) == ("POST", "/api/orders/o-1/cancel", "b=2&a=%2F1")
    seen = echoed_headers(body)
    assert seen["x-user-id"] == ["u-good"]
    assert seen["x-user-roles"] == ["customer"]
    assert seen["x-user-email"] == ["good@example.com"]
    assert seen["authorization"] == ["Bearer good"]
    assert seen["cookie"] == ["session=s"]
    assert "x-private-hop" not in seen
    assert seen["x-request-id"] == ["req-from-client"]
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == [gw.url.removeprefix("http://")]
    # The instance's own address, set by the gateway: the client's Host travels as X-Forwarded-Host only.
    assert len(seen["host"]) == 1 and seen["host"] != [gw.url.removeprefix("http://")]
    assert len(seen["traceparent"]) == 1 and seen["traceparent"][0].startswith("00-")
    assert body["body_size"] == len(b'{"lines": []}')
    # Back to the client: the request id, upstream headers minus the hop-by-hop ones, repeats kept.
    assert response.headers["x-request-id"] == "req-from-client"
    assert "x-upstream-hop" not in response.headers
    assert "keep-alive" not in response.headers
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert len(response.headers.get_list("date")) == 1
    # /validate saw the token and the request id, not the client's other headers.
    (validate_headers,) = gw.seen.validate_calls
    assert validate_headers["authorization"] == "Bearer good"
    assert validate_headers["x-request-id"] == "req-from-client"
    assert validate_headers["traceparent"] == seen["traceparent"][0]
    assert validate_headers["x-forwarded-method"] == "POST"
    assert validate_headers["x-forwarded-uri"] == "/api/orders/o-1/cancel?b=2&a=%2F1"
    assert "cookie" not in validate_headers and "x-user-id" not in validate_headers


async def test_request_id_and_traceparent_are_generated_or_kept(gw: GatewayUnderTest) -> None:
    client_tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with gw.client() as client:
        fresh = await client.get("/api/orders", headers=GOOD)
        kept = await client.get("/api/orders", headers={**GOOD, "traceparent": client_tp})
        bad = await client.get("/api/orders", headers={**GOOD, "traceparent": "00-nothex-01"})
    fresh_seen = echoed_headers(fresh.json())
    assert len(fresh.headers["x-request-id"]) == 32
    assert fresh_seen["x-request-id"] == [fresh.headers["x-request-id"]]
    assert fresh_seen["traceparent"][0].endswith("-01")
    assert echoed_headers(kept.json())["traceparent"] == [client_tp]
    bad_tp = echoed_headers(bad.json())["traceparent"]
    assert bad_tp != ["00-nothex-01"] and len(bad_tp[0]) == 55


async def test_public_routes_skip_validate(gw: GatewayUnderTest) -> None:
    async with gw.client() as client:
        login = await client.post("/api/auth/login", json={"email": "a@b.c", "password": "x"},
                                  headers={"X-User-Id": "admin"})
        catalogue = await client.get("/api/inventory/products?limit=5")
        write = await client.post("/api/inventory/products", json={})
    assert login.status_code == 200 and catalogue.status_code == 200
    assert login.json()["path"] == "/api/auth/login"
    assert "x-user-id" not in echoed_headers(login.json())
    assert catalogue.json()["query"] == "limit=5"
    # Only the write (not public) asked /validate, and got 401 without a token.
    assert len(gw.seen.validate_calls) == 1
    assert_problem(write, 401)


async def test_unknown_route_is_404(gw: GatewayUnderTest) -> None:
    async with gw.client() as client:
        for path in ("/api/unknown", "/api/ordersX", "/nowhere"):
            assert_problem(await client.get(path, headers=GOOD), 404)
    assert gw.seen.validate_calls == [] and gw.seen.echo_calls == []


async def test_app_without_up_instance_is_503(gw: GatewayUnderTest) -> None:
    async with gw.client() as client:
        response = await client.get("/api/payments", headers=GOOD)
    body = assert_problem(response, 503)
    assert body["service"] == "PAYMENT-SERVICE"


async def test_unreachable_instance_is_503(gw: GatewayUnderTest) -> None:
    async with gw.client() as client:
        response = await client.get("/api/dead/x")
    assert assert_problem(response, 503)["service"] == "DEAD-SERVICE"


async def test_refused_connection_moves_on_to_another_instance(gw: GatewayUnderTest) -> None:
    async with gw.client() as client:
        for _ in range(4):
            response = await client.post("/api/flaky/x", content=b"payload", headers=GOOD)
            assert response.status_code == 200, response.text
            assert response.json()["body_size"] == len(b"payload")


async def test_upstream_hanging_up_or_cutting_a_small_body_short_is_502(gw: GatewayUnderTest) -> None:
    async with gw.client() as client:
        hangup = await client.get("/api/broken/hangup")
        short = await client.get("/api/broken/short")
    assert assert_problem(hangup, 502)["service"] == "BROKEN-SERVICE"
    assert_problem(short, 502)


async def test_an_answer_broken_off_after_its_head_is_sent_again_to_another_instance(gw: GatewayUnderTest) -> None:
    # Round robin over [breaks off after its head, works]: a request that may be repeated gets the working
    # instance's answer whichever came first (an instance dying mid-answer is not the client's 502).
    async with gw.client() as client:
        answers = [await client.get("/api/halfbroken/short") for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert gw.seen.echo_calls == ["/api/halfbroken/short"] * 4
    async with gw.client() as client:  # one that may not be repeated: the broken answer is the client's 502
        posts = [await client.post("/api/halfbroken/short") for _ in range(2)]
    assert sorted(p.status_code for p in posts) == [200, 502]


async def test_streamed_body_cut_short_aborts_the_client_connection(gw: GatewayUnderTest) -> None:
    # The status line is gone already: the client must see a broken transfer, never a clean short body.
    async with gw.client() as client, client.stream("GET", "/api/broken/truncated") as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == "1000000"
        with pytest.raises(httpx.RemoteProtocolError):
            await response.aread()


async def test_slow_upstream_is_504_after_the_route_timeout(gw: GatewayUnderTest) -> None:
    # The upstream answers after 1.5 s, the route allows 0.5 s: a 504 (not the upstream's 200) is the timeout's.
    gw.seen.reset()
    async with gw.client() as client:
        response = await client.get("/api/slow/thing", headers=GOOD)
    assert assert_problem(response, 504)["service"] == "SLOW-SERVICE"
    assert gw.seen.echo_calls == ["/api/slow/thing"]  # it was asked, and not waited for


async def stalled_upload(url: str, method: str, target: str, length: int, extra: str = "") -> bytes:
    """A request whose body stops after 10 of its `length` bytes and never goes on: the gateway's answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"{method} {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer good\r\n{extra}"
                 f"Content-Length: {length}\r\n\r\n".encode("latin-1") + b"x" * 10)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    finally:
        writer.close()


async def test_a_stalled_small_body_is_408_after_the_body_read_timeout(gw: GatewayUnderTest) -> None:
    # A body small enough to be held for a re-send is read whole first: the server's bound ends the wait.
    head = await stalled_upload(gw.url, "PUT", "/api/orders/upload", 100)
    assert head.startswith(b"HTTP/1.1 408"), head
    assert gw.seen.echo_calls == []


async def test_a_stalled_streamed_body_is_the_clients_own_408_not_the_instances_fault(gw: GatewayUnderTest) -> None:
    # A streamed body (too large to hold) that stops: the server's bound answers, and the instance that was
    # waiting for the rest of it is not blamed.
    threshold = 5  # Settings.breaker_failure_threshold: that many failures in a row would open the breaker
    for _ in range(threshold + 1):
        head = await stalled_upload(gw.url, "POST", "/api/slow/upload", 10 * 1024 * 1024)
        assert head.startswith(b"HTTP/1.1 408"), head
    gw.seen.reset()
    async with gw.client() as client:
        response = await client.get("/api/slow/thing", headers=GOOD)
    # Still asked (a breaker opened by the uploads would have answered 503 without asking).
    assert assert_problem(response, 504)["service"] == "SLOW-SERVICE"
    assert gw.seen.echo_calls == ["/api/slow/thing"]


async def test_five_megabytes_up_with_content_length(gw: GatewayUnderTest) -> None:
    payload = b"".join(pattern_bytes(FIVE_MB))
    async with gw.client() as client:
        response = await client.put("/api/orders/upload", content=payload, headers=GOOD)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["body_size"], body["body_sha256"]) == (FIVE_MB, hashlib.sha256(payload).hexdigest())
    assert echoed_headers(body)["content-length"] == [str(FIVE_MB)]


async def test_five_megabytes_up_chunked(gw: GatewayUnderTest) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for piece in pattern_bytes(FIVE_MB):
            yield piece

    async with gw.client() as client:
        response = await client.post("/api/orders/upload", content=chunks(), headers=GOOD)
    assert response.status_code == 200, response.text
    assert (response.json()["body_size"], response.json()["body_sha256"]) == (FIVE_MB, pattern_sha256(FIVE_MB))


async def test_five_megabytes_down(gw: GatewayUnderTest) -> None:
    digest = hashlib.sha256()
    size = 0
    async with gw.client() as client, client.stream("GET", f"/api/orders/download?size={FIVE_MB}",
                                                    headers=GOOD) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/octet-stream"
        async for chunk in response.aiter_raw():
            digest.update(chunk)
            size += len(chunk)
    assert (size, digest.hexdigest()) == (FIVE_MB, pattern_sha256(FIVE_MB))


async def test_response_is_streamed_not_buffered(gw: GatewayUnderTest) -> None:
    async with gw.client() as client, client.stream("GET", "/api/orders/download-gate", headers=GOOD) as response:
        chunks = response.aiter_raw()
        # The upstream holds back the rest until this test has seen the first chunk through the gateway.
        first = await asyncio.wait_for(anext(chunks), 5)
        gw.seen.download_gate.set()
        rest = b"".join([chunk async for chunk in chunks])
    assert first + rest == b"first;rest"


async def test_request_body_is_streamed_not_buffered(gw: GatewayUnderTest) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        # Only sent once the upstream has received the first chunk through the gateway.
        await asyncio.wait_for(gw.seen.upload_gate.wait(), 5)
        yield b"y" * 1000

    async with gw.client() as client:
        response = await client.post("/api/orders/upload-gate", content=chunks(), headers=GOOD)
    assert response.status_code == 200, response.text
    assert response.json()["body_size"] == 2000


@pytest.mark.parametrize(
    "target",
    [
        "/api/orders/../auth/me",
        "/api/inventory/products/../allocations",
        "/api/orders/%2e%2e/auth/me",
        "/api/orders/..%2fauth",
        "/api/orders%2f..%2fpayments",
        "/api/orders/%252e%252e/x",
        "/api/orders/%5c..%5cx",
        "/api/orders\\..\\x",
        "/api/orders/..;/x",
        "/api/orders/%00",
    ],
)
async def test_path_tricks_are_refused_and_never_proxied(gw: GatewayUnderTest, target: str) -> None:
    status, headers, body = await raw_request(gw.url, target)
    assert status == 400, body
    assert headers["content-type"] == "application/problem+json"
    # The shared app refuses NUL bytes before the gateway sees them (type bad-request); the rest are the gateway's.
    assert b"path-rejected" in body or b"NUL" in body
    assert gw.seen.validate_calls == [] and gw.seen.echo_calls == []


async def test_absolute_form_target_never_reaches_another_host(
    gw: GatewayUnderTest, upstream_servers: tuple[Upstreams, RunningServer, RunningServer, str]
) -> None:
    # uvicorn's httptools parser reduces absolute-form to its path (RFC 9112 §3.2.2 says servers accept it);
    # the gateway routes on that path only, so the target's host is never contacted.
    status, _, body = await raw_request(gw.url, "http://evil.example/api/orders?q=1")
    assert status == 200, body
    assert gw.seen.echo_calls == ["/api/orders"]
    # Where the server passes the target through (h11), the gateway refuses it outright.
    _, auth, echo, dead_url = upstream_servers
    h11_gateway = await RunningServer(create_app(gateway_settings(auth.url, echo.url, dead_url)), http="h11").start()
    try:
        gw.seen.reset()
        status, headers, body = await raw_request(h11_gateway.url, "http://evil.example/api/orders")
        assert status in (400, 404), body  # no route matches a target that is not a path
        assert headers["content-type"] == "application/problem+json"
        assert gw.seen.echo_calls == [] and gw.seen.validate_calls == []
    finally:
        await h11_gateway.stop()


async def test_head_and_options_are_proxied(gw: GatewayUnderTest) -> None:
    async with gw.client() as client:
        head = await client.head("/api/inventory/products")
        options = await client.options("/api/orders", headers=GOOD)
    assert head.status_code == 200 and head.content == b""
    assert options.status_code == 200 and options.json()["method"] == "OPTIONS"


async def test_gateway_own_routes(gw: GatewayUnderTest) -> None:
    async with gw.client() as client:
        health = await client.get("/health")
        routes = await client.get("/gateway/routes")
    assert health.json() == {"status": "UP"}
    prefixes = [r["prefix"] for r in routes.json()["routes"]]
    assert prefixes.index("/api/auth/login") < prefixes.index("/api/auth")
    assert gw.seen.echo_calls == []
