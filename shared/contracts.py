"""The saga's contracts with its participants: the request bodies of every step and compensation, one definition.

The participants validate their requests with these models (their schemas import them) and the orchestrator's
step table builds its bodies with them (`saga_orchestrator/steps.py`), so a field renamed or tightened on
one side is renamed or tightened on the other, and a body the saga's data cannot make fails before it is
sent, not at the participant.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from shared.schemas import (
    ORDER_ID_PATTERN,
    Address,
    CountryCode,
    Currency,
    MinorUnits,
    NonEmptyText,
    PaymentToken,
    Quantity,
    Sku,
    StrictModel,
)

# Order ids are UUIDs from order_service; anything id-like up to the columns' 64 characters is accepted.
OrderId = Annotated[str, StringConstraints(pattern=ORDER_ID_PATTERN)]
CarrierCode = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9_-]{0,31}$")]
# Customer ids are auth_service user ids: printable, at most 64 characters.
CUSTOMER_ID_PATTERN = r"^[^\x00-\x1f\x7f]{1,64}$"
CustomerId = Annotated[str, StringConstraints(pattern=CUSTOMER_ID_PATTERN)]
TrimmedCustomerId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
# A charge or refund is at least one minor unit; integers only (1.5 or "150" are refused).
PositiveMinorUnits = Annotated[int, Field(ge=1, le=10**12, strict=True)]
# A parcel (and a carrier's limit) is at most 100 t: keeps price arithmetic far inside 64-bit integers.
Grams = Annotated[int, Field(gt=0, le=100_000_000, strict=True)]


# -- order_service ---------------------------------------------------------------------------------


class OrderCreate(StrictModel):
    customer_id: TrimmedCustomerId | None = Field(default=None, description="Required for admins and services.")
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


# -- inventory_service -----------------------------------------------------------------------------


class AllocationLineIn(StrictModel):
    sku: Sku
    quantity: Quantity


class AllocationCreate(StrictModel):
    order_id: OrderId
    lines: list[AllocationLineIn] = Field(min_length=1, max_length=100)


# -- payment_service -------------------------------------------------------------------------------


class PaymentCreate(StrictModel):
    order_id: OrderId
    customer_id: CustomerId
    amount_minor: PositiveMinorUnits
    currency: Currency
    payment_token: PaymentToken = Field(description="A test card token, e.g. tok_visa (see payment_service.processor).")


# -- carrier_service -------------------------------------------------------------------------------


class AssignmentRequest(StrictModel):
    order_id: OrderId
    country: CountryCode
    weight_grams: Grams


# -- shipment_service ------------------------------------------------------------------------------


class ShipmentCreate(StrictModel):
    order_id: OrderId
    customer_id: TrimmedCustomerId
    carrier_code: CarrierCode
    address: Address
