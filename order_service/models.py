"""order_service tables: orders and order lines."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.bus import inbox_table
from shared.db import CreatedAt, CurrencyCode, ForeignRef, Money, UpdatedAt, UTCDateTime, UUIDKey, parent_key
from shared.fence import participant_metadata


class Base(DeclarativeBase):
    metadata = participant_metadata()  # with the idempotency records, the compensation fence and the outbox


inbox_table(Base.metadata)  # the events its consumers applied (shared/bus.py)


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"
    # Moved by the parcel's events on the bus (service.follow_parcel), never by a request.
    SHIPPED = "SHIPPED"
    DELIVERED = "DELIVERED"


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[UUIDKey]
    customer_id: Mapped[ForeignRef]
    status: Mapped[str] = mapped_column(String(16), index=True, default=OrderStatus.PENDING)
    currency: Mapped[CurrencyCode]
    shipping_address: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    cancel_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class OrderLine(Base):
    __tablename__ = "order_lines"

    id: Mapped[UUIDKey]
    order_id: Mapped[str] = parent_key("orders.id")
    position: Mapped[int] = mapped_column(Integer)
    sku: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price_minor: Mapped[Money]


class TimelineEntry(Base):
    """The order's timeline: every event on the bus about an order (its CloudEvent's `orderid`), from every service.

    A saga's events from before its order existed (saga.started) have no order id: they are kept with none and
    joined to the order through the saga (their `subject`, the saga's id). Kept as long as the order: a customer
    reads their order's history here."""

    __tablename__ = "order_timeline"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    order_id: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    type: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(200), index=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime())
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


# --- what the service layer returns -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    id: str
    sku: str
    quantity: int
    unit_price_minor: int
    line_total_minor: int


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    """An order with its lines, in position order."""

    id: str
    customer_id: str
    status: OrderStatus
    currency: str
    shipping_address: dict[str, Any] | None
    cancel_reason: str | None
    created_at: datetime
    updated_at: datetime
    lines: tuple[Line, ...]
    total_minor: int
