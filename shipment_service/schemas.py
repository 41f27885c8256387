"""shipment_service request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

from shared.contracts import ShipmentCreate  # noqa: F401 (the saga's contracts, re-exported)
from shared.schemas import Address, NonEmptyText, StrictModel
from shipment_service.models import OrderCancelStatus, ShipmentStatus

Note = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class ShipmentCancel(StrictModel):
    reason: NonEmptyText = "cancelled"


class StatusChange(StrictModel):
    status: ShipmentStatus
    note: Note | None = None


class StatusChangeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    status: ShipmentStatus
    at: datetime
    note: str | None


class ShipmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    order_id: str
    customer_id: str
    carrier_code: str
    address: Address
    tracking_number: str
    status: ShipmentStatus
    created_at: datetime
    updated_at: datetime
    history: list[StatusChangeOut]


class OrderShipmentCancelOut(BaseModel):
    """CANCELLED when this call cancelled the order's live shipment, NONE when it had none."""

    order_id: str
    status: OrderCancelStatus
    shipment: ShipmentOut | None = None
