"""The saga's definition as one table: each step's service call, what it yields, and its compensation.

Paths are `str.format` templates and bodies are the participants' own request models (`shared.contracts`),
built from the saga's context (its request, priced lines and the results of earlier steps, see
`Saga.context`): a body the saga's data cannot make fails here (a pydantic ValidationError), before it is sent.
A saga records the version of the definition it started under and is finished under that version: change a
step's contract by adding a new version, never by editing one that running sagas may still use.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel

from shared import contracts
from shared.schemas import Address

ORDER = "ORDER-SERVICE"
INVENTORY = "INVENTORY-SERVICE"
PAYMENT = "PAYMENT-SERVICE"
CARRIER = "CARRIER-SERVICE"
SHIPMENT = "SHIPMENT-SERVICE"

Context = Mapping[str, Any]
BodyBuilder = Callable[[Context], BaseModel]


class StepKind(StrEnum):
    """What a step is to the saga's rules (`core`); the kinds of Garcia-Molina's sagas, named as Richardson does."""

    # Undone by its compensation when a later step fails; a transient failure past its deadline leaves its
    # outcome unknown, so it is compensated too.
    COMPENSATABLE = "compensatable"
    # Compensatable, but when its outcome is unknown it is first replayed under its own key: the participant
    # answers with the original's result (waiting for it if it still runs) or makes the call now, so the
    # saga learns what the step did before undoing it. The order's cancellation needs the order id only the
    # replay can learn; the carrier and the shipment refuse a late step themselves (shared/fence.py), and
    # their replay records the assignment or tracking number that is then undone.
    REPLAY_BEFORE_COMPENSATE = "replay-before-compensate"
    # The go/no-go: no compensation. Its success completes the forward path; an unknown outcome is settled by
    # a replay before anything is undone (a late success after the undoing would stand alone).
    PIVOT = "pivot"
    # After the pivot: retried until it succeeds (no deadline, a refusal too), since nothing can be undone.
    RETRIABLE = "retriable"


class SagaStep(StrEnum):
    CREATE_ORDER = "create_order"
    ADD_ORDER_LINES = "add_order_lines"
    ALLOCATE_INVENTORY = "allocate_inventory"
    MAKE_PAYMENT = "make_payment"
    ASSIGN_CARRIER = "assign_carrier"
    CREATE_SHIPMENT = "create_shipment"
    CONFIRM_ORDER = "confirm_order"  # the finish: the order is CONFIRMED only after the six steps


@functools.cache
def _path_fields(template: str) -> tuple[str, ...]:
    """The names a path template fills in, e.g. ("order_id",) for "/api/orders/{order_id}/confirm"."""
    return tuple(name for _, name, _, _ in string.Formatter().parse(template) if name)


@dataclass(frozen=True)
class ServiceCall:
    app: str
    method: str
    path: str
    body: BodyBuilder | None = None

    def render_path(self, context: Context) -> str:
        """KeyError when the path needs a result that is not known (yet)."""
        values = {}
        for name in _path_fields(self.path):
            value = context.get(name)
            if value is None:
                raise KeyError(name)
            values[name] = quote(str(value), safe="")
        return self.path.format_map(values)

    def can_render(self, context: Context) -> bool:
        """Whether every result the path names is known (the step to undo can be addressed)."""
        return all(context.get(name) is not None for name in _path_fields(self.path))

    def render_body(self, context: Context) -> dict[str, Any] | None:
        """The body as JSON: the fields the builder set (a participant's defaults stay its own)."""
        if self.body is None:
            return None
        return self.body(context).model_dump(mode="json", exclude_unset=True)


@dataclass(frozen=True)
class StepDefinition:
    step: SagaStep
    kind: StepKind
    action: ServiceCall
    compensation: ServiceCall | None
    # context key ← field of the action's response body; later steps and compensations read them.
    results: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        undone = self.kind in (StepKind.COMPENSATABLE, StepKind.REPLAY_BEFORE_COMPENSATE)
        if undone != (self.compensation is not None):
            raise ValueError(f"step {self.step}: a {self.kind} step {'needs' if undone else 'has no'} compensation")

    def extract_results(self, response: Any) -> dict[str, Any]:
        body = response if isinstance(response, dict) else {}
        return {key: body.get(source) for key, source in self.results.items()}


@dataclass(frozen=True)
class SagaDefinition:
    version: int
    steps: tuple[StepDefinition, ...]

    def __post_init__(self) -> None:
        kinds = [s.kind for s in self.steps]
        pivot = kinds.index(StepKind.PIVOT) if StepKind.PIVOT in kinds else len(kinds)
        if kinds.count(StepKind.PIVOT) > 1 or any(k == StepKind.RETRIABLE for k in kinds[:pivot]) \
                or any(k != StepKind.RETRIABLE for k in kinds[pivot + 1:]):
            raise ValueError(f"saga definition v{self.version}: compensatable steps, at most one pivot, then "
                             f"retriable steps, in that order (not {[str(k) for k in kinds]})")

    def first(self) -> StepDefinition:
        return self.steps[0]

    def get(self, step: str) -> StepDefinition:
        for definition in self.steps:
            if definition.step == step:
                return definition
        raise KeyError(f"step {step!r} is not part of saga definition v{self.version}")

    def after(self, step: str) -> StepDefinition | None:
        names = [d.step for d in self.steps]
        index = names.index(SagaStep(step))
        return self.steps[index + 1] if index + 1 < len(self.steps) else None


def _cancel(c: Context) -> contracts.OrderCancel:
    return contracts.OrderCancel(reason=str(c["failure_reason"])[:200].strip() or "saga compensated")


def _order_lines(c: Context) -> contracts.LinesAdd:
    return contracts.LinesAdd(lines=[contracts.LineIn(
        sku=ln["sku"], quantity=ln["quantity"], unit_price_minor=ln["unit_price_minor"]) for ln in c["lines"]])


def _allocation(c: Context) -> contracts.AllocationCreate:
    return contracts.AllocationCreate(order_id=c["order_id"], lines=[
        contracts.AllocationLineIn(sku=ln["sku"], quantity=ln["quantity"]) for ln in c["lines"]])


V1 = SagaDefinition(version=1, steps=(
    StepDefinition(
        SagaStep.CREATE_ORDER, StepKind.REPLAY_BEFORE_COMPENSATE,
        ServiceCall(ORDER, "POST", "/api/orders", lambda c: contracts.OrderCreate(
            customer_id=c["customer_id"], currency=c["currency"],
            shipping_address=Address.model_validate(c["shipping_address"]))),
        ServiceCall(ORDER, "POST", "/api/orders/{order_id}/cancel", _cancel),
        results={"order_id": "id"},
    ),
    StepDefinition(
        SagaStep.ADD_ORDER_LINES, StepKind.COMPENSATABLE,
        ServiceCall(ORDER, "POST", "/api/orders/{order_id}/lines", _order_lines),
        ServiceCall(ORDER, "DELETE", "/api/orders/{order_id}/lines"),
        results={"order_total_minor": "total_minor"},
    ),
    StepDefinition(
        SagaStep.ALLOCATE_INVENTORY, StepKind.COMPENSATABLE,
        ServiceCall(INVENTORY, "POST", "/api/inventory/allocations", _allocation),
        ServiceCall(INVENTORY, "POST", "/api/inventory/allocations/{order_id}/release"),
        results={"allocated_weight_grams": "total_weight_grams"},
    ),
    StepDefinition(
        SagaStep.MAKE_PAYMENT, StepKind.COMPENSATABLE,
        ServiceCall(PAYMENT, "POST", "/api/payments", lambda c: contracts.PaymentCreate(
            order_id=c["order_id"], customer_id=c["customer_id"],
            amount_minor=c.get("order_total_minor") or c["total_minor"], currency=c["currency"],
            payment_token=c["payment_token"])),
        ServiceCall(PAYMENT, "POST", "/api/payments/orders/{order_id}/refund"),
        results={"payment_id": "id", "charged_minor": "amount_minor"},
    ),
    StepDefinition(
        SagaStep.ASSIGN_CARRIER, StepKind.REPLAY_BEFORE_COMPENSATE,
        ServiceCall(CARRIER, "POST", "/api/carriers/assignments", lambda c: contracts.AssignmentRequest(
            order_id=c["order_id"], country=c["country"],
            weight_grams=c.get("allocated_weight_grams") or c["total_weight_grams"])),
        ServiceCall(CARRIER, "POST", "/api/carriers/assignments/{order_id}/release"),
        results={"assignment_id": "id", "carrier_code": "carrier_code", "shipping_price_minor": "price_minor"},
    ),
    StepDefinition(
        SagaStep.CREATE_SHIPMENT, StepKind.REPLAY_BEFORE_COMPENSATE,
        ServiceCall(SHIPMENT, "POST", "/api/shipments", lambda c: contracts.ShipmentCreate(
            order_id=c["order_id"], customer_id=c["customer_id"], carrier_code=c["carrier_code"],
            address=Address.model_validate(c["shipping_address"]))),
        ServiceCall(SHIPMENT, "POST", "/api/shipments/orders/{order_id}/cancel"),
        results={"shipment_id": "id", "tracking_number": "tracking_number"},
    ),
    StepDefinition(
        SagaStep.CONFIRM_ORDER, StepKind.PIVOT,
        ServiceCall(ORDER, "POST", "/api/orders/{order_id}/confirm"),
        None,
        results={"order_status": "status"},
    ),
))

DEFINITIONS: dict[int, SagaDefinition] = {V1.version: V1}
CURRENT = V1


def definition(version: int) -> SagaDefinition:
    try:
        return DEFINITIONS[version]
    except KeyError:
        raise LookupError(f"saga definition v{version} is not known to this build") from None
