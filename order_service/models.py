"""order_service tables: orders and order lines."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import CreatedAt, CurrencyCode, ForeignRef, Money, UpdatedAt, UUIDKey, parent_key
from shared.fence import participant_metadata


class Base(DeclarativeBase):
    metadata = participant_metadata()  # with the idempotency records and the compensation fence


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


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
