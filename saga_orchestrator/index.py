"""The saga index in SQL: idempotency keys, status queries, and the per-saga lease that replicas take turns on.

Every operation here is one statement, run in autocommit mode (no BEGIN/COMMIT round trips); `page` reads
a count and a page, which need not be one snapshot. The lists and counts take the same filters: a customer
(None: everyone's), a status, and a created-time window `[created_after, created_before)`.

A replica drives a saga only while it holds the saga's lease: `owner` is its id and `lease_until`
lies in the future. Claims and renewals are conditional UPDATEs, so two replicas can never both
believe they hold it; a crashed owner's lease simply runs out and another replica claims it. The
aggregate's optimistic concurrency (a version conflict on save) is the safety net behind this.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import ColumnElement, Table, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from saga_orchestrator.domain import UNFINISHED, Saga, SagaStatus
from saga_orchestrator.models import SagaIndex
from shared.db import Database, rowcount

_UNFINISHED = [str(s) for s in UNFINISHED]
# Writes go to the table itself (Core statements: no unit of work, no ORM session synchronisation).
_TABLE: Table = SagaIndex.__table__  # type: ignore[assignment]
_C = _TABLE.c
# The two writes every saga makes, built once and executed with parameters (compiled once, no bind parameters
# built per call).
_INSERT = insert(_TABLE)
_RECORD = (update(_TABLE).where(_C.saga_id == bindparam("w_saga_id"), _C.owner == bindparam("w_owner"))
           .values(status=bindparam("status"), order_id=bindparam("order_id"), updated_at=bindparam("updated_at"),
                   owner=bindparam("owner"), lease_until=bindparam("lease_until")))


def _now() -> datetime:
    return datetime.now(UTC)


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
    def __init__(self, db: Database, owner: str, lease_secs: float) -> None:
        self.db = db
        self.owner = owner
        self.lease = timedelta(seconds=lease_secs)

    # -- idempotency and queries ----------------------------------------------------------------

    async def get(self, saga_id: UUID) -> SagaIndex | None:
        async with self.db.autocommit() as session:
            return await session.get(SagaIndex, str(saga_id))

    async def find_by_key(self, customer_id: str, idempotency_key: str) -> SagaIndex | None:
        async with self.db.autocommit() as session:
            query = select(SagaIndex).where(SagaIndex.customer_id == customer_id,
                                            SagaIndex.idempotency_key == idempotency_key)
            return (await session.execute(query)).scalar_one_or_none()

    async def insert(self, saga: Saga, start_request: dict[str, Any]) -> SagaIndex | None:
        """Index a new saga, leased to this replica; None when its key is already taken."""
        now = _now()
        row = SagaIndex(
            saga_id=str(saga.id), customer_id=saga.customer_id, idempotency_key=saga.idempotency_key,
            fingerprint=saga.fingerprint, status=str(saga.status), order_id=None, total_minor=saga.total_minor,
            currency=saga.currency, start_request=start_request, owner=self.owner, lease_until=now + self.lease,
            created_at=now, updated_at=now)
        values = {column.key: getattr(row, column.key) for column in _TABLE.columns}
        try:
            async with self.db.autocommit() as session:
                await session.execute(_INSERT, values)
        except IntegrityError:
            return None
        return row

    async def page(self, customer_id: str | None, status: str | None, limit: int, offset: int,
                   created_after: datetime | None = None,
                   created_before: datetime | None = None) -> tuple[list[SagaIndex], int]:
        """The newest first; and how many match in all."""
        query = select(SagaIndex).where(*_filters(customer_id, status, created_after, created_before))
        async with self.db.autocommit() as session:
            total = (await session.execute(select(func.count()).select_from(query.subquery()))).scalar_one()
            rows = await session.execute(
                query.order_by(SagaIndex.created_at.desc(), SagaIndex.saga_id).limit(limit).offset(offset))
            return list(rows.scalars()), int(total)

    async def count_by_status(self, customer_id: str | None, created_after: datetime | None = None,
                              created_before: datetime | None = None) -> dict[str, int]:
        """How many sagas are in each status (one GROUP BY); a status without sagas is absent."""
        query = (select(_C.status, func.count()).where(*_filters(customer_id, None, created_after, created_before))
                 .group_by(_C.status))
        async with self.db.autocommit() as session:
            rows = await session.execute(query)
            return {status: int(count) for status, count in rows}

    # -- leases ---------------------------------------------------------------------------------

    def _claimable(self, now: datetime) -> Any:
        return or_(_C.owner.is_(None), _C.owner == self.owner, _C.lease_until < now)

    async def claim(self, saga_id: UUID) -> bool:
        """Take the lease of an unfinished saga that is free, expired, or already ours."""
        now = _now()
        async with self.db.autocommit() as session:
            result = await session.execute(
                update(_TABLE)
                .where(_C.saga_id == str(saga_id), _C.status.in_(_UNFINISHED), self._claimable(now))
                .values(owner=self.owner, lease_until=now + self.lease))
            return bool(rowcount(result))

    async def claim_for_retry(self, saga_id: UUID) -> bool:
        """An operator's retry: take a COMPENSATION_FAILED saga (only one retry wins)."""
        now = _now()
        async with self.db.autocommit() as session:
            result = await session.execute(
                update(_TABLE)
                .where(_C.saga_id == str(saga_id),
                       _C.status == str(SagaStatus.COMPENSATION_FAILED), self._claimable(now))
                .values(status=str(SagaStatus.COMPENSATING), owner=self.owner, lease_until=now + self.lease,
                        updated_at=now))
            return bool(rowcount(result))

    async def renew(self, saga_id: UUID) -> bool:
        """Extend our lease; False when it is no longer ours (stop driving the saga)."""
        now = _now()
        async with self.db.autocommit() as session:
            result = await session.execute(
                update(_TABLE)
                .where(_C.saga_id == str(saga_id), _C.owner == self.owner)
                .values(lease_until=now + self.lease))
            return bool(rowcount(result))

    async def record(self, saga: Saga, release: bool = False) -> bool:
        """Bring the row up to the saga's state and renew (or release) our lease; False if we lost it."""
        now = _now()
        values = {"w_saga_id": str(saga.id), "w_owner": self.owner, "status": str(saga.status),
                  "order_id": saga.order_id, "updated_at": now, "owner": None if release else self.owner,
                  "lease_until": None if release else now + self.lease}
        async with self.db.autocommit() as session:
            result = await session.execute(_RECORD, values)
            return bool(rowcount(result))

    async def release(self, saga_id: UUID) -> None:
        async with self.db.autocommit() as session:
            await session.execute(
                update(_TABLE).where(_C.saga_id == str(saga_id), _C.owner == self.owner)
                .values(owner=None, lease_until=None))

    async def resumable(self, limit: int, exclude: set[UUID]) -> list[UUID]:
        """Unfinished sagas that nobody drives: no owner, an expired lease, or ours from before a restart."""
        now = _now()
        async with self.db.autocommit() as session:
            rows = await session.execute(
                select(SagaIndex.saga_id)
                .where(SagaIndex.status.in_(_UNFINISHED), self._claimable(now))
                .order_by(SagaIndex.created_at)
                .limit(limit + len(exclude)))
            ids = [UUID(r) for r in rows.scalars()]
        return [i for i in ids if i not in exclude][:limit]
