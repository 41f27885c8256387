"""saga_orchestrator request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints

from shared.schemas import Address, Quantity, Sku, StrictModel

PaymentToken = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,200}$")]


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


class FeedEvent(BaseModel):
    id: int
    originator_id: str
    originator_version: int
    topic: str
    type: str
    timestamp: datetime | None
    state: dict[str, Any]


class EventFeed(BaseModel):
    items: list[FeedEvent]
    after: int
    next_after: int
    limit: int
