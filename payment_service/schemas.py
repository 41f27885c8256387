"""payment_service request and response bodies."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from payment_service.models import OrderRefundStatus, PaymentStatus
from shared.contracts import (
    PaymentCreate,  # noqa: F401 (the saga's contracts, re-exported)
    PositiveMinorUnits,
)
from shared.schemas import NonEmptyText, StrictModel

PAYMENT_ID_PATTERN = r"^[A-Za-z0-9-]{1,36}$"


class RefundCreate(StrictModel):
    amount_minor: PositiveMinorUnits
    reason: NonEmptyText | None = None


class RefundOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    payment_id: str
    amount_minor: int
    reason: str | None
    created_at: datetime


class RefundReceipt(RefundOut):
    """A new refund with the state of its payment after it."""

    payment_status: PaymentStatus
    payment_refunded_minor: int


class PaymentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    order_id: str
    customer_id: str
    status: PaymentStatus
    amount_minor: int
    refunded_minor: int
    currency: str
    processor_reference: str
    card_brand: str
    refunds: list[RefundOut]
    created_at: datetime
    updated_at: datetime


class OrderRefundOut(BaseModel):
    """The saga's compensation: the order's payment refunded in full, or NONE when it was never charged."""

    order_id: str
    status: OrderRefundStatus
    payment_id: str | None = None
    amount_minor: int = 0
    refunded_minor: int = 0
