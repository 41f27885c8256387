"""The saga event store: an `eventsourcing` application on PostgreSQL or SQLite, driven from worker threads.

`eventsourcing` is synchronous, so every call into it runs on a small thread pool of its own and
never on the event loop. Its PostgreSQL recorder serializes writers (a table lock, or with the
database functions a NOTIFY, held until commit), so each write costs one commit's wait on its own:
callers group the events of one transition into one `save()`, and saves that arrive while a write
is under way are written together in the next one (group commit), one transaction for many sagas.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar
from uuid import UUID

import structlog
from eventsourcing.application import AggregateNotFoundError, Application, project_aggregate
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import IntegrityError, Notification
from sqlalchemy.engine import make_url
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_random_exponential

from saga_orchestrator.domain import Saga
from saga_orchestrator.metrics import EVENT_STORE_EVENTS, EVENT_STORE_SAVES, EVENT_STORE_WRITES
from shared.bus import wake_relay

log = structlog.get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class SagaApplication(Application[UUID]):
    """The one door to the saga events (tables `sagas_events` on PostgreSQL, `stored_events` on SQLite)."""

    name = "Sagas"


class ConcurrentSagaUpdate(Exception):
    """Another writer saved this saga first (optimistic concurrency): stop driving it."""


# Saves written together in one transaction at most (a bound on one INSERT's size, not a tuning knob).
MAX_SAVES_PER_WRITE = 256
# Histories of sagas born in this process kept in memory (oldest out first): enough for every saga in
# flight plus the ones just finished, whose `Prefer: wait` answer is rendered from here.
RECENT_HISTORIES = 512


@dataclass
class _PendingSave:
    saga_id: UUID
    events: Sequence[DomainEventProtocol[UUID]]
    done: asyncio.Future[None]


def eventsourcing_env(database_url: str, pool_size: int = 5) -> dict[str, str]:
    """The library's persistence settings, derived from the service's own DATABASE_URL."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": url.database or "postgres",
            "POSTGRES_HOST": url.host or "127.0.0.1",
            "POSTGRES_PORT": str(url.port or 5432),
            "POSTGRES_USER": url.username or "postgres",
            "POSTGRES_PASSWORD": url.password or "",
            # Inserts through a database function: measured ~2x the saves per second.
            "POSTGRES_ENABLE_DB_FUNCTIONS": "y",
            "POSTGRES_POOL_SIZE": str(pool_size),
            "POSTGRES_MAX_OVERFLOW": str(pool_size),
            # No ping before each use (a round trip per save and read, ~5 % of the orchestrator's CPU under
            # load): the recorder already retries a call whose connection turns out to be broken.
            "POSTGRES_PRE_PING": "n",
            "POSTGRES_CONNECT_TIMEOUT": "10",
            "POSTGRES_LOCK_TIMEOUT": "10",
        }
    if backend == "sqlite":
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": url.database or ":memory:",
            "SQLITE_LOCK_TIMEOUT": "30",
        }
    raise ValueError(f"the saga event store supports PostgreSQL and SQLite, not {backend!r}")


@dataclass(frozen=True)
class FeedItem:
    id: int
    originator_id: str
    originator_version: int
    topic: str
    type: str
    timestamp: datetime | None
    state: dict[str, Any]


class SagaStore:
    """Async facade of `SagaApplication`; one per process."""

    def __init__(self, database_url: str, threads: int = 4) -> None:
        self.env = eventsourcing_env(database_url, pool_size=threads)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="event-store")
        self._app: SagaApplication | None = None
        self._queue: list[_PendingSave] = []
        self._writer: asyncio.Task[None] | None = None
        # saga id → (the aggregate, every event saved for it), when all of them were saved by this process
        self._recent: OrderedDict[UUID, tuple[Saga, list[DomainEventProtocol[UUID]]]] = OrderedDict()

    @property
    def app(self) -> SagaApplication:
        if self._app is None:
            raise RuntimeError("the saga store is not open")
        return self._app

    async def _run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def open(self) -> None:
        # Replicas starting together race to create the tables and functions: try again a few times.
        retrying = AsyncRetrying(stop=stop_after_delay(30), wait=wait_random_exponential(multiplier=0.2, max=2),
                                 retry=retry_if_exception_type(Exception), reraise=True)
        async for attempt in retrying:
            with attempt:
                self._app = await self._run(SagaApplication, self.env)
        log.info("saga event store open", persistence=self.env["PERSISTENCE_MODULE"])

    async def close(self) -> None:
        app, self._app = self._app, None
        if app is not None:
            await self._run(app.close)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def save(self, saga: Saga) -> None:
        """Save the saga's pending events atomically; a version conflict raises ConcurrentSagaUpdate.

        The events are taken from the aggregate here, on the event loop, so the writer thread never
        touches an aggregate that the loop may change. Saves queued while a write is under way go
        into the next write together.
        """
        events = list(saga.collect_events())
        if not events:
            return
        pending = _PendingSave(saga.id, events, asyncio.get_running_loop().create_future())
        # A caller cancelled meanwhile no longer awaits the outcome: mark it seen, so it is not logged as lost.
        pending.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append(pending)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued(), name="event-store-writer")
        try:
            await asyncio.shield(pending.done)
        except BaseException:
            self._recent.pop(saga.id, None)
            raise
        self._remember(saga, events)

    def _remember(self, saga: Saga, events: Sequence[DomainEventProtocol[UUID]]) -> None:
        if events[0].originator_version == 1:
            self._recent[saga.id] = (saga, list(events))
            if len(self._recent) > RECENT_HISTORIES:
                self._recent.popitem(last=False)
        elif saga.id in self._recent:
            remembered, history = self._recent[saga.id]
            if remembered is saga and history[-1].originator_version + 1 == events[0].originator_version:
                history.extend(events)
            else:  # another copy of the aggregate saved it (a resumed driver): the store is the truth
                del self._recent[saga.id]

    def recent_history(self, saga_id: UUID) -> tuple[Saga, list[DomainEventProtocol[UUID]]] | None:
        """The saga and its events from memory, once, if this process saved all of them and it has ended
        (no read of the store); None otherwise (another replica took part, or it is still running)."""
        recent = self._recent.get(saga_id)
        if recent is None or not recent[0].is_terminal or recent[0].version != recent[1][-1].originator_version:
            return None
        del self._recent[saga_id]
        return recent

    async def _write_queued(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_SAVES_PER_WRITE], self._queue[MAX_SAVES_PER_WRITE:]
            try:
                await self._write(batch)
            except Exception as exc:  # the database is away: every save of this write fails with it
                for pending in batch:
                    if not pending.done.done():
                        pending.done.set_exception(exc)

    async def _write(self, batch: list[_PendingSave]) -> None:
        try:
            # The events straight into the event store: Application.save would test each of them against two
            # runtime-checkable Protocols first (~2 % of the orchestrator's CPU), to find events it is handed.
            await self._run(self.app.events.put, [e for pending in batch for e in pending.events])
        except IntegrityError:
            if len(batch) == 1:
                self._settle(batch[0], ConcurrentSagaUpdate(f"saga {batch[0].saga_id} was saved by another writer"))
                return
            # One of them lost a race with another writer: write them one by one to find out which.
            for pending in batch:
                await self._write([pending])
            return
        EVENT_STORE_WRITES.inc()
        wake_relay()  # the saga's events on the bus (saga_orchestrator/events.py)
        for pending in batch:
            EVENT_STORE_SAVES.inc()
            EVENT_STORE_EVENTS.inc(len(pending.events))
            self._settle(pending, None)

    @staticmethod
    def _settle(pending: _PendingSave, error: Exception | None) -> None:
        if pending.done.done():
            return
        if error is None:
            pending.done.set_result(None)
        else:
            pending.done.set_exception(error)

    async def get(self, saga_id: UUID) -> Saga | None:
        def load() -> Saga | None:
            try:
                saga: Saga = self.app.repository.get(saga_id)
                return saga
            except AggregateNotFoundError:
                return None

        return await self._run(load)

    async def history(self, saga_id: UUID) -> tuple[Saga | None, list[DomainEventProtocol[UUID]]]:
        """The saga and its events, from one read of the store."""
        def load() -> tuple[Saga | None, list[DomainEventProtocol[UUID]]]:
            events = list(self.app.events.get(saga_id))
            saga: Saga | None = project_aggregate(None, events) if events else None
            return saga, events

        return await self._run(load)

    async def feed(self, after: int, limit: int) -> list[FeedItem]:
        """The notification log after position `after`, in order: every event of every saga."""
        items, _ = await self.notifications(after, limit)
        return items

    async def notifications(self, after: int, limit: int, types: frozenset[str] | None = None
                            ) -> tuple[list[FeedItem], int | None]:
        """The log after position `after`: the events of the given types (all: None), decoded, and the last position
        read (None: nothing after `after`). Only what is asked for is decoded (the bus relay wants 7 types of 15)."""
        def select() -> tuple[list[FeedItem], int | None]:
            notifications: Sequence[Notification] = self.app.recorder.select_notifications(
                start=after, limit=limit, inclusive_of_start=False)
            wanted = [n for n in notifications if types is None or n.topic.rsplit(".", 1)[-1] in types]
            return [self._feed_item(n) for n in wanted], (notifications[-1].id if notifications else None)

        return await self._run(select)

    async def max_notification_id(self) -> int:
        """The notification log's last position (0 when empty)."""
        return await self._run(lambda: self.app.recorder.max_notification_id() or 0)

    def _feed_item(self, notification: Notification) -> FeedItem:
        state = self.app.mapper.transcoder.decode(notification.state)
        state = dict(state) if isinstance(state, dict) else {"value": state}
        timestamp = state.pop("timestamp", None)
        state.pop("originator_topic", None)
        return FeedItem(
            id=notification.id,
            originator_id=str(notification.originator_id),
            originator_version=notification.originator_version,
            topic=notification.topic,
            type=notification.topic.rsplit(".", 1)[-1],
            timestamp=timestamp if isinstance(timestamp, datetime) else None,
            state=state,
        )
