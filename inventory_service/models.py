"""inventory_service tables: products with their stock, and the allocations held for orders."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import CreatedAt, CurrencyCode, Money, UpdatedAt, UTCDateTime, UUIDKey, parent_key
from shared.fence import participant_metadata


class Base(DeclarativeBase):
    metadata = participant_metadata()  # with the idempotency records and the compensation fence


class Product(Base):
    __tablename__ = "products"
    # The database itself refuses an oversold or negative stock, whatever the code above it does.
    __table_args__ = (
        CheckConstraint("on_hand >= 0", name="on_hand_not_negative"),
        CheckConstraint("reserved >= 0", name="reserved_not_negative"),
        CheckConstraint("reserved <= on_hand", name="reserved_within_on_hand"),
        CheckConstraint("weight_grams > 0", name="weight_positive"),
        CheckConstraint("unit_price_minor >= 0", name="price_not_negative"),
    )

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    unit_price_minor: Mapped[Money]
    currency: Mapped[CurrencyCode]
    weight_grams: Mapped[int] = mapped_column(Integer)
    on_hand: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class AllocationStatus(StrEnum):
    ALLOCATED = "ALLOCATED"
    RELEASED = "RELEASED"


class ReleaseStatus(StrEnum):
    """What a release answers: the stock given back, or NONE when the order never held any."""

    RELEASED = "RELEASED"
    NONE = "NONE"


class Allocation(Base):
    """The stock one order holds; at most one per order, ever (order_id is unique)."""

    __tablename__ = "allocations"

    id: Mapped[UUIDKey]
    order_id: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=AllocationStatus.ALLOCATED)
    currency: Mapped[str | None] = mapped_column(String(3), nullable=True)
    created_at: Mapped[CreatedAt]
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class AllocationLine(Base):
    """One sku of an allocation, with the price and weight it had when it was allocated."""

    __tablename__ = "allocation_lines"

    id: Mapped[UUIDKey]
    allocation_id: Mapped[str] = parent_key("allocations.id")
    sku: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price_minor: Mapped[Money]
    weight_grams: Mapped[int] = mapped_column(Integer)


# --- what the service layer returns -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StockedProduct:
    sku: str
    name: str
    unit_price_minor: int
    currency: str
    weight_grams: int
    on_hand: int
    reserved: int
    created_at: datetime
    updated_at: datetime
    available: int


@dataclass(frozen=True, slots=True)
class HeldLine:
    """One sku of an allocation, with the price and weight it had when it was allocated."""

    sku: str
    quantity: int
    unit_price_minor: int
    weight_grams: int


@dataclass(frozen=True, slots=True)
class HeldStock:
    """An order's allocation with its lines, in sku order."""

    id: str
    order_id: str
    status: AllocationStatus
    currency: str | None
    created_at: datetime
    released_at: datetime | None
    lines: tuple[HeldLine, ...]
    total_minor: int
    total_weight_grams: int


@dataclass(frozen=True, slots=True)
class Release:
    """What a release did: RELEASED when the order held stock, NONE when it never did."""

    order_id: str
    status: ReleaseStatus
