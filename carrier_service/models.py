"""carrier_service tables: carriers, the countries each serves, carrier assignments of orders, daily loads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import Boolean, CheckConstraint, Date, ForeignKey, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import CreatedAt, CurrencyCode, ForeignRef, Money, UpdatedAt, UTCDateTime, UUIDKey, unique_where
from shared.fence import participant_metadata


class Base(DeclarativeBase):
    metadata = participant_metadata()  # with the idempotency records and the compensation fence


class AssignmentStatus(StrEnum):
    ASSIGNED = "ASSIGNED"
    RELEASED = "RELEASED"


class ReleaseStatus(StrEnum):
    """What a release answers: RELEASED when it freed a live assignment, NONE when the order held none."""

    RELEASED = "RELEASED"
    NONE = "NONE"


class Carrier(Base):
    __tablename__ = "carriers"

    id: Mapped[UUIDKey]
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    max_weight_grams: Mapped[int] = mapped_column(Integer)
    daily_capacity: Mapped[int] = mapped_column(Integer)
    base_price_minor: Mapped[Money]
    price_per_kg_minor: Mapped[Money]
    currency: Mapped[CurrencyCode]
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class CarrierCountry(Base):
    """One row per country a carrier serves, so "who serves DE" is an indexed lookup."""

    __tablename__ = "carrier_countries"

    carrier_id: Mapped[str] = mapped_column(ForeignKey("carriers.id", ondelete="CASCADE"), primary_key=True)
    country: Mapped[str] = mapped_column(String(2), primary_key=True, index=True)


class CarrierAssignment(Base):
    __tablename__ = "carrier_assignments"
    __table_args__ = (
        # Capacity is counted per carrier, per UTC day, among live assignments.
        Index("ix_carrier_assignments_load", "carrier_id", "service_day", "status"),
        # An order has at most one live assignment; released ones may pile up.
        unique_where("uq_carrier_assignments_live_order", "order_id", "status = 'ASSIGNED'"),
    )

    id: Mapped[UUIDKey]
    order_id: Mapped[ForeignRef]
    carrier_id: Mapped[str] = mapped_column(ForeignKey("carriers.id"))
    carrier_code: Mapped[str] = mapped_column(String(32))
    country: Mapped[str] = mapped_column(String(2))
    weight_grams: Mapped[int] = mapped_column(Integer)
    price_minor: Mapped[Money]
    currency: Mapped[CurrencyCode]
    status: Mapped[str] = mapped_column(String(16), default=AssignmentStatus.ASSIGNED)
    # The UTC day whose capacity this assignment uses.
    service_day: Mapped[date] = mapped_column(Date)
    created_at: Mapped[CreatedAt]
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class CarrierDailyLoad(Base):
    """How many live assignments a carrier has for a service day: its capacity check reads one row, not a count.

    Kept equal to the number of ASSIGNED carrier_assignments of (carrier_id, service_day) by the assignment and
    its release, in the same transaction.
    """

    __tablename__ = "carrier_daily_loads"
    __table_args__ = (CheckConstraint("assigned >= 0", name="assigned_not_negative"),)

    carrier_id: Mapped[str] = mapped_column(ForeignKey("carriers.id"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    assigned: Mapped[int] = mapped_column(Integer)


# --- what the service layer returns -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CarrierDetails:
    """A carrier with the countries it serves, in order."""

    id: str
    code: str
    name: str
    countries: tuple[str, ...]
    max_weight_grams: int
    daily_capacity: int
    base_price_minor: int
    price_per_kg_minor: int
    currency: str
    active: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Assignment:
    """An order's parcel given to a carrier for a service day."""

    id: str
    order_id: str
    carrier_id: str
    carrier_code: str
    country: str
    weight_grams: int
    price_minor: int
    currency: str
    status: AssignmentStatus
    service_day: date
    created_at: datetime
    released_at: datetime | None


@dataclass(frozen=True, slots=True)
class Release:
    """What a release did: RELEASED with the assignment it freed, or NONE when the order held none."""

    order_id: str
    status: ReleaseStatus
    assignment: Assignment | None = None
