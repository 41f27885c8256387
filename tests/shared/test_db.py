"""The data path (shared.db.Tx): the same statements, the same answers, on PostgreSQL (asyncpg) and on SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import JSON, Column, Integer, MetaData, String, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from shared.db import DB_STATEMENTS, Database, UTCDateTime, conflict_insert, new_id, utc_now
from shared.paging import visible_page
from tests.inprocess import BACKENDS, backend_database_url

metadata = MetaData()
items = Table(
    "items", metadata,
    Column("id", String(36), primary_key=True, default=new_id),
    Column("name", String(20), nullable=False, unique=True),
    Column("quantity", Integer, nullable=False, default=0),
    Column("details", JSON, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False, default=utc_now),
    Column("updated_at", UTCDateTime(), nullable=False, default=utc_now, onupdate=utc_now),
)
# Built once, executed with parameters, as the services do.
_INSERT = insert(items).returning(*items.c)
_BY_NAME = select(items).where(items.c.name == bindparam("w_name"))
_ADD = (update(items).where(items.c.name == bindparam("w_name"))
        .values(quantity=items.c.quantity + bindparam("w_more", type_=Integer)).returning(items.c.quantity))
_CLAIM = conflict_insert(items).on_conflict_do_nothing(index_elements=[items.c.name])


@pytest.fixture(scope="module", params=BACKENDS)
async def db(request: pytest.FixtureRequest) -> AsyncIterator[Database]:
    database = Database(backend_database_url(request.param, "cs_unit_data_path"), pool_size=4)
    async with database.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    try:
        yield database
    finally:
        await database.dispose()


async def test_insert_applies_defaults_and_returns_typed_values(db: Database) -> None:
    async with db.transaction() as tx:
        row = await tx.fetchrow(_INSERT, {"name": "one", "details": {"colour": "red", "sizes": [1, 2]}})
    assert row is not None
    assert len(row["id"]) == 36 and row["quantity"] == 0
    assert row["details"] == {"colour": "red", "sizes": [1, 2]}
    assert row["created_at"].tzinfo is not None and row["created_at"].utcoffset() == timedelta(0)
    assert dict(row).keys() == {column.key for column in items.c}


async def test_update_applies_onupdate_and_counts_rows(db: Database) -> None:
    async with db.transaction() as tx:
        created = await tx.fetchrow(_INSERT, {"name": "two", "quantity": 1})
    assert created is not None
    async with db.transaction() as tx:
        assert await tx.fetchval(_ADD, {"w_name": "two", "w_more": 4}) == 5
        assert await tx.execute(update(items).where(items.c.name == "nobody").values(quantity=1)) == 0
        after = await tx.fetchrow(_BY_NAME, {"w_name": "two"})
    assert after is not None and after["updated_at"] >= created["updated_at"]


async def test_a_connection_the_server_ends_mid_transaction_is_an_operational_error_and_never_reused(
        db: Database) -> None:
    """The server ends the backend between two statements (a failover, pg_terminate_backend): the next statement
    fails as OperationalError (the services answer 503), and the pool hands that connection to nobody again."""
    if db.sqlite:
        pytest.skip("a PostgreSQL backend")
    for _ in range(db.pool_size + 1):
        with pytest.raises(OperationalError):
            async with db.transaction() as tx:
                pid = await tx.fetchval(select(func.pg_backend_pid()))
                async with db.autocommit() as other:
                    assert await other.fetchval(select(func.pg_terminate_backend(pid))) is True
                await tx.fetchval(select(func.now()))
    async with db.transaction() as tx:
        assert await tx.fetchval(select(func.count()).select_from(items)) >= 0


async def test_a_rollback_undoes_the_work(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute(_INSERT, {"name": "undone"})
            raise RuntimeError("the work failed")
    async with db.autocommit() as tx:
        assert await tx.fetchrow(_BY_NAME, {"w_name": "undone"}) is None


async def test_on_conflict_and_integrity_errors(db: Database) -> None:
    async with db.transaction() as tx:
        assert await tx.execute(_CLAIM, {"name": "claimed"}) == 1
        assert await tx.execute(_CLAIM, {"name": "claimed"}) == 0
    with pytest.raises(IntegrityError):
        async with db.transaction() as tx:
            await tx.execute(_INSERT, {"name": "claimed"})


async def test_a_value_the_database_refuses_is_a_data_error(db: Database) -> None:
    if db.sqlite:
        pytest.skip("SQLite stores an over-long string (its lengths are not enforced)")
    with pytest.raises(DataError):
        async with db.transaction() as tx:
            await tx.execute(_INSERT, {"name": "x" * 21})


async def test_naive_datetimes_are_refused(db: Database) -> None:
    with pytest.raises(Exception, match="naive datetimes"):
        async with db.transaction() as tx:
            await tx.execute(_INSERT, {"name": "naive", "created_at": datetime(2026, 1, 1)})
    async with db.transaction() as tx:
        row = await tx.fetchrow(_INSERT, {"name": "aware", "created_at": datetime(2026, 1, 1, 1, tzinfo=timezone(
            timedelta(hours=1)))})
    assert row is not None and row["created_at"] == datetime(2026, 1, 1, tzinfo=UTC)


async def test_in_lists_executemany_and_the_visible_page(db: Database) -> None:
    names = [f"page-{i}" for i in range(5)]
    async with db.transaction() as tx:
        await tx.executemany(insert(items), [{"name": name, "quantity": i} for i, name in enumerate(names)])
        await tx.executemany(insert(items), [])
    async with db.transaction() as tx:
        found = await tx.fetch(select(items.c.name).where(items.c.name.in_(names[1:4])).order_by(items.c.name))
        assert [row["name"] for row in found] == names[1:4]
        match = [items.c.name.in_(names)]
        page, total = await visible_page(tx, items, match, (items.c.name,), limit=2, offset=1)
        assert [row["name"] for row in page] == names[1:3] and total == 5
        assert await visible_page(tx, items, match, (items.c.name,), limit=2, offset=10) == ([], 5)
        assert await visible_page(tx, items, [items.c.name == "none"], (items.c.name,), 2, 0) == ([], 0)
        assert await tx.fetchval(select(func.count()).select_from(items).where(*match)) == 5


async def test_statements_are_counted(db: Database) -> None:
    before = DB_STATEMENTS._value.get()
    async with db.transaction() as tx:
        await tx.fetch(_BY_NAME, {"w_name": "one"})
        await tx.executemany(_CLAIM, [{"name": "counted-1"}, {"name": "counted-2"}])
    assert DB_STATEMENTS._value.get() - before == 2
