"""The dashboard's live view: one NATS subscription to every event per gateway process, fanned out to each open
page's Server-Sent Events stream (dashboard/router.py) through a bounded queue of its own.

The gateway connects as the bus's `gateway` user, which may only listen. The subscription is core NATS, not a
JetStream consumer: a page that was not connected missed nothing it needs, since it reloads what it shows whenever
it (re)connects or is told to. A page that reads slower than events arrive loses its oldest ones and is sent a
`resync` instead, so its queue never grows past `queue_events`; a page that goes away takes its queue with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Counter, Gauge

from shared.bus import BusConfig, connect
from shared.events import SUBJECT_ROOT

log = structlog.get_logger(__name__)

# A page's queue: events beyond this (a page that reads slower than they come) push out the oldest.
QUEUE_EVENTS = 256
# Comments this often keep proxies from closing a quiet stream, and the caller's token is checked again.
HEARTBEAT_SECS = 15.0
# How often the feed looks whether its connection dropped or came back (shared.bus.connect takes no callbacks).
WATCH_SECS = 0.5

CLIENTS = Gauge("dashboard_live_clients", "Dashboard pages connected to the live event stream")
DROPPED = Counter("dashboard_live_dropped_total", "Events a slow dashboard page lost (it was told to resync)")


@dataclass(frozen=True)
class FeedStatus:
    live: bool
    detail: str

    def frame(self) -> bytes:
        return sse_frame(json.dumps({"live": self.live, "detail": self.detail}).encode(), event="status")


def sse_frame(data: bytes, event: str | None = None) -> bytes:
    """One Server-Sent Event: `data` must be one line (compact JSON is)."""
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + data + b"\n\n"


def resync_frame(dropped: int) -> bytes:
    detail = f"{dropped} event(s) were dropped: this page read slower than they came."
    return sse_frame(json.dumps({"dropped": dropped, "detail": detail}).encode(), event="resync")


class Listener:
    """One page's queue: events of the families it asked for (all when empty), its feed's status changes."""

    def __init__(self, size: int, families: frozenset[str], status: FeedStatus) -> None:
        self.families = families
        self._frames: deque[bytes] = deque(maxlen=size)
        self._dropped = 0
        self._status: FeedStatus | None = status  # a change not yet sent: the first frame of every stream
        self.live = status.live  # what this page was last told
        self._wake = asyncio.Event()
        self._wake.set()

    def offer(self, family: str, frame: bytes) -> None:
        if self.families and family not in self.families:
            return
        if len(self._frames) == self._frames.maxlen:
            self._dropped += 1  # the deque pushes the oldest out
            DROPPED.inc()
        self._frames.append(frame)
        self._wake.set()

    def tell(self, status: FeedStatus) -> None:
        self._status = status
        self.live = status.live
        self._wake.set()

    async def next_frames(self, wait_secs: float) -> list[bytes]:
        """What arrived since the last call, waiting at most `wait_secs` for something (else [])."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), wait_secs)
        self._wake.clear()
        frames: list[bytes] = []
        if self._status is not None:
            frames.append(self._status.frame())
            self._status = None
        if self._dropped:
            frames.append(resync_frame(self._dropped))
            self._dropped = 0
        frames.extend(self._frames)
        self._frames.clear()
        return frames


class LiveFeed:
    """The gateway's one subscription to `events.>` (None config: the bus is not configured, never live).

    The connection is kept from start to stop; the subscription only while a page listens: a gateway nobody watches
    through the dashboard receives no event (each would cost it a message to parse, every event of the fleet)."""

    def __init__(self, config: BusConfig | None, *, queue_events: int = QUEUE_EVENTS,
                 heartbeat_secs: float = HEARTBEAT_SECS) -> None:
        self.config = config
        self.queue_events = queue_events
        self.heartbeat_secs = heartbeat_secs
        self.listeners: set[Listener] = set()
        self.nc: NATS | None = None
        self._subscription: Subscription | None = None
        self._lock = asyncio.Lock()
        self._detail = "connecting to the bus" if config else "the bus is not configured (NATS_URL)"
        self._task: asyncio.Task[None] | None = None

    @property
    def status(self) -> FeedStatus:
        if self._subscription is not None and self.nc is not None and self.nc.is_connected:
            return FeedStatus(True, "")
        if self._subscription is not None:
            return FeedStatus(False, "the bus connection was lost: reconnecting")
        if self.nc is not None and self.nc.is_connected:
            return FeedStatus(False, "subscribing to the bus")
        return FeedStatus(False, self._detail)

    def start(self) -> None:
        if self.config is not None and self._task is None:
            self._task = asyncio.create_task(self._run(self.config), name="dashboard-live-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
            self.nc = None
        self._subscription = None

    async def wanted(self) -> None:
        """A page is about to listen: subscribe now if the bus is there (so its first frame can say live)."""
        await self._follow_listeners(wanted=True)

    @contextlib.contextmanager
    def listen(self, families: frozenset[str] = frozenset()) -> Iterator[Listener]:
        """A page's queue for as long as its stream is open."""
        listener = Listener(self.queue_events, families, self.status)
        self.listeners.add(listener)
        CLIENTS.inc()
        try:
            yield listener
        finally:
            self.listeners.discard(listener)
            CLIENTS.dec()

    async def _follow_listeners(self, wanted: bool = False) -> None:
        """One subscription while anyone listens (or is about to), none otherwise."""
        async with self._lock:
            listened = wanted or bool(self.listeners)
            if listened and self._subscription is None and self.nc is not None and self.nc.is_connected:
                try:
                    # One subscription for every page; nats-py subscribes again by itself after a reconnect.
                    self._subscription = await self.nc.subscribe(f"{SUBJECT_ROOT}.>", cb=self._deliver)
                    await self.nc.flush(timeout=5)
                    log.info("dashboard live feed subscribed", user=self.config.user if self.config else "")
                except Exception as error:  # refused, or the connection lost meanwhile: the watch tries again
                    log.warning("dashboard live feed cannot subscribe", error=repr(error))
                    self._subscription = None
            elif not listened and self._subscription is not None:
                subscription, self._subscription = self._subscription, None
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()

    async def _run(self, config: BusConfig) -> None:
        delay = 0.5
        while self.nc is None:
            try:
                self.nc = await connect(config, on_error=self._bus_error)
                log.info("dashboard live feed connected", url=config.url, user=config.user)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the server not up yet, or refusing the user: try again
                self._detail = f"the bus is unreachable: {type(error).__name__}"
                log.warning("dashboard live feed cannot connect", url=config.url, error=repr(error))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        while True:
            await self._follow_listeners()
            status = self.status
            for listener in self.listeners:
                if listener.live != status.live:
                    # Back from a reconnect, a page reloads what it shows (core NATS kept nothing for it meanwhile).
                    listener.tell(status)
            await asyncio.sleep(WATCH_SECS)

    async def _bus_error(self, error: Exception) -> None:
        # One line per connection error (nats-py's default logs a traceback for each reconnect attempt).
        log.warning("dashboard live feed: bus connection error", error=repr(error))

    async def _deliver(self, message: Msg) -> None:
        data = message.data
        if b"\n" in data or b"\r" in data:  # an SSE data line is one line; the relays publish compact JSON
            try:
                data = json.dumps(json.loads(data), separators=(",", ":")).encode()
            except ValueError:
                log.warning("dashboard live feed skipped a message that is not JSON", subject=message.subject)
                return
        family = message.subject.split(".", 2)[1] if message.subject.count(".") >= 2 else ""
        frame = sse_frame(data)
        for listener in self.listeners:
            listener.offer(family, frame)
