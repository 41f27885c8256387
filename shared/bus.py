"""The event bus, one way for every service: the outbox written with the change, the relay that publishes it onto
NATS JetStream, and the consumers that apply what others published, each once.

- `emit(tx, data, subject=…, order_id=…)` writes the event into the service's `outbox` table in the route's own
  transaction: no event without its change, no change without its event.
- `OutboxRelay` publishes the outbox in commit order, waits for each PubAck and deletes what was acknowledged.
  `Nats-Msg-Id` is the event's id, so a relay killed between the publish and the delete publishes again a
  duplicate that JetStream drops. One relay per database at a time: on PostgreSQL a pass holds a transaction-level
  advisory lock, so two replicas never publish one outbox out of order (SQLite's BEGIN IMMEDIATE does the same).
- `Consumer` is a durable pull consumer: the handler's effect and an `inbox` row (the event's id, unique per
  consumer) commit in one transaction, then the message is acked; a repeat finds the row and changes nothing. A
  handler that fails is retried with backoff up to `bus_max_deliver` deliveries, then the message goes to the
  dead-letter stream (`deadletter.<package>.<consumer>`), where `customer-service events dead-letters` shows and
  replays it.
- `Bus` is the service's connection, with its own NATS user, which may publish only its own subjects.

The bus is never needed to serve a request: with NATS down the outbox grows (`events_outbox_backlog`) and drains
when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import JSON, BigInteger, Column, Integer, MetaData, String, Table, bindparam, delete, func, select
from sqlalchemy.sql.expression import Executable

from shared.db import Database, Tx, UTCDateTime, conflict_insert, utc_now
from shared.events import (
    DEAD_LETTER_ROOT,
    DEAD_LETTER_STREAM,
    EVENTS_STREAM,
    SUBJECT_ROOT,
    CloudEvent,
    EventData,
    dead_letter_subject,
    durable_name,
    envelope,
)

log = structlog.get_logger(__name__)

OUTBOX_BACKLOG = Gauge("events_outbox_backlog", "Events written but not yet published (the outbox's rows)")
PUBLISHED = Counter("events_published_total", "Events the relay published and JetStream acknowledged")
DUPLICATES = Counter("events_duplicates_total", "Re-published events JetStream dropped as duplicates")
RELAY_FAILURES = Counter("events_relay_failures_total", "Relay passes that failed (the bus unreachable, …)")
CONSUMED = Counter("events_consumed_total", "Events a consumer applied", ["consumer"])
REPEATS = Counter("events_repeats_total", "Events a consumer had applied already (acked, nothing changed)",
                  ["consumer"])
CONSUMER_FAILURES = Counter("events_consumer_failures_total", "Deliveries whose handler failed", ["consumer"])
DEAD_LETTERED = Counter("events_dead_lettered_total", "Events sent to the dead-letter stream", ["consumer"])
# Fine between 50 ms and 2.5 s, where the budget's p99 (under 1 s at 64 clients) is read, and not too coarse above (a
# consumer behind by seconds): a quantile is interpolated within its bucket, so it is only as exact as the bucket.
LAG = Histogram("events_lag_seconds", "From the event's time (its commit) to a consumer's effect", ["consumer"],
                buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 2.5, 5, 7.5,
                         10, 15, 20, 30, 45, 60))

# How long the bus keeps events (a consumer away longer than this misses them) and dead letters.
EVENTS_MAX_AGE = timedelta(days=7)
DEAD_LETTERS_MAX_AGE = timedelta(days=30)
# JetStream drops a message whose Nats-Msg-Id it has seen within this window (its default).
DUPLICATE_WINDOW = timedelta(minutes=2)
# Events published per relay transaction at most.
RELAY_BATCH = 256
# A relay woken by a commit waits this long before its pass, so the commits of a busy moment go in one pass (a pass
# costs a transaction and its statements whether it publishes one event or fifty).
COALESCE_SECS = 0.05
# A consumer's batch: the next event and what is already waiting behind it, at most this many, applied in one
# transaction; waiting at most FETCH_MORE_SECS for the rest when nothing is waiting.
FETCH_BATCH = 64
FETCH_MORE_SECS = 0.02
# How long a stopping process gives its connection to say its last acks and close.
CLOSE_SECS = 2.0
# An arbitrary constant: the key of the advisory lock a relay pass holds (one relay per outbox).
_RELAY_LOCK_KEY = 0x6F7574626F78


# --- the tables ------------------------------------------------------------------------------------------------


def outbox_table(metadata: MetaData) -> Table:
    """Every service adds this table to its metadata (its migrations create it). Rows leave once published."""
    return Table(
        "outbox",
        metadata,
        Column("position", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
        Column("id", String(64), nullable=False, unique=True),
        Column("subject", String(200), nullable=False),
        Column("envelope", JSON(), nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
    )


def inbox_table(metadata: MetaData) -> Table:
    """A consuming service's record of the events it applied: one row per (consumer, event id).

    Kept as long as the bus keeps events (EVENTS_MAX_AGE): a redelivery can only come from the stream, and
    `prune_inbox` removes rows older than that."""
    return Table(
        "inbox",
        metadata,
        Column("consumer", String(64), primary_key=True),
        Column("event_id", String(64), primary_key=True),
        Column("received_at", UTCDateTime(), nullable=False, index=True),
    )


def relay_position_table(metadata: MetaData) -> Table:
    """Where a relay whose source is not an outbox (the orchestrator's event store) keeps how far it published."""
    return Table(
        "bus_relay_position",
        metadata,
        Column("relay", String(64), primary_key=True),
        Column("position", BigInteger(), nullable=False),
    )


outbox = outbox_table(MetaData())
inbox = inbox_table(MetaData())

_INSERT_OUTBOX = outbox.insert()
_PENDING = select(outbox.c.position, outbox.c.id, outbox.c.subject, outbox.c.envelope).order_by(
    outbox.c.position).limit(bindparam("o_limit"))
_SENT = delete(outbox).where(outbox.c.position.in_(bindparam("o_positions", expanding=True)))
_BACKLOG = select(func.count()).select_from(outbox)
_RELAY_LOCK = select(func.pg_try_advisory_xact_lock(bindparam("o_key", type_=BigInteger)))


@functools.cache
def _claim(count: int) -> Executable:
    """INSERT of `count` inbox rows (ON CONFLICT DO NOTHING) returning the ids that were new: one statement per
    batch, built once per batch size."""
    rows: list[dict[str, Any]] = [
        {"consumer": bindparam(f"c{i}"), "event_id": bindparam(f"e{i}"), "received_at": bindparam(f"t{i}")}
        for i in range(count)]
    return conflict_insert(inbox).values(rows).on_conflict_do_nothing().returning(inbox.c.event_id)


def _claim_params(consumer: str, event_ids: list[str], at: datetime) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for i, event_id in enumerate(event_ids):
        params[f"c{i}"], params[f"e{i}"], params[f"t{i}"] = consumer, event_id, at
    return params
_PRUNE_INBOX = delete(inbox).where(inbox.c.received_at < bindparam("i_before"))


# --- writing an event ------------------------------------------------------------------------------------------

# Set after a transaction that wrote events commits: the relay of this process publishes at once.
_written = asyncio.Event()


def wake_relay() -> None:
    """Tell this process's relay that events were committed (it publishes them at once, not at its next poll)."""
    _written.set()


async def emit(tx: Tx, data: EventData, *, subject: str, order_id: str | None = None) -> CloudEvent:
    """Write the event into the outbox, in `tx`: published after the transaction commits, never if it rolls back."""
    event = envelope(data, subject, time=utc_now(), order_id=order_id)
    await tx.execute(_INSERT_OUTBOX, {"id": event.id, "subject": event.nats_subject,
                                      "envelope": event.model_dump(mode="json"), "created_at": event.time})
    tx.after_commit(wake_relay)
    return event


# --- the connection --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BusConfig:
    """Where the bus is and who this process is on it (ServiceSettings' NATS_* settings)."""

    url: str
    user: str = ""
    password: str = ""
    name: str = "customer-service"

    @property
    def inbox_prefix(self) -> str:
        # Replies (PubAcks, consumer pulls) come to an inbox only this user may subscribe to.
        return f"_INBOX_{self.user}" if self.user else "_INBOX"


async def connect(config: BusConfig, *, reconnect_forever: bool = True,
                  on_error: Callable[[Exception], Awaitable[None]] | None = None) -> NATS:
    """A connection that reconnects by itself. The first connect also retries, in the background of the caller's
    task, until the server answers. `on_error` hears each connection error (nats-py's default prints a traceback
    per error: the CLI says the last one in a line instead)."""
    options: dict[str, Any] = {
        "servers": [config.url], "name": config.name, "inbox_prefix": config.inbox_prefix,
        "max_reconnect_attempts": -1 if reconnect_forever else 3, "reconnect_time_wait": 0.5,
        "connect_timeout": 2, "allow_reconnect": True,
    }
    if on_error is not None:
        options["error_cb"] = on_error
    if config.user:
        options["user"], options["password"] = config.user, config.password
    return await nats.connect(**options)


async def ensure_streams(js: JetStreamContext) -> None:
    """The two streams, created when missing (a service's user may create them, never delete or purge them)."""
    for stream in (
        StreamConfig(name=EVENTS_STREAM, subjects=[f"{SUBJECT_ROOT}.>"], retention=RetentionPolicy.LIMITS,
                     storage=StorageType.FILE, max_age=EVENTS_MAX_AGE.total_seconds(),
                     duplicate_window=DUPLICATE_WINDOW.total_seconds(), discard=DiscardPolicy.OLD),
        StreamConfig(name=DEAD_LETTER_STREAM, subjects=[f"{DEAD_LETTER_ROOT}.>"], retention=RetentionPolicy.LIMITS,
                     storage=StorageType.FILE, max_age=DEAD_LETTERS_MAX_AGE.total_seconds(),
                     duplicate_window=DUPLICATE_WINDOW.total_seconds()),
    ):
        try:
            await js.stream_info(stream.name)  # type: ignore[arg-type]
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(stream)
            except nats.js.errors.BadRequestError:
                pass  # another service created it meanwhile


Runner = Callable[["Bus"], Coroutine[Any, Any, None]]


class Bus:
    """One per process: the connection (made in the background, retried until the server answers), the relay and
    the consumers. Nothing here blocks start-up or a request."""

    def __init__(self, config: BusConfig) -> None:
        self.config = config
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def _connect(self) -> None:
        delay = 0.5
        while True:
            try:
                self.nc = await connect(self.config)
                self.js = self.nc.jetstream(timeout=5)
                await ensure_streams(self.js)
                self._ready.set()
                log.info("bus connected", url=self.config.url, user=self.config.user)
                return
            except Exception as error:  # the server not up yet, or refusing: try again
                log.warning("bus unreachable", url=self.config.url, error=repr(error))
                if self.nc is not None:
                    with contextlib.suppress(Exception):
                        await self.nc.close()
                    self.nc = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def ready(self) -> JetStreamContext:
        await self._ready.wait()
        assert self.js is not None
        return self.js

    def start(self, *runners: Runner) -> None:
        self._tasks.append(asyncio.create_task(self._connect(), name="bus-connect"))
        for runner in runners:
            self._tasks.append(asyncio.create_task(runner(self), name=f"bus-{getattr(runner, 'name', 'runner')}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self.nc is not None:
            # Flush (the last acks) and close, not drain: nats-py's drain waits for every pull subscription's queue
            # to be marked done, which fetch() never does, so a consumer that had fetched held the shutdown for
            # drain_timeout (30 s; the fleet SIGKILLs after 15). Bounded all the same: the bench saw a close hang.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._close(self.nc), CLOSE_SECS)

    @staticmethod
    async def _close(nc: NATS) -> None:
        with contextlib.suppress(Exception):
            await nc.flush(timeout=1)
        await nc.close()


# --- test and drill faults (FAULT_INJECTION only) ----------------------------------------------------------------


@dataclass
class BusFaults:
    """Kill the process at the worst moment, once: a relay between its publish and its delete, a consumer between
    its commit and its ack. Set through the service's test-only /_faults/bus."""

    crash_after_publish: bool = False
    crash_before_ack: str = ""  # a consumer's name

    @staticmethod
    def crash(where: str) -> None:
        log.warning("fault injected: the process is killed", where=where)
        os.kill(os.getpid(), signal.SIGKILL)


FAULTS = BusFaults()


# --- the relay --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """One event to publish: its NATS subject, its CloudEvent as JSON, its id (the Nats-Msg-Id)."""

    id: str
    subject: str
    body: bytes


class RelaySource(Protocol):
    """What a relay publishes from: the service's outbox table, or the orchestrator's event store."""

    async def pending(self, tx: Tx, limit: int) -> tuple[list[Outgoing], Any, bool]:
        """The next events in order, a marker of how far they reach (None: nothing further) and whether more may
        follow (the limit was reached)."""

    async def sent(self, tx: Tx, marker: Any) -> None:
        """Everything up to the marker is published (in the same transaction as `pending`)."""

    async def backlog(self, tx: Tx) -> int:
        """How many are still to publish."""


class OutboxSource:
    """A relay's source: the service's outbox table."""

    async def pending(self, tx: Tx, limit: int) -> tuple[list[Outgoing], Any, bool]:
        rows = await tx.fetch(_PENDING, {"o_limit": limit})
        events = [Outgoing(row["id"], row["subject"], _json(row["envelope"])) for row in rows]
        return events, [row["position"] for row in rows] or None, len(rows) == limit

    async def sent(self, tx: Tx, marker: Any) -> None:
        await tx.execute(_SENT, {"o_positions": marker})

    async def backlog(self, tx: Tx) -> int:
        return int(await tx.fetchval(_BACKLOG) or 0)


def _json(value: Any) -> bytes:
    if isinstance(value, str):  # SQLite's JSON comes back decoded; asyncpg's codec decodes too, but be sure
        return value.encode()
    return json.dumps(value, separators=(",", ":")).encode()


class OutboxRelay:
    """Publishes a source's events in order, whenever the process wrote some and every `poll_secs` (another
    replica's writes, a backlog left while the bus was down)."""

    name = "relay"

    def __init__(self, db: Database, source: RelaySource | None = None, poll_secs: float = 1.0) -> None:
        self.db = db
        self.source: RelaySource = source or OutboxSource()
        self.poll_secs = poll_secs

    async def __call__(self, bus: Bus) -> None:
        failures = 0
        while True:
            try:
                if bus.js is not None and bus.connected:
                    await self.drain(bus.js)
                else:  # the bus away: the backlog is what an operator watches
                    await self.measure()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                RELAY_FAILURES.inc()
                log.warning("relay pass failed", error=repr(error), failures=failures)
                with contextlib.suppress(Exception):
                    await self.measure()
                await asyncio.sleep(min(0.2 * 2 ** failures, 5.0))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_written.wait(), self.poll_secs)
                await asyncio.sleep(COALESCE_SECS)
            _written.clear()

    async def measure(self) -> None:
        async with self.db.autocommit() as tx:
            OUTBOX_BACKLOG.set(await self.source.backlog(tx))

    async def drain(self, js: JetStreamContext) -> int:
        """Publish until the source is empty (or another replica holds the lock); the number published."""
        published = 0
        while True:
            async with self.db.transaction() as tx:
                if tx.dialect == "postgresql" and not await tx.fetchval(_RELAY_LOCK, {"o_key": _RELAY_LOCK_KEY}):
                    return published  # another replica is relaying this outbox
                events, marker, more = await self.source.pending(tx, RELAY_BATCH)
                if marker is None:
                    OUTBOX_BACKLOG.set(0)
                    return published
                await publish_in_order(js, events)
                if FAULTS.crash_after_publish:
                    FAULTS.crash("relay: published, not yet marked sent")
                await self.source.sent(tx, marker)
                published += len(events)
                # A short batch was the whole backlog: no second transaction to find the outbox empty.
                OUTBOX_BACKLOG.set(await self.source.backlog(tx) if more else 0)
                if not more:
                    return published


async def publish_in_order(js: JetStreamContext, events: Sequence[Outgoing], ack_secs: float = 5.0) -> None:
    """Every event sent at once, in order, on the one connection, then every PubAck awaited (raises unless all came).

    JetStream stores a stream's messages in the order they arrive, and one connection delivers them in the order they
    were sent, so the stream holds them in this order without a round trip per event (the relay of a busy process
    waited for its event loop between each PubAck and the next publish: the orchestrator's fell behind its sagas).
    A refusal is the stream's (its limits, its name) and refuses what follows alike; a lost connection loses what
    follows too: the batch is sent again, whatever was stored dropped as a duplicate."""
    futures: list[asyncio.Future[Any]] = []
    try:
        for event in events:
            futures.append(await js.publish_async(event.subject, event.body, stream=EVENTS_STREAM,
                                                  headers={"Nats-Msg-Id": event.id}))
        answers = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), ack_secs)
    finally:
        for future in futures:
            if not future.done():
                future.cancel()  # frees its place among nats-py's pending publishes
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
        (DUPLICATES if answer.duplicate else PUBLISHED).inc()


# --- consumers --------------------------------------------------------------------------------------------------

# A consumer's handler: the events of one fetched batch that it has not applied before, in stream order, applied in the
# consumer's transaction (it may write them with one statement for the batch).
Handler = Callable[[Tx, list[CloudEvent]], Awaitable[None]]


class Consumer:
    """A durable pull consumer of the EVENTS stream that applies each event once (see the module's docstring)."""

    def __init__(self, db: Database, package: str, name: str, filter_subject: str, handle: Handler,
                 max_deliver: int = 5, ack_wait_secs: float = 30.0, clock: Callable[[], Any] = utc_now) -> None:
        self.db = db
        self.package = package
        self.name = name
        self.durable = durable_name(package, name)
        self.filter_subject = filter_subject
        self.handle = handle
        self.max_deliver = max_deliver
        self.ack_wait_secs = ack_wait_secs
        self.clock = clock

    async def __call__(self, bus: Bus) -> None:
        js = await bus.ready()
        while True:
            try:
                subscription = await js.pull_subscribe(
                    self.filter_subject, durable=self.durable, stream=EVENTS_STREAM,
                    config=ConsumerConfig(durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT,
                                          ack_wait=self.ack_wait_secs, max_deliver=self.max_deliver + 1,
                                          max_ack_pending=1000),
                    inbox_prefix=f"{bus.config.inbox_prefix}.{self.durable}".encode())
                break
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("consumer could not subscribe", consumer=self.durable, error=repr(error))
                await asyncio.sleep(1)
        while True:
            try:
                # Wait for the next event alone (a fetch of many lingers until its batch is full or its time is out:
                # seconds of lag on a quiet bus), then take at once whatever else is there already.
                messages = await subscription.fetch(batch=1, timeout=5)
            except TimeoutError:  # nats-py raises its own and asyncio's: both are TimeoutError
                continue
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the connection lost: the client reconnects, fetch again
                log.warning("consumer fetch failed", consumer=self.durable, error=repr(error))
                await asyncio.sleep(0.5)
                continue
            try:
                messages += await subscription.fetch(batch=FETCH_BATCH - 1, timeout=FETCH_MORE_SECS)
            except asyncio.CancelledError:
                raise
            except Exception:  # nothing more at once (a timeout), or the connection lost: the first goes on alone
                pass
            try:
                await self.deliver_batch(js, messages)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # an ack or a nak lost with the connection: those come again after ack_wait
                log.warning("consumer could not settle its batch", consumer=self.durable, error=repr(error))

    async def deliver_batch(self, js: JetStreamContext, messages: list[Msg]) -> None:
        """A fetched batch applied in one transaction (one commit for many events: under load the consumer keeps
        up at a fraction of the cost of a transaction each); when any of them fails, each on its own, so only the
        failing one is retried and dead-lettered."""
        try:
            applied = await self.apply(*(message.data for message in messages))
        except asyncio.CancelledError:
            raise
        except Exception:
            if len(messages) == 1:
                await self.deliver(js, messages[0])
                return
            for message in messages:
                await self.deliver(js, message)
            return
        await self.acknowledge(messages, applied)

    async def deliver(self, js: JetStreamContext, message: Msg) -> None:
        delivered = message.metadata.num_delivered
        try:
            applied = await self.apply(message.data)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            CONSUMER_FAILURES.labels(self.durable).inc()
            log.warning("event not applied", consumer=self.durable, subject=message.subject, delivered=delivered,
                        error=repr(error))
            if delivered >= self.max_deliver:
                await self.dead_letter(js, message, error)
                await message.term()
            else:
                await message.nak(delay=min(0.2 * 2 ** delivered, 10.0))
            return
        await self.acknowledge([message], applied)

    async def acknowledge(self, messages: list[Msg], applied: list[bool]) -> None:
        if FAULTS.crash_before_ack == self.name:
            FAULTS.crash(f"consumer {self.durable}: committed, not yet acked")
        for message, new in zip(messages, applied, strict=True):
            await message.ack()
            (CONSUMED if new else REPEATS).labels(self.durable).inc()

    async def apply(self, *bodies: bytes) -> list[bool]:
        """The handler's effect and the inbox rows of the events, all in one transaction (one statement for the inbox
        rows); for each event, False when it was applied before (a redelivery, or the same event twice here)."""
        received = [CloudEvent.model_validate_json(body) for body in bodies]
        firsts = list({event.id: event for event in reversed(received)}.values())[::-1]  # each id once, in order
        async with self.db.transaction() as tx:
            now = self.clock()
            claimed = await tx.fetch(_claim(len(firsts)), _claim_params(self.durable, [e.id for e in firsts], now))
            fresh = {row["event_id"] for row in claimed}
            new = [event for event in firsts if event.id in fresh]
            if new:
                await self.handle(tx, new)
        committed = self.clock()
        lag = LAG.labels(self.durable)
        for event in new:
            lag.observe(max(0.0, (committed - event.time).total_seconds()))
        applied, seen = [], set()
        for event in received:
            applied.append(event.id in fresh and event.id not in seen)
            seen.add(event.id)
        return applied

    async def dead_letter(self, js: JetStreamContext, message: Msg, error: BaseException) -> None:
        headers = {
            "Nats-Msg-Id": f"{message.metadata.sequence.stream}:{self.durable}",
            "CS-Consumer": self.durable,
            "CS-Subject": message.subject,
            "CS-Stream-Sequence": str(message.metadata.sequence.stream),
            "CS-Error": repr(error)[:500],
            "CS-Deliveries": str(message.metadata.num_delivered),
        }
        await js.publish(dead_letter_subject(self.package, self.name), message.data, stream=DEAD_LETTER_STREAM,
                         headers=headers)
        DEAD_LETTERED.labels(self.durable).inc()
        log.error("event dead-lettered", consumer=self.durable, subject=message.subject, error=repr(error))


async def prune_inbox(db: Database, now: datetime, older_than: timedelta = EVENTS_MAX_AGE) -> int:
    """Remove the inbox rows the stream can no longer redeliver (older than it keeps events); how many."""
    async with db.transaction() as tx:
        return await tx.execute(_PRUNE_INBOX, {"i_before": now - older_than})


class InboxPruner:
    """Keeps a consuming service's inbox bounded: at start and then every `every_secs`, the rows older than the
    stream's retention go (a redelivery of them is impossible: the stream no longer has them)."""

    name = "inbox-pruner"

    def __init__(self, db: Database, every_secs: float = 3600.0, clock: Callable[[], datetime] = utc_now) -> None:
        self.db = db
        self.every_secs = every_secs
        self.clock = clock

    async def __call__(self, bus: Bus) -> None:
        while True:
            try:
                removed = await prune_inbox(self.db, self.clock())
                if removed:
                    log.info("inbox pruned", removed=removed)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the database away: next time
                log.warning("inbox not pruned", error=repr(error))
            await asyncio.sleep(self.every_secs)

