"""The saga index in SQL: idempotency keys, status queries, and the per-saga lease that replicas take turns on.

Every operation here is one statement, run in autocommit mode (no BEGIN/COMMIT round trips); `page` reads
a page and its count in one statement. The lists and counts take the same filters: a customer
(None: everyone's), a status, and a created-time window `[created_after, created_before)`.

A replica drives a saga only while it holds the saga's lease: `owner` is its id (one per process
incarnation) and `lease_until` lies in the future. Claims and renewals are conditional UPDATEs, so
two replicas can never both believe they hold it; a crashed owner's lease simply runs out and any
replica (the crashed one's next incarnation too, as a stranger) claims it. The
aggregate's optimistic concurrency (a version conflict on save) is the safety net behind this.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import ColumnElement, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from saga_orchestrator.domain import UNFINISHED, Saga, SagaStatus
from saga_orchestrator.models import IndexedSaga, SagaIndex
from shared.db import Database, Row, table_of, utc_now
from shared.paging import visible_page

_UNFINISHED = [str(s) for s in UNFINISHED]
_TABLE = table_of(SagaIndex)
_C = _TABLE.c
# Built once and executed with parameters: compiled once, prepared once per connection.
_INSERT = insert(_TABLE)
_RECORD = (update(_TABLE).where(_C.saga_id == bindparam("w_saga_id"), _C.owner == bindparam("w_owner"))
           .values(status=bindparam("status"), order_id=bindparam("order_id"), updated_at=bindparam("updated_at"),
                   owner=bindparam("owner"), lease_until=bindparam("lease_until")))
_GET = select(_TABLE).where(_C.saga_id == bindparam("w_saga_id"))
_BY_KEY = select(_TABLE).where(_C.customer_id == bindparam("w_customer_id"),
                               _C.idempotency_key == bindparam("w_key"))
_RENEW = (update(_TABLE).where(_C.saga_id == bindparam("w_saga_id"), _C.owner == bindparam("w_owner"))
          .values(lease_until=bindparam("w_lease_until")))
_RELEASE = (update(_TABLE).where(_C.saga_id == bindparam("w_saga_id"), _C.owner == bindparam("w_owner"))
            .values(owner=None, lease_until=None))


# A customer's placements take turns (PostgreSQL: a transaction-scoped advisory lock per customer, in a key
# space of its own; SQLite: its transactions begin IMMEDIATE, one writer at a time), so the bound on their
# unfinished sagas holds across every replica.
_PLACEMENT_LOCKS = 0x5A6A
_LOCK_CUSTOMER = select(func.pg_advisory_xact_lock(_PLACEMENT_LOCKS, func.hashtext(bindparam("customer_id"))))
_UNFINISHED_OF = (select(func.count()).select_from(_TABLE)
                  .where(_C.customer_id == bindparam("customer_id"), _C.status.in_(_UNFINISHED)))


class TooManyUnfinished(Exception):
    """The customer holds as many unfinished sagas as they may: nothing was indexed."""


def _saga(row: Row) -> IndexedSaga:
    return IndexedSaga(**{column.key: row[column.key] for column in _TABLE.c})


def _filters(customer_id: str | None, status: str | None, created_after: datetime | None,
             created_before: datetime | None) -> list[ColumnElement[bool]]:
    """The WHERE clauses of the lists and counts; the created-time window includes its start, not its end."""
    clauses: list[ColumnElement[bool]] = []
    if customer_id is not None:
        clauses.append(_C.customer_id == customer_id)
    if status:
        clauses.append(_C.status == status)
    if created_after is not None:
        clauses.append(_C.created_at >= created_after)
    if created_before is not None:
        clauses.append(_C.created_at < created_before)
    return clauses


class SagaIndexStore:
    def __init__(self, db: Database, owner: str, lease_secs: float,
                 clock: Callable[[], datetime] = utc_now) -> None:
        """`clock`: what leases are taken and found expired by (a test moves its own)."""
        self.db = db
        self.clock = clock
        self.owner = owner
        self.lease = timedelta(seconds=lease_secs)

    # -- idempotency and queries ----------------------------------------------------------------

    async def get(self, saga_id: UUID) -> IndexedSaga | None:
        async with self.db.autocommit() as tx:
            row = await tx.fetchrow(_GET, {"w_saga_id": str(saga_id)})
        return None if row is None else _saga(row)

    async def find_by_key(self, customer_id: str, idempotency_key: str) -> IndexedSaga | None:
        async with self.db.autocommit() as tx:
            row = await tx.fetchrow(_BY_KEY, {"w_customer_id": customer_id, "w_key": idempotency_key})
        return None if row is None else _saga(row)

    async def insert(self, saga: Saga, start_request: dict[str, Any],
                     max_unfinished: int | None = None) -> IndexedSaga | None:
        """Index a new saga, leased to this replica; None when its key is already taken. With `max_unfinished`,
        only while the customer has fewer unfinished sagas than that (else TooManyUnfinished), counted and
        inserted in one transaction that the customer's other placements wait for, on any replica."""
        now = self.clock()
        row = IndexedSaga(
            saga_id=str(saga.id), customer_id=saga.customer_id, idempotency_key=saga.idempotency_key,
            fingerprint=saga.fingerprint, status=str(saga.status), order_id=None, total_minor=saga.total_minor,
            currency=saga.currency, start_request=start_request, owner=self.owner, lease_until=now + self.lease,
            created_at=now, updated_at=now)
        values = {column.key: getattr(row, column.key) for column in _TABLE.c}
        try:
            if max_unfinished is None:
                async with self.db.autocommit() as tx:
                    await tx.execute(_INSERT, values)
                return row
            async with self.db.transaction() as tx:
                customer = {"customer_id": saga.customer_id}
                if tx.dialect == "postgresql":
                    await tx.fetchval(_LOCK_CUSTOMER, customer)
                if await tx.fetchval(_UNFINISHED_OF, customer) >= max_unfinished:
                    raise TooManyUnfinished(saga.customer_id)
                await tx.execute(_INSERT, values)
        except IntegrityError:
            return None
        return row

    async def page(self, customer_id: str | None, status: str | None, limit: int, offset: int,
                   created_after: datetime | None = None,
                   created_before: datetime | None = None) -> tuple[list[IndexedSaga], int]:
        """The newest first; and how many match in all."""
        async with self.db.autocommit() as tx:
            rows, total = await visible_page(tx, _TABLE, _filters(customer_id, status, created_after, created_before),
                                             (_C.created_at.desc(), _C.saga_id), limit, offset)
        return [_saga(row) for row in rows], total

    async def count_by_status(self, customer_id: str | None, created_after: datetime | None = None,
                              created_before: datetime | None = None) -> dict[str, int]:
        """How many sagas are in each status (one GROUP BY); a status without sagas is absent."""
        query = (select(_C.status, func.count().label("sagas"))
                 .where(*_filters(customer_id, None, created_after, created_before)).group_by(_C.status))
        async with self.db.autocommit() as tx:
            rows = await tx.fetch(query)
        return {row["status"]: int(row["sagas"]) for row in rows}

    # -- leases ---------------------------------------------------------------------------------

    def _claimable(self, now: datetime) -> Any:
        return or_(_C.owner.is_(None), _C.owner == self.owner, _C.lease_until < now)

    async def claim(self, saga_id: UUID) -> bool:
        """Take the lease of an unfinished saga that is free, expired, or already ours."""
        now = self.clock()
        async with self.db.autocommit() as tx:
            return bool(await tx.execute(
                update(_TABLE)
                .where(_C.saga_id == str(saga_id), _C.status.in_(_UNFINISHED), self._claimable(now))
                .values(owner=self.owner, lease_until=now + self.lease)))

    async def claim_for_retry(self, saga_id: UUID) -> bool:
        """An operator's retry: take a COMPENSATION_FAILED saga (only one retry wins)."""
        now = self.clock()
        async with self.db.autocommit() as tx:
            return bool(await tx.execute(
                update(_TABLE)
                .where(_C.saga_id == str(saga_id),
                       _C.status == str(SagaStatus.COMPENSATION_FAILED), self._claimable(now))
                .values(status=str(SagaStatus.COMPENSATING), owner=self.owner, lease_until=now + self.lease,
                        updated_at=now)))

    async def renew(self, saga_id: UUID) -> bool:
        """Extend our lease; False when it is no longer ours (stop driving the saga)."""
        now = self.clock()
        async with self.db.autocommit() as tx:
            return bool(await tx.execute(_RENEW, {"w_saga_id": str(saga_id), "w_owner": self.owner,
                                                  "w_lease_until": now + self.lease}))

    async def record(self, saga: Saga, release: bool = False) -> bool:
        """Bring the row up to the saga's state and renew (or release) our lease; False if we lost it."""
        now = self.clock()
        values = {"w_saga_id": str(saga.id), "w_owner": self.owner, "status": str(saga.status),
                  "order_id": saga.order_id, "updated_at": now, "owner": None if release else self.owner,
                  "lease_until": None if release else now + self.lease}
        async with self.db.autocommit() as tx:
            return bool(await tx.execute(_RECORD, values))

    async def release(self, saga_id: UUID) -> None:
        async with self.db.autocommit() as tx:
            await tx.execute(_RELEASE, {"w_saga_id": str(saga_id), "w_owner": self.owner})

    async def resumable(self, limit: int, exclude: set[UUID]) -> list[UUID]:
        """Unfinished sagas that nobody drives: no owner or an expired lease (or ours, when a driver of ours quit)."""
        now = self.clock()
        async with self.db.autocommit() as tx:
            rows = await tx.fetch(
                select(_C.saga_id)
                .where(_C.status.in_(_UNFINISHED), self._claimable(now))
                .order_by(_C.created_at)
                .limit(limit + len(exclude)))
        ids = [UUID(row["saga_id"]) for row in rows]
        return [i for i in ids if i not in exclude][:limit]
