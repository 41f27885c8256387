"""The data path of every service, from DATABASE_URL: SQLAlchemy Core statements written once and executed on
asyncpg directly (PostgreSQL) or through SQLAlchemy Core (SQLite); ORM sessions for the bench's floor (bench/floor.py).

Each service layer (`<service>/service.py`) builds its statements once, at import, and executes them with
parameters on the route's transaction (`Tx`); its results leave as the domain types of its models.py.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, cast

import asyncpg
from prometheus_client import Counter
from sqlalchemy import (
    BigInteger,
    DateTime,
    Delete,
    ForeignKey,
    Index,
    Insert,
    MetaData,
    String,
    Table,
    Update,
    event,
    exc,
    select,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import MappedColumn, mapped_column
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import await_only

# Round trips to the database are a step's largest cost: counted at the driver (BEGIN/COMMIT not included).
DB_STATEMENTS = Counter("db_statements_total", "SQL statements sent to the service's database")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
# A pooled ORM connection idle for longer than this is pinged before use (see create_engine).
PING_AFTER_IDLE_SECS = 1.0
# How long a request waits for a free connection of the pool before it is answered 503.
POOL_TIMEOUT_SECS = 30.0

# A result row: read by column name (`row["status"]`), or unpacked into a domain type (`Order(**row)`).
Row = Mapping[str, Any]
Params = Mapping[str, Any]


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


# The columns every service declares alike, once: SQLAlchemy's annotated declarative types (`id: Mapped[UUIDKey]`).
UUIDKey = Annotated[str, mapped_column(String(36), primary_key=True, default=new_id)]
CreatedAt = Annotated[datetime, mapped_column(UTCDateTime(), default=utc_now)]
UpdatedAt = Annotated[datetime, mapped_column(UTCDateTime(), default=utc_now, onupdate=utc_now)]
# Money is an integer count of the currency's minor unit, with its ISO 4217 code beside it.
Money = Annotated[int, mapped_column(BigInteger)]
CurrencyCode = Annotated[str, mapped_column(String(3))]
# An id another service issued (an order's, a customer's), looked up by.
ForeignRef = Annotated[str, mapped_column(String(64), index=True)]


def parent_key(parent_id: str) -> MappedColumn[Any]:
    """A row's reference to the row it belongs to (`parent_key("orders.id")`: an order's line): deleted with its
    parent, indexed for the parent's look-up of its rows."""
    return mapped_column(ForeignKey(parent_id, ondelete="CASCADE"), index=True)


def unique_where(name: str, column: str, condition: str) -> Index:
    """A partial unique index: `column` unique among the rows matching `condition` (SQL), on both databases."""
    where = text(condition)
    return Index(name, column, unique=True, postgresql_where=where, sqlite_where=where)


def conflict_insert(table: Table) -> postgresql.Insert:
    """The INSERT that knows ON CONFLICT (DO NOTHING / DO UPDATE): PostgreSQL's construct, which SQLite's compiler
    renders too, so one statement serves both databases."""
    return postgresql.insert(table)


def new_metadata() -> MetaData:
    """Each service's own metadata, with names Alembic can diff reliably."""
    return MetaData(naming_convention=NAMING_CONVENTION)


def table_of(model: Any) -> Table:
    """A declarative model's Table: the one way the service layers reach their tables."""
    return cast(Table, model.__table__)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


class Tx:
    """One transaction of the data path (or, from `Database.autocommit`, one self-committing statement).

    Statements are SQLAlchemy Core, built once where they are defined (values as bind parameters) and executed
    with a mapping of parameters; rows come back as read-only mappings. The same statement runs on PostgreSQL
    (asyncpg directly: compiled once per shape, prepared once per connection, no SQLAlchemy connection, result
    or row objects around it) and on SQLite (SQLAlchemy Core). Column defaults and `onupdate` values apply on
    both, as in Core. Integrity, data and connection errors are raised as SQLAlchemy's exceptions on both.
    """

    dialect: str
    # Called once the transaction has committed (never after a rollback): the outbox relay's wake-up.
    committed: list[Callable[[], None]]

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once this transaction has committed (not at all when it rolls back)."""
        if callback not in self.committed:
            self.committed.append(callback)

    async def fetch(self, statement: Executable, params: Params | None = None) -> list[Row]:
        """Every row the statement returns."""
        raise NotImplementedError

    async def fetchrow(self, statement: Executable, params: Params | None = None) -> Row | None:
        """The first row, or None."""
        rows = await self.fetch(statement, params)
        return rows[0] if rows else None

    async def fetchval(self, statement: Executable, params: Params | None = None) -> Any:
        """The first column of the first row, or None."""
        row = await self.fetchrow(statement, params)
        return None if row is None else next(iter(row.values()))

    async def execute(self, statement: Executable, params: Params | None = None) -> int:
        """Run a statement for its effect; the number of rows it touched."""
        raise NotImplementedError

    async def executemany(self, statement: Executable, rows: Sequence[Params]) -> None:
        """The statement once per parameter set, in one round trip; nothing when there are none."""
        raise NotImplementedError


# --- PostgreSQL: asyncpg directly -----------------------------------------------------------------------------

_PG_DIALECT = PGDialect_asyncpg()  # compiles to asyncpg's $1 placeholders, with the casts asyncpg wants


@dataclass(frozen=True, slots=True)
class _Plan:
    """A statement compiled for asyncpg: its SQL, its parameters in $n order, and what fills them."""

    compiled: SQLCompiler
    sql: str
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]
    # Columns whose Python-side default (INSERT) or onupdate (UPDATE) fills a parameter the caller left out.
    defaults: tuple[tuple[str, Any], ...]
    expanding: bool  # an IN list, rendered per execution


# Keyed by the statement's structure (SQLAlchemy's cache key, without its values) and the parameters' names.
_plans: dict[tuple[Any, tuple[str, ...]], _Plan] = {}
# The cache key of a statement object, kept while the object lives (module-level statements: for good).
_cache_keys: weakref.WeakKeyDictionary[Executable, Any] = weakref.WeakKeyDictionary()


def _plan(statement: Executable, keys: tuple[str, ...], cache_key: Any) -> _Plan:
    plan = _plans.get((cache_key.key, keys)) if cache_key is not None else None
    if plan is not None:
        return plan
    compiled = cast(SQLCompiler, cast(ClauseElement, statement).compile(
        dialect=_PG_DIALECT, column_keys=list(keys) or None, cache_key=cache_key))
    names = tuple(compiled.positiontup or ())
    processors = cast(dict[str, Callable[[Any], Any]], compiled._bind_processors)
    prefetch = [(column.key, column.default) for column in compiled.insert_prefetch]
    prefetch += [(column.key, column.onupdate) for column in compiled.update_prefetch]
    plan = _Plan(compiled, compiled.string, names, tuple(processors.get(name) for name in names),
                 tuple((key, default) for key, default in prefetch if key not in keys),
                 "__[POSTCOMPILE_" in compiled.string)
    if cache_key is not None:
        _plans[(cache_key.key, keys)] = plan
    return plan


def _default_value(default: Any) -> Any:
    return default.arg(None) if default.is_callable else default.arg


def _compiled_args(statement: Executable, params: Params | None) -> tuple[str, list[Any]]:
    """The SQL and the positional arguments of one execution."""
    values = dict(params) if params else {}
    cache_key = _cache_keys.get(statement)
    if cache_key is None:
        cache_key = statement._generate_cache_key()  # type: ignore[attr-defined]
        if cache_key is not None:
            _cache_keys[statement] = cache_key
    keys = tuple(sorted(values)) if isinstance(statement, Insert | Update) else ()
    plan = _plan(statement, keys, cache_key)
    for key, default in plan.defaults:
        values[key] = _default_value(default)
    bound = plan.compiled.construct_params(
        values, extracted_parameters=cache_key.bindparams if cache_key is not None else None)
    if plan.expanding:
        state = plan.compiled.construct_expanded_state(bound)
        return state.statement, [state.processors[name](bound_value) if name in state.processors else bound_value
                                 for name, bound_value in zip(state.positiontup or (), state.positional_parameters,
                                                              strict=True)]
    return plan.sql, [bound[name] if processor is None else processor(bound[name])
                      for name, processor in zip(plan.names, plan.processors, strict=True)]


@contextmanager
def _driver_errors(sql: str = "", args: Any = None) -> Iterator[None]:
    """asyncpg's errors as SQLAlchemy's (what the services catch and the error handlers answer)."""
    try:
        yield
    except asyncpg.IntegrityConstraintViolationError as error:
        raise exc.IntegrityError(sql, args, error) from error
    except asyncpg.DataError as error:
        raise exc.DataError(sql, args, error) from error
    except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError) as error:
        # InternalClientError: the protocol is in a state no statement can run in (the server ended the
        # connection between two statements of a transaction: "another operation is in progress").
        raise exc.OperationalError(sql, args, error) from error


def _usable(connection: asyncpg.Connection) -> bool:
    """Whether the connection can still take a statement (asyncpg detaches a pool's connection once it closes)."""
    try:
        return not connection.is_closed()
    except asyncpg.InterfaceError:
        return False


def _touched(status: str) -> int:
    """The row count of a command tag ("UPDATE 3", "INSERT 0 1")."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


class _PostgresTx(Tx):
    dialect = "postgresql"

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection
        self.committed = []

    async def fetch(self, statement: Executable, params: Params | None = None) -> list[Row]:
        sql, args = _compiled_args(statement, params)
        DB_STATEMENTS.inc()
        with _driver_errors(sql, args):
            return cast(list[Row], await self._connection.fetch(sql, *args))

    async def fetchrow(self, statement: Executable, params: Params | None = None) -> Row | None:
        sql, args = _compiled_args(statement, params)
        DB_STATEMENTS.inc()
        with _driver_errors(sql, args):
            return cast(Row | None, await self._connection.fetchrow(sql, *args))

    async def fetchval(self, statement: Executable, params: Params | None = None) -> Any:
        sql, args = _compiled_args(statement, params)
        DB_STATEMENTS.inc()
        with _driver_errors(sql, args):
            return await self._connection.fetchval(sql, *args)

    async def execute(self, statement: Executable, params: Params | None = None) -> int:
        sql, args = _compiled_args(statement, params)
        DB_STATEMENTS.inc()
        with _driver_errors(sql, args):
            return _touched(await self._connection.execute(sql, *args))

    async def executemany(self, statement: Executable, rows: Sequence[Params]) -> None:
        if not rows:
            return
        compiled = [_compiled_args(statement, row) for row in rows]
        DB_STATEMENTS.inc()
        with _driver_errors(compiled[0][0], None):
            await self._connection.executemany(compiled[0][0], [args for _, args in compiled])


async def _init_connection(connection: asyncpg.Connection) -> None:
    # SQLAlchemy's JSON type serializes the parameter; asyncpg only hands the text on, and decodes results.
    for name in ("json", "jsonb"):
        await connection.set_type_codec(name, schema="pg_catalog", encoder=str, decoder=json.loads)


async def _keep_session_state(_connection: asyncpg.Connection) -> None:
    """A connection handed back is not reset (asyncpg's default costs a round trip on every release): the data
    path opens no cursors, listens to nothing, takes no session-level locks or settings, and every transaction
    it opens is committed or rolled back before the release."""


# --- SQLite: SQLAlchemy Core ----------------------------------------------------------------------------------


class _SqliteTx(Tx):
    dialect = "sqlite"

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection
        self.committed = []

    async def fetch(self, statement: Executable, params: Params | None = None) -> list[Row]:
        result = await self._connection.execute(statement, dict(params) if params else None)
        return cast(list[Row], result.mappings().all())

    async def execute(self, statement: Executable, params: Params | None = None) -> int:
        result = await self._connection.execute(statement, dict(params) if params else None)
        return max(result.rowcount, 0) if isinstance(statement, Insert | Update | Delete) else 0

    async def executemany(self, statement: Executable, rows: Sequence[Params]) -> None:
        if rows:
            await self._connection.execute(statement, [dict(row) for row in rows])


def _count_statements(engine: AsyncEngine) -> AsyncEngine:
    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _counted(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not statement.startswith("BEGIN"):  # SQLite's BEGIN IMMEDIATE: transactions are not statements here
            DB_STATEMENTS.inc()

    return engine


def create_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    """The SQLAlchemy engine: the data path on SQLite, the ORM sessions on both."""
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
    # backend start, asyncpg's type introspection and re-prepared statements each time. A request waits for a
    # connection instead (up to pool_timeout, then 503).
    if make_url(url).get_driver_name() != "asyncpg":
        return create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_pre_ping=True)
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0)

    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(_dbapi_connection, record):  # type: ignore[no-untyped-def]
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _ping(dbapi_connection, record, _proxy):  # type: ignore[no-untyped-def]
        # A pre-ping of one round trip, and only for a connection that sat idle in the pool: a connection
        # handed back moments ago is known to work, and under load that is every checkout. SQLAlchemy's own
        # pool_pre_ping wraps its ping in BEGIN and ROLLBACK, three round trips on every checkout. A connection
        # that dies while in use fails its statement with a disconnect: SQLAlchemy then discards the whole pool
        # and the request answers 503, which callers retry. A dead idle connection is replaced here.
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECS:
            return  # a connection just opened, or handed back moments ago
        try:
            await_only(dbapi_connection._connection.fetchrow(";"))
        except Exception as error:
            raise exc.DisconnectionError(f"pre-ping failed: {error!r}") from error

    return engine


_PING = select(1)


def _run_committed(tx: Tx) -> None:
    for callback in tx.committed:
        callback()


class Database:
    """One per process. `transaction()` is the unit of work of the data path (commit on success, rollback on
    error); `session()` the same for an ORM session."""

    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = url
        self.pool_size = pool_size
        self.sqlite = is_sqlite(url)
        # On PostgreSQL the engine serves only ORM sessions: its pool opens a connection when one is first used.
        self.engine = create_engine(url, pool_size)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # The same engine in autocommit mode, for ORM work of one statement (not on SQLite, whose BEGIN IMMEDIATE
        # listener would open a transaction that autocommit mode never ends).
        self._autocommit_sessions = None if self.sqlite else async_sessionmaker(
            self.engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    async def _asyncpg_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    dsn = make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)
                    with _driver_errors():
                        # Connections are opened as needed and then kept: each one is a backend start, type
                        # introspection and statements prepared anew.
                        self._pool = await asyncpg.create_pool(
                            dsn, min_size=0, max_size=self.pool_size, max_inactive_connection_lifetime=0,
                            init=_init_connection, reset=_keep_session_state)
        return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        pool = await self._asyncpg_pool()
        try:
            with _driver_errors():
                connection = await pool.acquire(timeout=POOL_TIMEOUT_SECS)
        except TimeoutError as error:
            raise exc.TimeoutError(f"no database connection free within {POOL_TIMEOUT_SECS} s") from error
        try:
            yield connection
        except exc.OperationalError as error:
            # Broken below SQL (the protocol's state lost, the socket gone): never hand it out again. A refusal
            # the server answered (a lock timeout, a deadlock) leaves a connection fit for the next transaction.
            if not isinstance(error.orig, asyncpg.PostgresError) and _usable(connection):
                connection.terminate()
            raise
        finally:
            await pool.release(connection)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        if self.sqlite:
            async with self.engine.connect() as connection:
                async with connection.begin():
                    tx: Tx = _SqliteTx(connection)
                    yield tx
            _run_committed(tx)
            return
        async with self._connection() as connection:
            transaction = connection.transaction()
            with _driver_errors("BEGIN"):
                await transaction.start()
            tx = _PostgresTx(connection)
            try:
                yield tx
            except BaseException:
                if _usable(connection):
                    with _driver_errors("ROLLBACK"):
                        await transaction.rollback()
                raise
            with _driver_errors("COMMIT"):
                await transaction.commit()
        _run_committed(tx)

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[Tx]:
        """For ONE statement, which commits by itself: on PostgreSQL no BEGIN and COMMIT round trips. Several
        statements here are not atomic: use `transaction()` for those. On SQLite it is a transaction."""
        if self.sqlite:
            async with self.transaction() as tx:
                yield tx
            return
        async with self._connection() as connection:
            yield _PostgresTx(connection)

    @asynccontextmanager
    async def session(self, autocommit: bool = False) -> AsyncIterator[AsyncSession]:
        """An ORM session in one transaction: the bench's floor measures the data path against it (bench/floor.py).

        `autocommit=True`: for ONE statement, which commits by itself (on PostgreSQL no BEGIN and COMMIT).
        """
        if autocommit and self._autocommit_sessions is not None:
            async with self._autocommit_sessions() as session:
                yield session
                await session.commit()  # flushes what was added; the statement committed itself
            return
        async with self.sessions() as session, session.begin():
            yield session

    async def ping(self) -> None:
        async with self.autocommit() as tx:
            await tx.fetchval(_PING)

    async def dispose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        await self.engine.dispose()
