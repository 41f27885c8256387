"""inventory_service request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inventory_service.models import AllocationStatus, ReleaseStatus
from shared.contracts import AllocationCreate, AllocationLineIn  # noqa: F401 (the saga's contracts, re-exported)
from shared.schemas import Currency, MinorUnits, NonEmptyText, Sku, StrictModel

WeightGrams = Annotated[int, Field(gt=0, le=1_000_000, strict=True, description="Grams per unit, at most 1 t.")]
StockLevel = Annotated[int, Field(ge=0, le=1_000_000_000, strict=True)]
RestockQuantity = Annotated[int, Field(gt=0, le=1_000_000, strict=True)]


class ProductCreate(StrictModel):
    sku: Sku
    name: NonEmptyText
    unit_price_minor: MinorUnits
    currency: Currency = "EUR"
    weight_grams: WeightGrams
    on_hand: StockLevel = 0


class ProductUpdate(StrictModel):
    """Catalogue fields only; stock changes through restock and allocations."""

    name: NonEmptyText | None = None
    unit_price_minor: MinorUnits | None = None
    weight_grams: WeightGrams | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> ProductUpdate:
        if self.name is None and self.unit_price_minor is None and self.weight_grams is None:
            raise ValueError("Give at least one of name, unit_price_minor, weight_grams.")
        return self


class Restock(StrictModel):
    quantity: RestockQuantity


class ProductOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    sku: str
    name: str
    unit_price_minor: int
    currency: str
    weight_grams: int
    on_hand: int
    reserved: int
    available: int
    created_at: datetime
    updated_at: datetime


class AllocationLineOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    sku: str
    quantity: int
    unit_price_minor: int
    weight_grams: int


class AllocationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    order_id: str
    status: AllocationStatus
    lines: list[AllocationLineOut]
    total_weight_grams: int
    total_minor: int
    currency: str | None
    created_at: datetime
    released_at: datetime | None


class ReleaseOut(BaseModel):
    order_id: str
    status: ReleaseStatus
