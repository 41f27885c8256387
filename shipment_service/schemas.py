"""shipment_service request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

from shared.contracts import ShipmentCreate  # noqa: F401 (the saga's contracts, re-exported)
from shared.schemas import Address, NonEmptyText, StrictModel
from shipment_service.models import OrderCancelStatus, ShipmentStatus

CarrierCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9_-]{0,31}$")]
OrderId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
CustomerId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
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
