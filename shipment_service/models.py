"""shipment_service tables: shipments and the history of their statuses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import CreatedAt, ForeignRef, UpdatedAt, UUIDKey, parent_key, unique_where
from shared.fence import participant_metadata


class Base(DeclarativeBase):
    metadata = participant_metadata()  # with the idempotency records and the compensation fence


class ShipmentStatus(StrEnum):
    CREATED = "CREATED"
    DISPATCHED = "DISPATCHED"
    IN_TRANSIT = "IN_TRANSIT"
    DELIVERED = "DELIVERED"
    CANCELLED = "CANCELLED"


class OrderCancelStatus(StrEnum):
    """What the saga's compensation answers: CANCELLED, or NONE when the order had no live shipment."""

    CANCELLED = "CANCELLED"
    NONE = "NONE"


# The only moves a shipment makes: one step forward, or cancelled before it leaves.
NEXT_STATUSES: dict[ShipmentStatus, frozenset[ShipmentStatus]] = {
    ShipmentStatus.CREATED: frozenset({ShipmentStatus.DISPATCHED, ShipmentStatus.CANCELLED}),
    ShipmentStatus.DISPATCHED: frozenset({ShipmentStatus.IN_TRANSIT}),
    ShipmentStatus.IN_TRANSIT: frozenset({ShipmentStatus.DELIVERED}),
    ShipmentStatus.DELIVERED: frozenset(),
    ShipmentStatus.CANCELLED: frozenset(),
}


class Shipment(Base):
    __tablename__ = "shipments"
    # At most one live shipment per order; cancelled ones may pile up.
    __table_args__ = (unique_where("uq_shipments_live_order", "order_id", "status <> 'CANCELLED'"),)

    id: Mapped[UUIDKey]
    order_id: Mapped[ForeignRef]
    customer_id: Mapped[ForeignRef]
    carrier_code: Mapped[str] = mapped_column(String(32))
    address: Mapped[dict[str, Any]] = mapped_column(JSON)
    tracking_number: Mapped[str] = mapped_column(String(32), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default=ShipmentStatus.CREATED)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class ShipmentStatusChange(Base):
    __tablename__ = "shipment_status_history"

    id: Mapped[UUIDKey]
    shipment_id: Mapped[str] = parent_key("shipments.id")
    position: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    at: Mapped[CreatedAt]
    note: Mapped[str | None] = mapped_column(String(500), nullable=True)


# --- what the service layer returns -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusEntry:
    status: ShipmentStatus
    at: datetime
    note: str | None


@dataclass(frozen=True, slots=True)
class Parcel:
    """A shipment with the history of its statuses, oldest first."""

    id: str
    order_id: str
    customer_id: str
    carrier_code: str
    address: dict[str, Any]
    tracking_number: str
    status: ShipmentStatus
    created_at: datetime
    updated_at: datetime
    history: tuple[StatusEntry, ...]


@dataclass(frozen=True, slots=True)
class OrderShipmentCancel:
    """What the compensation did: CANCELLED with the shipment it cancelled, or NONE when the order had none."""

    order_id: str
    status: OrderCancelStatus
    shipment: Parcel | None = None
