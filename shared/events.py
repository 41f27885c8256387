"""The event catalogue: every event the fleet publishes on the bus, its envelope (CloudEvents 1.0) and its data.

A cross-service contract like shared/contracts.py: the producer builds the data model, the consumers read the same
model, so a field renamed on one side is renamed on the other. One versioned model per event type: a change that
breaks a consumer is a new model with `version` + 1, published beside the old one until every consumer reads it.

The CloudEvents `type` is `<name>.v<version>` (`order.confirmed.v1`), the NATS subject `events.<type>`, the
`subject` attribute the id of the aggregate that changed (an order, a product's SKU, a saga), and the extension
attribute `orderid` names the order an event is about wherever there is one (the order's timeline is built from it).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

# The subjects of the bus: every event under SUBJECT_ROOT, the dead letters under DEAD_LETTER_ROOT.
SUBJECT_ROOT = "events"
DEAD_LETTER_ROOT = "deadletter"
EVENTS_STREAM = "EVENTS"
DEAD_LETTER_STREAM = "DEADLETTERS"
SOURCE_PREFIX = "/customer-service/"


class CloudEvent(BaseModel):
    """The envelope of every message on the bus (CloudEvents 1.0, JSON format), with the extension `orderid`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, max_length=64)
    source: str = Field(min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=100)
    subject: str = Field(min_length=1, max_length=200)
    time: datetime
    datacontenttype: Literal["application/json"] = "application/json"
    orderid: str | None = Field(default=None, max_length=64)
    data: dict[str, Any]

    @property
    def nats_subject(self) -> str:
        return f"{SUBJECT_ROOT}.{self.type}"


class EventData(BaseModel):
    """The data of one event type. Subclasses say their name, version, producer and consumers (the catalogue)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassVar[str]
    version: ClassVar[int] = 1
    producer: ClassVar[str]  # the package that publishes it (only it may: its NATS user's permissions)
    consumers: ClassVar[tuple[str, ...]] = ()  # who reacts to it, besides the dashboard and `events tail`
    summary: ClassVar[str] = ""

    @classmethod
    def event_type(cls) -> str:
        return f"{cls.name}.v{cls.version}"

    @classmethod
    def nats_subject(cls) -> str:
        return f"{SUBJECT_ROOT}.{cls.event_type()}"


E = TypeVar("E", bound=EventData)


def payload(event: CloudEvent, model: type[E]) -> E:
    """The event's data as its catalogue model (ValueError when it is not one)."""
    if event.type != model.event_type():
        raise ValueError(f"a {event.type} event is not a {model.event_type()}")
    return model.model_validate(event.data)


def envelope(data: EventData, subject: str, *, time: datetime, order_id: str | None = None,
             event_id: str | None = None) -> CloudEvent:
    """The CloudEvent that carries `data` about aggregate `subject` (an id, given or new)."""
    return CloudEvent(id=event_id or str(uuid.uuid4()), source=f"{SOURCE_PREFIX}{data.producer}",
                      type=data.event_type(), subject=subject, time=time, orderid=order_id,
                      data=data.model_dump(mode="json"))


# --- order_service ------------------------------------------------------------------------------------------

_TIMELINE = ("order_service",)  # the order's timeline projection reads every event with an orderid


class OrderCreated(EventData):
    name, producer, consumers = "order.created", "order_service", _TIMELINE
    summary: ClassVar[str] = "An order was created (PENDING)."
    order_id: str
    customer_id: str
    currency: str


class OrderLineAdded(EventData):
    name, producer, consumers = "order.line_added", "order_service", _TIMELINE
    summary: ClassVar[str] = "Priced lines were added to a PENDING order."
    order_id: str
    line_ids: list[str]
    skus: list[str]
    total_minor: int


class OrderLineRemoved(EventData):
    name, producer, consumers = "order.line_removed", "order_service", _TIMELINE
    summary: ClassVar[str] = "Lines were removed from a PENDING order (one by an operator, all by a compensation)."
    order_id: str
    line_ids: list[str]
    total_minor: int


class OrderConfirmed(EventData):
    name, producer, consumers = "order.confirmed", "order_service", _TIMELINE
    summary: ClassVar[str] = "The saga finished: the order is CONFIRMED."
    order_id: str
    customer_id: str
    total_minor: int
    currency: str


class OrderCancelled(EventData):
    name, producer, consumers = "order.cancelled", "order_service", _TIMELINE
    summary: ClassVar[str] = "The order is CANCELLED, with the reason."
    order_id: str
    reason: str


class OrderShipped(EventData):
    name, producer, consumers = "order.shipped", "order_service", _TIMELINE
    summary: ClassVar[str] = "The order's parcel left the warehouse: the order is SHIPPED (from shipment events)."
    order_id: str
    shipment_id: str


class OrderDelivered(EventData):
    name, producer, consumers = "order.delivered", "order_service", _TIMELINE
    summary: ClassVar[str] = "The order's parcel was delivered: the order is DELIVERED (from shipment events)."
    order_id: str
    shipment_id: str


# --- inventory_service --------------------------------------------------------------------------------------


class StockAllocated(EventData):
    name, producer, consumers = "stock.allocated", "inventory_service", _TIMELINE
    summary: ClassVar[str] = "An order's lines were allocated from stock."
    order_id: str
    lines: dict[str, int]  # SKU -> quantity


class StockReleased(EventData):
    name, producer, consumers = "stock.released", "inventory_service", _TIMELINE
    summary: ClassVar[str] = "An order's allocation was released back to stock."
    order_id: str
    lines: dict[str, int]


class ProductCreated(EventData):
    name, producer = "product.created", "inventory_service"
    summary: ClassVar[str] = "A product was added to the catalogue."
    sku: str
    product_name: str
    unit_price_minor: int
    currency: str
    weight_grams: int
    on_hand: int


class ProductUpdated(EventData):
    name, producer = "product.updated", "inventory_service"
    summary: ClassVar[str] = "A product's catalogue fields changed (name, price, weight): their values now."
    sku: str
    product_name: str
    unit_price_minor: int
    currency: str
    weight_grams: int


class ProductRestocked(EventData):
    name, producer = "product.restocked", "inventory_service"
    summary: ClassVar[str] = "Units were added to a product's stock."
    sku: str
    quantity: int
    on_hand: int


# --- payment_service ----------------------------------------------------------------------------------------


class PaymentCaptured(EventData):
    name, producer, consumers = "payment.captured", "payment_service", _TIMELINE
    summary: ClassVar[str] = "An order's total was charged."
    order_id: str
    payment_id: str
    amount_minor: int
    currency: str


class PaymentDeclined(EventData):
    name, producer, consumers = "payment.declined", "payment_service", _TIMELINE
    summary: ClassVar[str] = "The processor declined an order's charge (the attempt is kept; no payment exists)."
    order_id: str
    attempt_id: str  # the charge attempt on file: a declined charge is never a payment
    amount_minor: int
    currency: str
    code: str  # the processor's decline code (card_declined, insufficient_funds, invalid_token)


class PaymentRefunded(EventData):
    name, producer, consumers = "payment.refunded", "payment_service", _TIMELINE
    summary: ClassVar[str] = "An order's payment was refunded, in full or in part."
    order_id: str
    payment_id: str
    refund_id: str
    amount_minor: int  # this refund's
    currency: str
    refunded_minor: int  # the payment's refunds so far, this one included
    payment_status: str  # REFUNDED (in full) or PARTIALLY_REFUNDED
    reason: str | None = None


# --- carrier_service ----------------------------------------------------------------------------------------


class CarrierAssigned(EventData):
    name, producer, consumers = "carrier.assigned", "carrier_service", _TIMELINE
    summary: ClassVar[str] = "A carrier was assigned to an order's parcel."
    order_id: str
    carrier_code: str
    price_minor: int
    currency: str


class CarrierReleased(EventData):
    name, producer, consumers = "carrier.released", "carrier_service", _TIMELINE
    summary: ClassVar[str] = "An order's carrier assignment was released."
    order_id: str
    carrier_code: str


# --- shipment_service ---------------------------------------------------------------------------------------

_PARCEL = ("order_service",)  # the order follows its parcel (SHIPPED, DELIVERED) and its timeline


class ShipmentEvent(EventData):
    """The fields every shipment event carries."""

    producer: ClassVar[str] = "shipment_service"
    consumers: ClassVar[tuple[str, ...]] = _PARCEL
    order_id: str
    shipment_id: str
    tracking_number: str
    note: str | None = None  # the status change's note: an operator's, or the cancellation's reason


class ShipmentCreated(ShipmentEvent):
    name = "shipment.created"
    summary: ClassVar[str] = "A shipment (with its tracking number) was created for an order."


class ShipmentDispatched(ShipmentEvent):
    name = "shipment.dispatched"
    summary: ClassVar[str] = "The parcel left the warehouse."


class ShipmentInTransit(ShipmentEvent):
    name = "shipment.in_transit"
    summary: ClassVar[str] = "The parcel is on its way."


class ShipmentDelivered(ShipmentEvent):
    name = "shipment.delivered"
    summary: ClassVar[str] = "The parcel was delivered."


class ShipmentCancelled(ShipmentEvent):
    name = "shipment.cancelled"
    summary: ClassVar[str] = "The shipment was cancelled (a compensation, or an operator)."


# --- auth_service -------------------------------------------------------------------------------------------


class UserRegistered(EventData):
    name, producer = "user.registered", "auth_service"
    summary: ClassVar[str] = "A customer registered (their id and role only: no password, no email)."
    user_id: str
    role: str


# --- saga_orchestrator (relayed from its event store's notification log) -------------------------------------


class SagaEvent(EventData):
    producer: ClassVar[str] = "saga_orchestrator"
    consumers: ClassVar[tuple[str, ...]] = _TIMELINE
    saga_id: str
    order_id: str | None = None


class SagaStarted(SagaEvent):
    name = "saga.started"
    summary: ClassVar[str] = "A customer's order was accepted: its saga started."
    customer_id: str
    definition_version: int


class SagaStepSucceeded(SagaEvent):
    name = "saga.step_succeeded"
    summary: ClassVar[str] = "A step of the saga succeeded."
    step: str
    attempts: int


class SagaStepFailed(SagaEvent):
    name = "saga.step_failed"
    summary: ClassVar[str] = "A step of the saga failed (final: a refusal, or its deadline passed)."
    step: str
    error: str
    final: bool


class SagaCompensating(SagaEvent):
    name = "saga.compensating"
    summary: ClassVar[str] = "The saga is undoing its steps, latest first."
    reason: str
    plan: list[str]


class SagaCompleted(SagaEvent):
    name = "saga.completed"
    summary: ClassVar[str] = "Every step succeeded and the order is confirmed."


class SagaFailed(SagaEvent):
    name = "saga.failed"
    summary: ClassVar[str] = "The saga ended without the order: COMPENSATED, or COMPENSATION_FAILED for an operator."
    status: str


CATALOGUE: dict[str, type[EventData]] = {model.event_type(): model for model in (
    OrderCreated, OrderLineAdded, OrderLineRemoved, OrderConfirmed, OrderCancelled, OrderShipped, OrderDelivered,
    StockAllocated, StockReleased, ProductCreated, ProductUpdated, ProductRestocked,
    PaymentCaptured, PaymentDeclined, PaymentRefunded,
    CarrierAssigned, CarrierReleased,
    ShipmentCreated, ShipmentDispatched, ShipmentInTransit, ShipmentDelivered, ShipmentCancelled,
    UserRegistered,
    SagaStarted, SagaStepSucceeded, SagaStepFailed, SagaCompensating, SagaCompleted, SagaFailed,
)}


def published_by(package: str) -> list[type[EventData]]:
    return [model for model in CATALOGUE.values() if model.producer == package]


def subject_prefixes(package: str) -> list[str]:
    """The subjects `package` may publish on (its NATS user's permissions): one per event family it produces."""
    families = sorted({model.name.split(".")[0] for model in published_by(package)})
    return [f"{SUBJECT_ROOT}.{family}.>" for family in families]


# The durable consumers of the fleet: package -> {consumer name: the subject it reads}. The consumer's NATS name is
# `<package>_<name>`, its dead letters go to `deadletter.<package>.<name>`.
CONSUMERS: dict[str, dict[str, str]] = {
    "order_service": {
        "parcel": f"{SUBJECT_ROOT}.shipment.>",
        "timeline": f"{SUBJECT_ROOT}.>",
    },
}


def durable_name(package: str, consumer: str) -> str:
    return f"{package}_{consumer}"


def dead_letter_subject(package: str, consumer: str) -> str:
    return f"{DEAD_LETTER_ROOT}.{package}.{consumer}"
