"""order_service request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from order_service.models import OrderStatus
from shared.schemas import Address, Currency, MinorUnits, NonEmptyText, Quantity, Sku, StrictModel


class OrderCreate(StrictModel):
    customer_id: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)] | None = Field(
        default=None, description="Required for admins and services."
    )
    currency: Currency = "EUR"
    shipping_address: Address | None = None


class LineIn(StrictModel):
    sku: Sku
    quantity: Quantity
    unit_price_minor: MinorUnits


class LinesAdd(StrictModel):
    lines: list[LineIn] = Field(min_length=1, max_length=100)


class OrderCancel(StrictModel):
    reason: NonEmptyText = "cancelled"


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
