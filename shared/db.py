"""Async SQLAlchemy engine and sessions from DATABASE_URL, the same for PostgreSQL and SQLite."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import DateTime, MetaData, Table, event, exc, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Dialect, Result, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import await_only

from shared.metrics import DB_STATEMENTS

# A pooled connection idle for longer than this is pinged before use (see create_engine).
PING_AFTER_IDLE_SECS = 1.0

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utc_now() -> datetime:
    """Now, timezone-aware UTC: the default of every timestamp column."""
    return datetime.now(UTC)


def new_id() -> str:
    """A random UUID as text: the default of every surrogate key."""
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores none, so it is restored on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored: use timezone-aware UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def conflict_insert(session: AsyncSession, table: Table) -> postgresql.Insert | sqlite.Insert:
    """The INSERT that knows ON CONFLICT (DO NOTHING / DO UPDATE): PostgreSQL's or SQLite's, by the session's
    database — the claim rows and counters of the services use it on both."""
    if session.get_bind().dialect.name == "sqlite":
        return sqlite.insert(table)
    return postgresql.insert(table)


def rowcount(result: Result[Any]) -> int:
    """The rows an INSERT/UPDATE/DELETE touched (a DML statement's result is a CursorResult; the type says Result)."""
    return cast(CursorResult[Any], result).rowcount


def new_metadata() -> MetaData:
    """Each service's own metadata, with names Alembic can diff reliably."""
    return MetaData(naming_convention=NAMING_CONVENTION)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _count_statements(engine: AsyncEngine) -> AsyncEngine:
    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _counted(*_: Any) -> None:
        DB_STATEMENTS.inc()

    return engine


def create_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    return _count_statements(_create_engine(url, pool_size))


def _create_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            # Let SQLAlchemy, not the driver, issue BEGIN, so savepoints work (SQLAlchemy's sqlite recipe).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin_immediate(conn):  # type: ignore[no-untyped-def]
            # Take the write lock up front: SQLite cannot upgrade a reader under contention.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # Every connection is kept: overflow connections (opened for one request, closed after it) cost a
    # backend start, asyncpg's type introspection and re-prepared statements each time; under saga load
    # they were the largest single item of a service's database time. A request waits for a connection
    # instead (up to pool_timeout, then 503).
    if make_url(url).get_driver_name() != "asyncpg":
        return create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_pre_ping=True)
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0)

    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(_dbapi_connection, record):  # type: ignore[no-untyped-def]
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _ping(dbapi_connection, record, _proxy):  # type: ignore[no-untyped-def]
        # A pre-ping of one round trip, and only for a connection that sat idle in the pool: a connection
        # handed back moments ago is known to work, and under load that is every checkout (the ping was one
        # statement in four of a saga step). SQLAlchemy's own pool_pre_ping wraps its ping in BEGIN and
        # ROLLBACK, three round trips on every checkout. A connection that dies while in use fails its
        # statement with a disconnect: SQLAlchemy then discards the whole pool and the request answers 503,
        # which callers retry. A dead idle connection is replaced here, as pre-ping does.
        if time.monotonic() - record.info.get("idle_since", 0.0) < PING_AFTER_IDLE_SECS:
            return
        try:
            await_only(dbapi_connection._connection.fetchrow(";"))
        except Exception as error:
            raise exc.DisconnectionError(f"pre-ping failed: {error!r}") from error

    return engine


class Database:
    """One engine per process; `transaction()` is the unit of work: commit on success, rollback on error."""

    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = url
        self.engine = create_engine(url, pool_size)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # The same pool in autocommit mode, for work of one statement (not on SQLite, whose BEGIN IMMEDIATE
        # listener would open a transaction that autocommit mode never ends).
        self._autocommit_sessions = None if is_sqlite(url) else async_sessionmaker(
            self.engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncSession]:
        """A session for ONE statement, which commits by itself: on PostgreSQL no BEGIN and COMMIT round
        trips (two of the four a one-statement transaction costs). Several statements here are not atomic:
        use `transaction()` for those. Elsewhere (SQLite) it is a transaction."""
        if self._autocommit_sessions is None:
            async with self.transaction() as session:
                yield session
            return
        async with self._autocommit_sessions() as session:
            yield session
            await session.commit()  # flushes what was added; the statement committed itself

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
