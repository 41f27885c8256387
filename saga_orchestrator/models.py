"""saga_orchestrator tables: the saga index, which is also each saga's lease (the events live in the event store)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.bus import relay_position_table
from shared.db import CurrencyCode, UpdatedAt, UTCDateTime, new_metadata, utc_now


class Base(DeclarativeBase):
    metadata = new_metadata()


# How far the event store's notifications were relayed onto the bus (saga_orchestrator/events.py).
relay_positions = relay_position_table(Base.metadata)


class SagaIndex(Base):
    """One row per saga: the query index of the API and recovery, and the lease of the replica driving it.

    The aggregate in the event store is the truth; this row follows it after every save, and whoever
    drives the saga next brings a lagging row up to date. The row is written before the saga's first
    event, so it carries the start request: a crash between the two leaves recovery enough to start it.
    """

    __tablename__ = "saga_index"
    __table_args__ = (
        UniqueConstraint("customer_id", "idempotency_key", name="uq_saga_index_customer_key"),
        Index("ix_saga_index_status_lease", "status", "lease_until"),
        # A customer's sagas newest first, and their counts in a created-time window; it also serves every
        # lookup by customer alone, so customer_id has no index of its own.
        Index("ix_saga_index_customer_created", "customer_id", "created_at"),
    )

    saga_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str] = mapped_column(String(200))
    fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(24))
    order_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    total_minor: Mapped[int] = mapped_column(Integer)
    currency: Mapped[CurrencyCode]
    start_request: Mapped[dict[str, Any]] = mapped_column(JSON)
    owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now, index=True)
    updated_at: Mapped[UpdatedAt]


@dataclass(frozen=True, slots=True)
class IndexedSaga:
    """A saga's row of the index, as the index store returns it."""

    saga_id: str
    customer_id: str
    idempotency_key: str
    fingerprint: str
    status: str
    order_id: str | None
    total_minor: int
    currency: str
    start_request: dict[str, Any]
    owner: str | None
    lease_until: datetime | None
    created_at: datetime
    updated_at: datetime
