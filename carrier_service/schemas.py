"""carrier_service request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from carrier_service.models import AssignmentStatus, ReleaseStatus
from shared.contracts import (
    AssignmentRequest,  # noqa: F401 (the saga's contracts, re-exported)
    CarrierCode,
    Grams,
)
from shared.schemas import CountryCode, Currency, MinorUnits, NonEmptyText, StrictModel

Capacity = Annotated[int, Field(ge=0, le=1_000_000, strict=True)]
Countries = Annotated[list[CountryCode], Field(min_length=1, max_length=250)]


def _unique_countries(countries: list[str] | None) -> list[str] | None:
    return None if countries is None else sorted(set(countries))


class CarrierCreate(StrictModel):
    code: CarrierCode
    name: NonEmptyText
    countries: Countries
    max_weight_grams: Grams
    daily_capacity: Capacity
    base_price_minor: MinorUnits
    price_per_kg_minor: MinorUnits
    currency: Currency = "EUR"
    active: bool = True

    _countries = field_validator("countries")(_unique_countries)


class CarrierUpdate(StrictModel):
    """Only the fields sent change; the code is the carrier's identity and cannot change."""

    name: NonEmptyText | None = None
    countries: Countries | None = None
    max_weight_grams: Grams | None = None
    daily_capacity: Capacity | None = None
    base_price_minor: MinorUnits | None = None
    price_per_kg_minor: MinorUnits | None = None
    currency: Currency | None = None
    active: bool | None = None

    _countries = field_validator("countries")(_unique_countries)

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = sorted(key for key, value in data.items() if value is None)
            if nulls:
                raise ValueError(f"fields cannot be null: {', '.join(nulls)}")
        return data

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class CarrierOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    code: str
    name: str
    countries: list[str]
    max_weight_grams: int
    daily_capacity: int
    base_price_minor: int
    price_per_kg_minor: int
    currency: str
    active: bool
    created_at: datetime
    updated_at: datetime


class AssignmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    order_id: str
    carrier_id: str
    carrier_code: str
    country: str
    weight_grams: int
    price_minor: int
    currency: str
    status: AssignmentStatus
    created_at: datetime
    released_at: datetime | None


class ReleaseOut(BaseModel):
    """RELEASED when this call freed a live assignment, NONE when the order held none."""

    order_id: str
    status: ReleaseStatus
    assignment: AssignmentOut | None = None
