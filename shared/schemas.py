"""Request/response pieces that several services share: money, addresses, pages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.responses import Response

Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# Order ids as the saga and the services exchange them (UUIDs, or test ids with ':' and '.').
ORDER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,63}$"
Sku = Annotated[str, StringConstraints(pattern=SKU_PATTERN)]
NonEmptyText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
# Money is an integer count of the currency's minor unit (cents), never a float.
MinorUnits = Annotated[int, Field(ge=0, le=10**12, strict=True)]
Quantity = Annotated[int, Field(gt=0, le=10_000, strict=True)]
# A card token as the payment processor takes it: one contract, checked at the saga's door and at payment's.
PaymentToken = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]{1,64}$")]


def model_response(model: BaseModel, status_code: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A model answered as JSON, serialized by pydantic in one pass: the bytes of
    `JSONResponse(model.model_dump(mode="json", by_alias=True))` without the dict and json.dumps in between
    (a finished saga's view: 0.28 → 0.13 ms)."""
    return Response(model.model_dump_json(by_alias=True), status_code=status_code, headers=headers,
                    media_type="application/json")


class StrictModel(BaseModel):
    """Request bodies: unknown fields are refused rather than silently dropped."""

    model_config = ConfigDict(extra="forbid")


class Address(StrictModel):
    name: NonEmptyText
    line1: NonEmptyText
    line2: Annotated[str, StringConstraints(max_length=200)] | None = None
    city: NonEmptyText
    postal_code: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=16)]
    country: CountryCode


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class PageParams(BaseModel):
    """Which page of a list a request asks for (the `Paging` dependency reads it from the query)."""

    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=1_000_000_000)

    def page(self, items: list[T], total: int) -> Page[T]:
        return Page(items=items, total=total, limit=self.limit, offset=self.offset)
