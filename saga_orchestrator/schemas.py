"""saga_orchestrator request and response bodies."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, Field

from saga_orchestrator.event_store import FeedItem
from shared.schemas import Address, PaymentToken, Quantity, Sku, StrictModel

_ISO_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _iso_only(value: Any) -> Any:
    # pydantic would also read a bare number as Unix time; the API promises ISO 8601 only.
    if isinstance(value, str) and not _ISO_DATE_TIME.match(value):
        raise ValueError("expected an ISO 8601 date and time with a timezone, e.g. 2026-05-01T12:00:00Z")
    return value


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00, before datetime.min in UTC
        raise ValueError("the timestamp is out of range") from None


Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_only), AfterValidator(_in_utc)]
"""A query parameter's point in time: ISO 8601 with a timezone (`Z` or an offset), read as UTC."""


class CustomerOrderLine(StrictModel):
    sku: Sku
    quantity: Quantity


class CustomerOrderCreate(StrictModel):
    lines: list[CustomerOrderLine] = Field(min_length=1, max_length=100)
    shipping_address: Address
    payment_token: PaymentToken


class SagaAccepted(BaseModel):
    saga_id: str
    status: str
    status_url: str


class SagaSummary(BaseModel):
    saga_id: str
    status: str
    customer_id: str
    order_id: str | None
    total_minor: int
    currency: str
    created_at: datetime
    updated_at: datetime
    status_url: str


class SagaStatusCounts(BaseModel):
    """How many sagas are in each status: every status is present, zero included."""

    STARTED: int
    RUNNING: int
    COMPLETED: int
    COMPENSATING: int
    COMPENSATED: int
    COMPENSATION_FAILED: int


class SagaStats(BaseModel):
    counts: SagaStatusCounts
    total: int = Field(description="Every saga counted, the sum of `counts`.")
    created_after: datetime | None = Field(description="The window's start (included), as asked.")
    created_before: datetime | None = Field(description="The window's end (excluded), as asked.")


class CompensationView(BaseModel):
    status: str
    attempts: int
    last_error: str | None
    finished_at: datetime | None


class StepView(BaseModel):
    step: str
    status: str  # PENDING (not reached), RUNNING, SUCCEEDED, FAILED
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    last_error: str | None
    outcome_known: bool
    result: dict[str, Any]
    compensation: CompensationView | None


class HistoryEntry(BaseModel):
    version: int
    type: str
    timestamp: datetime
    data: dict[str, Any]


class SagaView(BaseModel):
    saga_id: str
    status: str
    customer_id: str
    definition_version: int
    order_id: str | None
    currency: str
    total_minor: int
    lines: list[dict[str, Any]]
    shipping_address: dict[str, Any]
    failure_reason: str | None
    tracking_number: str | None
    carrier_code: str | None
    payment_id: str | None
    created_at: datetime
    updated_at: datetime
    steps: list[StepView]
    history: list[HistoryEntry]
    status_url: str


class EventFeed(BaseModel):
    items: list[FeedItem]  # as the event store reads them, the payment token redacted
    after: int
    next_after: int
    limit: int
