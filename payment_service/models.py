"""payment_service tables: payments, their refunds, every charge attempt, and the compensation fence."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import CreatedAt, CurrencyCode, ForeignRef, Money, UpdatedAt, UUIDKey, parent_key
from shared.fence import participant_metadata


class Base(DeclarativeBase):
    metadata = participant_metadata()  # with the idempotency records and the compensation fence


class PaymentStatus(StrEnum):
    CAPTURED = "CAPTURED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"


class OrderRefundStatus(StrEnum):
    """What the saga's compensation answers: REFUNDED, or NONE when the order was never charged."""

    REFUNDED = "REFUNDED"
    NONE = "NONE"


class ChargeOutcome(StrEnum):
    """What the processor answered a charge attempt."""

    CAPTURED = "CAPTURED"
    DECLINED = "DECLINED"
    UNAVAILABLE = "UNAVAILABLE"


class Payment(Base):
    """A captured charge; at most one per order. Declines are ChargeAttempts, never Payments."""

    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint("refunded_minor >= 0", name="refunded_not_negative"),
        CheckConstraint("refunded_minor <= amount_minor", name="refunded_within_amount"),
    )

    id: Mapped[UUIDKey]
    order_id: Mapped[str] = mapped_column(String(64), unique=True)
    customer_id: Mapped[ForeignRef]
    amount_minor: Mapped[Money]
    currency: Mapped[CurrencyCode]
    status: Mapped[str] = mapped_column(String(24), index=True, default=PaymentStatus.CAPTURED)
    refunded_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    processor_reference: Mapped[str] = mapped_column(String(64))
    card_brand: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class Refund(Base):
    __tablename__ = "refunds"
    __table_args__ = (CheckConstraint("amount_minor > 0", name="amount_positive"),)

    id: Mapped[UUIDKey]
    payment_id: Mapped[str] = parent_key("payments.id")
    amount_minor: Mapped[Money]
    reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[CreatedAt]


class ChargeAttempt(Base):
    """Every call to the processor, whatever it answered (tok_flaky counts these)."""

    __tablename__ = "charge_attempts"

    id: Mapped[UUIDKey]
    order_id: Mapped[ForeignRef]
    customer_id: Mapped[str] = mapped_column(String(64))
    amount_minor: Mapped[Money]
    currency: Mapped[CurrencyCode]
    payment_token: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    code: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[CreatedAt]


# --- what the service layer returns -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefundEntry:
    id: str
    payment_id: str
    amount_minor: int
    reason: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class IssuedRefund:
    """A new refund, with its payment's state after it."""

    id: str
    payment_id: str
    amount_minor: int
    reason: str | None
    created_at: datetime
    payment_status: PaymentStatus
    payment_refunded_minor: int


@dataclass(frozen=True, slots=True)
class CapturedPayment:
    """A payment with its refunds, oldest first."""

    id: str
    order_id: str
    customer_id: str
    amount_minor: int
    currency: str
    status: PaymentStatus
    refunded_minor: int
    processor_reference: str
    card_brand: str
    created_at: datetime
    updated_at: datetime
    refunds: tuple[RefundEntry, ...]


@dataclass(frozen=True, slots=True)
class OrderRefund:
    """What the compensation did: REFUNDED with the payment's amounts after it, or NONE when never charged."""

    order_id: str
    status: OrderRefundStatus
    payment_id: str | None = None
    amount_minor: int = 0
    refunded_minor: int = 0
