"""Rate limits (token buckets, IETF RateLimit-* headers, 429) and the request body limit (413)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import REGISTRY

from gateway.app import create_app
from gateway.ratelimit import TokenBucketLimiter, Verdict, tighter
from gateway.routes import Route
from tests.clock import Clock
from tests.fleet import METRICS_HEADERS
from tests.gateway.conftest import Instance, fake_auth_app, quiet_settings, serving
from tests.gateway.conftest import Upstreams as Seen

# ---------------------------------------------------------------- the bucket


def test_bucket_allows_the_burst_then_refuses_until_refilled() -> None:
    clock = Clock(50.0)
    bucket = TokenBucketLimiter(rate=2, burst=4, clock=clock)
    verdicts = [bucket.hit("k") for _ in range(5)]
    assert [v.allowed for v in verdicts] == [True, True, True, True, False]
    assert [v.remaining for v in verdicts] == [3, 2, 1, 0, 0]
    refused = verdicts[-1]
    assert refused.retry_after_secs == 1 and refused.reset_secs == 2
    clock.now += 0.5  # one token back at 2 per second
    assert bucket.hit("k").allowed
    assert not bucket.hit("k").allowed
    assert bucket.hit("other").allowed  # every key has its own bucket


def test_refused_requests_take_no_token() -> None:
    clock = Clock(50.0)
    bucket = TokenBucketLimiter(rate=1, burst=1, clock=clock)
    assert bucket.hit("k").allowed
    for _ in range(10):
        assert not bucket.hit("k").allowed
    clock.now += 1
    assert bucket.hit("k").allowed


def test_headers_follow_the_ietf_draft() -> None:
    clock = Clock(50.0)
    bucket = TokenBucketLimiter(rate=10, burst=100, clock=clock)
    allowed = dict(bucket.hit("k").headers())
    assert allowed == {"RateLimit-Limit": "100", "RateLimit-Remaining": "99", "RateLimit-Reset": "1",
                       "RateLimit-Policy": "100;w=10"}
    tiny = TokenBucketLimiter(rate=0.5, burst=1, clock=clock)
    tiny.hit("k")
    refused = dict(tiny.hit("k").headers())
    assert refused["Retry-After"] == "2" and refused["RateLimit-Remaining"] == "0"


def test_idle_keys_are_forgotten_oldest_first() -> None:
    bucket = TokenBucketLimiter(rate=1, burst=1, max_keys=3, clock=Clock(50.0))
    for key in "abcd":
        bucket.hit(key)
    assert len(bucket) == 3
    assert bucket.hit("a").allowed  # forgotten, so full again; b (the oldest now) goes
    assert not bucket.hit("d").allowed


def test_tighter_verdict_is_the_refusal_or_the_one_with_less_left() -> None:
    roomy = Verdict(True, 100, 90, 1, 0, 1)
    tight = Verdict(True, 10, 2, 1, 0, 1)
    refused = Verdict(False, 1000, 0, 1, 1, 1)
    assert tighter(roomy, tight) is tight and tighter(tight, roomy) is tight
    assert tighter(roomy, refused) is refused
    assert tighter(None, roomy) is roomy and tighter(roomy, None) is roomy


def test_zero_rate_turns_a_limit_off() -> None:
    assert not TokenBucketLimiter(rate=0, burst=10).enabled


# ---------------------------------------------------------------- through a gateway with low limits


@pytest.fixture(scope="module")
async def limited() -> AsyncIterator[tuple[str, Instance, Seen]]:
    """A gateway whose body limit is 1 KiB."""
    upstream, seen = Instance("u"), Seen()
    async with serving(upstream.app()) as server, serving(fake_auth_app(seen)) as auth:
        settings = quiet_settings(
            routes=[Route(prefix="/api/open", app="OPEN-SERVICE", public=True),
                    Route(prefix="/api/mine", app="OPEN-SERVICE")],
            static_instances={"OPEN-SERVICE": [server.url], "AUTH-SERVICE": [auth.url]},
            max_body_bytes=1024,
        )
        async with serving(create_app(settings)) as gateway:
            yield gateway.url, upstream, seen


async def test_address_limit_answers_429_with_retry_after_and_ratelimit_headers() -> None:
    upstream = Instance("u")
    async with serving(upstream.app()) as server:
        settings = quiet_settings(
            routes=[Route(prefix="/api/open", app="OPEN-SERVICE", public=True)],
            static_instances={"OPEN-SERVICE": [server.url]},
            rate_limit_address_rps=0.5, rate_limit_address_burst=3,
        )
        async with serving(create_app(settings)) as gateway, httpx.AsyncClient(base_url=gateway.url) as client:
            before = REGISTRY.get_sample_value("gateway_rate_limited_total", {"limit": "address"}) or 0.0
            responses = [await client.get("/api/open/x") for _ in range(4)]
            own = await client.get("/health")
            metrics = (await client.get("/metrics", headers=METRICS_HEADERS)).text
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert [r.headers["ratelimit-remaining"] for r in responses] == ["2", "1", "0", "0"]
    assert all(r.headers["ratelimit-limit"] == "3" for r in responses)
    refused = responses[-1]
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["status"] == 429 and refused.json()["limit"] == "address"
    assert int(refused.headers["retry-after"]) == 2
    assert int(refused.headers["ratelimit-reset"]) >= 2
    assert upstream.count("/api/open/x") == 3
    assert own.status_code == 200  # the gateway's own endpoints are not limited
    # The counter is the process's: other tests' refusals are in it too.
    assert f'gateway_rate_limited_total{{limit="address"}} {before + 1}' in metrics


async def test_user_limit_applies_after_validate() -> None:
    upstream, seen = Instance("u"), Seen()
    async with serving(upstream.app()) as server, serving(fake_auth_app(seen)) as auth:
        settings = quiet_settings(
            routes=[Route(prefix="/api/mine", app="OPEN-SERVICE")],
            static_instances={"OPEN-SERVICE": [server.url], "AUTH-SERVICE": [auth.url]},
            rate_limit_user_rps=0.1, rate_limit_user_burst=2,
        )
        async with serving(create_app(settings)) as gateway, httpx.AsyncClient(base_url=gateway.url) as client:
            good = {"Authorization": "Bearer good"}
            statuses = [(await client.get("/api/mine/x", headers=good)).status_code for _ in range(3)]
            refused = await client.get("/api/mine/x", headers=good)
            anonymous = await client.get("/api/mine/x")
    assert statuses == [200, 200, 429]
    assert refused.json()["limit"] == "user" and refused.headers["retry-after"] == "10"
    assert refused.headers["ratelimit-limit"] == "2"
    assert anonymous.status_code == 401  # auth's answer; no user, no user bucket


# ---------------------------------------------------------------- body size


async def test_content_length_over_the_limit_is_413_at_once(limited: tuple[str, Instance, Seen]) -> None:
    url, upstream, seen = limited
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/api/mine/upload", content=b"x" * 1025,
                                     headers={"Authorization": "Bearer good"})
    assert response.status_code == 413, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["max_bytes"] == 1024
    assert upstream.count("/api/mine/upload") == 0
    assert seen.validate_calls == []  # refused before the token was even checked


async def test_chunked_body_over_the_limit_is_cut_off(limited: tuple[str, Instance, Seen]) -> None:
    url, upstream, _ = limited
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /api/open/upload HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Type: application/octet-stream\r\n\r\n")
    chunk = b"y" * 400
    try:
        for _ in range(5):  # 2000 bytes in all, over the 1024 limit
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    except ConnectionError:
        pass  # the gateway may hang up once it has answered
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.lower().split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.startswith(b"content-length")))
    body = await asyncio.wait_for(reader.readexactly(length), 10)
    writer.close()
    assert head.split()[1] == b"413", head
    assert b"payload-too-large" in body
    # The upstream never received a complete body: the upload was aborted, not ended early.
    assert upstream.count("/api/open/upload") == 0


async def test_bodies_under_the_limit_pass(limited: tuple[str, Instance, Seen]) -> None:
    url, _, _ = limited

    async def chunks() -> AsyncIterator[bytes]:
        yield b"z" * 500
        yield b"z" * 500

    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/api/open/ok", content=chunks())
    assert response.status_code == 200, response.text
    assert response.json()["body_size"] == 1000


def test_default_limits_are_high() -> None:
    settings = quiet_settings()
    assert settings.rate_limit_address_burst >= 1000 and settings.rate_limit_user_burst >= 1000
    assert settings.max_body_bytes >= 5 * 1024 * 1024  # the proxy tests send 5 MB through the defaults
