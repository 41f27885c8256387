"""The dashboard's live event stream: the router in this process behind a real uvicorn, the bus a real nats-server
with the fleet's users (tests/bus/conftest.py), tokens minted with the tests' keys.

What a page may rely on: only an admin opens it; its first frame says whether the bus is live (also when NATS is
not configured or down); bus events arrive as they are published, of the families it asked for; the gateway holds
one subscription whatever the number of pages; a page that reads too slowly loses its oldest events and is told to
resync; a page that leaves frees its queue; a token that expires or is revoked ends the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from customer_cli.nats import GATEWAY_USER, NatsServer
from dashboard.live import LiveFeed
from dashboard.router import STREAM_COOKIE, router
from gateway.app import create_app
from shared.auth import TokenVerifier
from shared.db import utc_now
from shared.errors import install_error_handlers
from shared.events import SagaCompleted, ShipmentCreated, envelope
from shared.settings import ServiceSettings
from tests.bus.conftest import ConnectAs, connect_as, nats_server  # noqa: F401  (fixtures)
from tests.gateway.conftest import quiet_settings, serving
from tests.inprocess import JWKS, mint

STREAM = "/dashboard/api/events/stream"
ADMIN_TOKEN_SECS = 600


@dataclass
class Frame:
    event: str
    data: Any


class SseReader:
    """Frames of one open stream, parsed as a browser's EventSource would (comments are heartbeats), read by a task
    of its own so that a test may stop waiting without breaking the stream."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.heartbeats = 0
        self._frames: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        event, data = "message", list[str]()
        try:
            async for line in self.response.aiter_lines():
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if line == "":
                    if data:
                        self._frames.put_nowait(Frame(event, json.loads("\n".join(data))))
                    event, data = "message", []
                elif name == "":
                    self.heartbeats += 1
                elif name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
        finally:
            self._frames.put_nowait(None)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task

    async def next(self, within: float = 5) -> Frame:
        async with asyncio.timeout(within):
            frame = await self._frames.get()
        if frame is None:
            self._frames.put_nowait(None)
            raise EOFError("the stream ended")
        return frame

    async def until(self, wanted: Callable[[Frame], bool], within: float = 10) -> Frame:
        """The first frame `wanted` accepts (others are skipped)."""
        deadline = time.monotonic() + within
        while True:
            frame = await self.next(max(0.01, deadline - time.monotonic()))
            if wanted(frame):
                return frame

    async def heartbeat(self, within: float = 5) -> None:
        """Until one more heartbeat comment came."""
        seen = self.heartbeats
        await _until(lambda: self.heartbeats > seen, within)


def live(frame: Frame) -> bool:
    return frame.event == "status" and frame.data["live"] is True


@dataclass
class Dashboard:
    """The router on a real server, its feed and verifier reachable (the clock the verifier judges expiry by)."""

    url: str
    feed: LiveFeed
    verifier: TokenVerifier
    now: list[float]

    @contextlib.asynccontextmanager
    async def stream(self, token: str | None, query: str = "") -> AsyncIterator[SseReader]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client, \
                client.stream("GET", STREAM + query, headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            reader = SseReader(response)
            try:
                yield reader
            finally:
                await reader.close()


def dashboard_app(feed: LiveFeed, verifier: TokenVerifier) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.state.verifier = verifier
    app.state.live_feed = feed
    return app


@contextlib.asynccontextmanager
async def running(feed: LiveFeed) -> AsyncIterator[Dashboard]:
    now = [time.time()]
    verifier = TokenVerifier(ServiceSettings(eureka_server_url=""), clock=lambda: now[0])
    verifier.use_keys(JWKS)
    feed.start()
    try:
        async with serving(dashboard_app(feed, verifier)) as server:
            yield Dashboard(server.url, feed, verifier, now)
    finally:
        await feed.stop()


def admin_token() -> str:
    return mint("admin-1", ("admin",), exp=int(time.time()) + ADMIN_TOKEN_SECS)


@pytest.fixture
async def bus_dashboard(nats_server: NatsServer) -> AsyncIterator[Dashboard]:  # noqa: F811
    async with running(LiveFeed(nats_server.bus_config(GATEWAY_USER), heartbeat_secs=0.3)) as dashboard:
        yield dashboard


@pytest.fixture
async def quiet_dashboard() -> AsyncIterator[Dashboard]:
    """NATS not configured (the in-process tests, a gateway started without NATS_URL)."""
    async with running(LiveFeed(None, heartbeat_secs=0.3)) as dashboard:
        yield dashboard


def saga_completed(saga_id: str = "saga-1") -> bytes:
    event = envelope(SagaCompleted(saga_id=saga_id, order_id="order-1"), saga_id, time=utc_now(), order_id="order-1")
    return event.model_dump_json().encode()


def shipment_created() -> bytes:
    data = ShipmentCreated(order_id="order-1", shipment_id="s-1", tracking_number="T1")
    return envelope(data, "s-1", time=utc_now(), order_id="order-1").model_dump_json().encode()


# --- who may open it ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("not-a-token", 401), ("customer", 403)])
async def test_only_an_admin_opens_the_stream(quiet_dashboard: Dashboard, token: str | None, status: int) -> None:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {mint('c-1', ('customer',)) if token == 'customer' else token}"
    async with httpx.AsyncClient(base_url=quiet_dashboard.url, timeout=10) as client:
        response = await client.get(STREAM, headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_the_page_hands_its_token_over_as_a_cookie_for_the_stream_only(quiet_dashboard: Dashboard) -> None:
    async with httpx.AsyncClient(base_url=quiet_dashboard.url, timeout=10) as client:
        refused = await client.post("/dashboard/api/events/token",
                                    headers={"Authorization": f"Bearer {mint('c-1', ('customer',))}"})
        assert refused.status_code == 403 and STREAM_COOKIE not in refused.cookies
        response = await client.post("/dashboard/api/events/token",
                                     headers={"Authorization": f"Bearer {admin_token()}"})
        assert response.status_code == 204
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/dashboard/api/events" in cookie
        # No header now: the cookie (the client keeps it, as a browser would) opens the stream.
        async with client.stream("GET", STREAM) as stream:
            assert stream.status_code == 200
            reader = SseReader(stream)
            assert (await reader.next()).event == "status"
            await reader.close()
        assert (await client.delete("/dashboard/api/events/token")).status_code == 204
        assert (await client.get(STREAM)).status_code == 401


# --- what it says -------------------------------------------------------------------------------------------------


async def test_without_nats_it_answers_and_says_it_is_not_live(quiet_dashboard: Dashboard) -> None:
    async with quiet_dashboard.stream(admin_token()) as reader:
        status = await reader.next()
        assert status.event == "status" and status.data["live"] is False
        assert "not configured" in status.data["detail"]
        await reader.heartbeat()  # the stream stays open, heartbeats flow
        await reader.heartbeat()


async def test_events_arrive_as_they_are_published(bus_dashboard: Dashboard, connect_as: ConnectAs) -> None:  # noqa: F811
    orchestrator = await connect_as("saga_orchestrator")
    async with bus_dashboard.stream(admin_token()) as reader:
        await reader.until(live)
        body = saga_completed("saga-42")
        await orchestrator.nc.publish("events.saga.completed.v1", body)
        frame = await reader.until(lambda f: f.event == "message")
    assert frame.data == json.loads(body)
    assert frame.data["type"] == "saga.completed.v1" and frame.data["subject"] == "saga-42"


async def test_a_page_gets_only_the_families_it_asked_for(bus_dashboard: Dashboard, connect_as: ConnectAs) -> None:  # noqa: F811
    orchestrator = await connect_as("saga_orchestrator")
    shipments = await connect_as("shipment_service")
    async with bus_dashboard.stream(admin_token(), "?family=saga") as reader:
        await reader.until(live)
        await shipments.nc.publish("events.shipment.created.v1", shipment_created())
        await orchestrator.nc.publish("events.saga.completed.v1", saga_completed())
        frame = await reader.until(lambda f: f.event == "message")
    assert frame.data["type"] == "saga.completed.v1"  # the shipment event, published first, was not sent


async def test_one_subscription_serves_every_page(bus_dashboard: Dashboard, nats_server: NatsServer) -> None:  # noqa: F811
    async with contextlib.AsyncExitStack() as pages:
        readers = [await pages.enter_async_context(bus_dashboard.stream(admin_token())) for _ in range(3)]
        for reader in readers:
            await reader.until(live)
        assert len(bus_dashboard.feed.listeners) == 3
        assert await gateway_subscriptions(nats_server) == ["events.>"]
    await _until(lambda: not bus_dashboard.feed.listeners)  # every page gone: every queue freed
    # ... and nobody listening, the gateway takes no event off the bus at all.
    await _until_async(lambda: _none(gateway_subscriptions(nats_server)))


async def gateway_subscriptions(server: NatsServer) -> list[str]:
    """The gateway's subscriptions on the server (its inboxes left out), from the monitoring port."""
    async with httpx.AsyncClient(timeout=5) as monitor:
        connz = await monitor.get(f"{server.monitor_url}/connz", params={"subs": "detail", "auth": "true"})
    gateway = [c for c in connz.json()["connections"] if c.get("authorized_user") == GATEWAY_USER]
    assert len(gateway) == 1
    return [sub["subject"] for sub in gateway[0].get("subscriptions_list_detail") or []
            if not sub["subject"].startswith("_INBOX")]


async def _none(subscriptions: Awaitable[list[str]]) -> bool:
    return not await subscriptions


async def _until_async(probe: Callable[[], Awaitable[bool]], within: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await probe():
        assert asyncio.get_running_loop().time() < deadline, "not within the time"
        await asyncio.sleep(0.05)


async def test_a_page_that_leaves_frees_its_queue(bus_dashboard: Dashboard) -> None:
    async with bus_dashboard.stream(admin_token()) as reader:
        await reader.until(live)
        assert len(bus_dashboard.feed.listeners) == 1
    await _until(lambda: not bus_dashboard.feed.listeners)


async def test_a_slow_page_loses_its_oldest_events_and_is_told_to_resync(nats_server: NatsServer,  # noqa: F811
                                                                        connect_as: ConnectAs) -> None:  # noqa: F811
    """The queue is the bound: a page that has not read while 10 events came keeps the newest 4 and a resync."""
    feed = LiveFeed(nats_server.bus_config(GATEWAY_USER), queue_events=4)
    feed.start()
    try:
        await _until(lambda: feed.nc is not None and feed.nc.is_connected)
        assert not feed.status.live  # connected, but nobody listens: no subscription
        await feed.wanted()  # a page is about to listen
        assert feed.status.live
        orchestrator = await connect_as("saga_orchestrator")
        with feed.listen() as listener:
            assert [json.loads(f.split(b"data: ", 1)[1])["live"] for f in await listener.next_frames(0)] == [True]
            for n in range(10):
                await orchestrator.nc.publish("events.saga.completed.v1", saga_completed(f"saga-{n}"))
            await orchestrator.nc.flush()
            await _until(lambda: listener._dropped == 6)
            frames = await listener.next_frames(0)
        assert frames[0].startswith(b"event: resync\n")
        assert json.loads(frames[0].split(b"data: ", 1)[1])["dropped"] == 6
        assert [json.loads(f.split(b"data: ", 1)[1])["subject"] for f in frames[1:]] == [
            f"saga-{n}" for n in range(6, 10)]
        assert not feed.listeners
    finally:
        await feed.stop()


async def test_the_bus_going_away_and_back_is_said(bus_dashboard: Dashboard, nats_server: NatsServer,  # noqa: F811
                                                   connect_as: ConnectAs) -> None:  # noqa: F811
    async with bus_dashboard.stream(admin_token()) as reader:
        await reader.until(live)
        nats_server.stop()
        down = await reader.until(lambda f: f.event == "status", within=10)
        assert down.data["live"] is False
        nats_server.start()
        await asyncio.to_thread(nats_server.wait_ready)
        await reader.until(live, within=15)  # the page reloads what it shows: it missed what came meanwhile
        orchestrator = await connect_as("saga_orchestrator")
        await orchestrator.nc.publish("events.saga.completed.v1", saga_completed("after"))
        frame = await reader.until(lambda f: f.event == "message")
    assert frame.data["subject"] == "after"


async def test_a_stream_opened_while_the_bus_is_down_answers_and_goes_live_when_it_is_back(
    nats_server: NatsServer,  # noqa: F811
) -> None:
    nats_server.stop()
    async with running(LiveFeed(nats_server.bus_config(GATEWAY_USER), heartbeat_secs=0.3)) as dashboard:
        async with dashboard.stream(admin_token()) as reader:
            first = await reader.next()
            assert first.event == "status" and first.data["live"] is False
            nats_server.start()
            await asyncio.to_thread(nats_server.wait_ready)
            await reader.until(live, within=15)


async def test_an_expired_token_ends_the_stream(quiet_dashboard: Dashboard) -> None:
    async with quiet_dashboard.stream(admin_token()) as reader:
        await reader.next()
        quiet_dashboard.now[0] += ADMIN_TOKEN_SECS + 1  # the verifier's clock: the token has expired
        ended = await reader.until(lambda f: f.event == "auth")
        assert ended.data["status"] == 401
        with pytest.raises(EOFError):
            await reader.next()
    await _until(lambda: not quiet_dashboard.feed.listeners)


async def _until(condition: Callable[[], bool], within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.02)



async def test_the_gateway_streams_through_its_middleware_unbuffered(nats_server: NatsServer,  # noqa: F811
                                                                     connect_as: ConnectAs) -> None:  # noqa: F811
    """The whole gateway app (body limit, request log and metrics, fault injection) with its own feed as the
    `gateway` user: each frame reaches the page while the response is still open."""
    gateway_bus = nats_server.bus_config(GATEWAY_USER)
    app = create_app(quiet_settings(nats_url=gateway_bus.url, nats_user=gateway_bus.user,
                                    nats_password=gateway_bus.password, fault_injection=True,
                                    dashboard_heartbeat_secs=0.3))
    async with serving(app) as gateway:
        app.state.verifier.use_keys(JWKS)
        dashboard = Dashboard(gateway.url, app.state.live_feed, app.state.verifier, [time.time()])
        orchestrator = await connect_as("saga_orchestrator")
        async with dashboard.stream(admin_token(), "?family=saga") as reader:
            await reader.until(live)
            assert reader.response.headers["cache-control"] == "no-store"
            assert reader.response.headers["x-accel-buffering"] == "no"
            for n in range(3):
                await orchestrator.nc.publish("events.saga.completed.v1", saga_completed(f"through-{n}"))
                frame = await reader.until(lambda f: f.event == "message")
                assert frame.data["subject"] == f"through-{n}"
            await reader.heartbeat()
