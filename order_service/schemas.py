"""order_service request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from order_service.models import OrderStatus
from shared.contracts import LineIn, LinesAdd, OrderCancel, OrderCreate  # noqa: F401 (the saga's contracts, re-exported)
from shared.schemas import Address


class LineOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    sku: str
    quantity: int
    unit_price_minor: int
    line_total_minor: int


class OrderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    customer_id: str
    status: OrderStatus
    currency: str
    total_minor: int
    shipping_address: Address | None
    cancel_reason: str | None
    lines: list[LineOut]
    created_at: datetime
    updated_at: datetime


class TimelineEvent(BaseModel):
    """One event of an order's timeline: the CloudEvent as the bus carried it (its data as the producer wrote it)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    type: str
    source: str
    subject: str
    time: datetime
    data: dict[str, Any]


class Timeline(BaseModel):
    order_id: str
    events: list[TimelineEvent]
