"""placeCustomerOrder and the saga queries: validation, pricing, idempotency, views; knows no HTTP routing."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from uuid import UUID

import structlog

from saga_orchestrator.catalogue import Catalogue
from saga_orchestrator.domain import Saga, SagaStatus
from saga_orchestrator.event_store import ConcurrentSagaUpdate, FeedItem, SagaStore
from saga_orchestrator.index import SagaIndexStore, TooManyUnfinished
from saga_orchestrator.metrics import SAGAS_STARTED
from saga_orchestrator.models import IndexedSaga
from saga_orchestrator.runner import SagaRunner
from saga_orchestrator.schemas import (
    CompensationView,
    CustomerOrderCreate,
    HistoryEntry,
    SagaStats,
    SagaStatusCounts,
    SagaSummary,
    SagaView,
    StepView,
)
from saga_orchestrator.settings import Settings
from saga_orchestrator.step_client import StepClient
from saga_orchestrator.steps import CURRENT, definition
from shared.auth import Identity
from shared.errors import Conflict, InvalidRequest, NotFound, RequestInProgress, ServiceUnavailable, TooManyRequests

log = structlog.get_logger(__name__)

BASE_PATH = "/api/customer-orders"
MAX_LINE_QUANTITY = 10_000
REDACTED = "***"


@dataclass
class Orchestrator:
    """Everything the saga's operations need, built once per process in the app's lifespan."""

    settings: Settings
    store: SagaStore
    index: SagaIndexStore
    client: StepClient
    runner: SagaRunner
    catalogue: Catalogue = field(init=False)

    def __post_init__(self) -> None:
        self.catalogue = Catalogue(self.settings.catalogue_cache_secs)


@dataclass(frozen=True)
class PricedOrder:
    lines: list[dict[str, Any]]
    currency: str
    total_minor: int
    total_weight_grams: int


def status_url(saga_id: UUID | str) -> str:
    return f"{BASE_PATH}/{saga_id}"


def fingerprint(order: CustomerOrderCreate) -> str:
    canonical = json.dumps(order.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _merge_lines(order: CustomerOrderCreate) -> dict[str, int]:
    """One line per SKU (quantities added up), in the order the SKUs first appear."""
    merged: dict[str, int] = {}
    for line in order.lines:
        merged[line.sku] = merged.get(line.sku, 0) + line.quantity
    too_many = [sku for sku, quantity in merged.items() if quantity > MAX_LINE_QUANTITY]
    if too_many:
        raise InvalidRequest(f"At most {MAX_LINE_QUANTITY} units per SKU may be ordered.", errors=[
            {"loc": ["body", "lines"], "msg": f"quantity of {sku} exceeds {MAX_LINE_QUANTITY}", "type": "too_many"}
            for sku in too_many])
    return merged


async def price_order(orch: Orchestrator, order: CustomerOrderCreate, trace: dict[str, str]) -> PricedOrder:
    """Look the SKUs up in INVENTORY-SERVICE's catalogue: unknown ones are refused before any saga starts."""
    quantities = _merge_lines(order)
    products = await orch.catalogue.products(orch.client, quantities, trace, min(orch.settings.step_deadline_secs, 5.0))
    unknown = [(i, line.sku) for i, line in enumerate(order.lines) if line.sku not in products]
    if unknown:
        raise InvalidRequest("Some SKUs are not in the catalogue.", errors=[
            {"loc": ["body", "lines", i, "sku"], "msg": f"unknown sku {sku!r}", "type": "unknown_sku"}
            for i, sku in unknown])
    currencies = {products[sku]["currency"] for sku in quantities}
    if len(currencies) != 1:
        raise InvalidRequest(f"All lines of one order must share a currency, not {sorted(currencies)}.")
    lines: list[dict[str, Any]] = []
    total_minor = total_weight = 0
    for sku, quantity in quantities.items():
        unit_price, weight = int(products[sku]["unit_price_minor"]), int(products[sku]["weight_grams"])
        lines.append({"sku": sku, "quantity": quantity, "unit_price_minor": unit_price, "weight_grams": weight})
        total_minor += quantity * unit_price
        total_weight += quantity * weight
    return PricedOrder(lines=lines, currency=currencies.pop(), total_minor=total_minor,
                       total_weight_grams=total_weight)


async def _already_placed(orch: Orchestrator, identity: Identity, key: str, fp: str) -> IndexedSaga | None:
    """The saga this customer's key already started (None: none yet); refused if it was another request."""
    row = await orch.index.find_by_key(identity.subject, key)
    if row is not None and row.fingerprint != fp:
        raise InvalidRequest(f"The Idempotency-Key {key!r} was already used with a different request.")
    return row


async def place_customer_order(orch: Orchestrator, identity: Identity, idempotency_key: str,
                               order: CustomerOrderCreate, trace: dict[str, str]) -> tuple[IndexedSaga, bool]:
    """Start the saga for this request, or return the one this key already started; (row, created)."""
    fp = fingerprint(order)
    if identity.is_privileged:
        return await _place(orch, identity, idempotency_key, order, trace, fp)
    units = sum(line.quantity for line in order.lines)
    if units > orch.settings.max_units_per_order:
        raise InvalidRequest(f"An order may hold at most {orch.settings.max_units_per_order} units, not {units}.",
                             max_units=orch.settings.max_units_per_order)
    return await _place(orch, identity, idempotency_key, order, trace, fp,
                        max_unfinished=orch.settings.max_unfinished_sagas_per_customer)


async def _place(orch: Orchestrator, identity: Identity, idempotency_key: str, order: CustomerOrderCreate,
                 trace: dict[str, str], fp: str, max_unfinished: int | None = None) -> tuple[IndexedSaga, bool]:
    # A new key is the usual case: price first and let the index row's unique key catch a repeated one
    # (one statement per placement, not two). A repeat whose pricing fails now (the catalogue changed, or
    # is away) still gets its saga back rather than the error.
    try:
        priced = await price_order(orch, order, trace)
    except (InvalidRequest, ServiceUnavailable):
        if (existing := await _already_placed(orch, identity, idempotency_key, fp)) is not None:
            return existing, False
        raise
    start_request: dict[str, Any] = {
        "definition_version": CURRENT.version,
        "customer_id": identity.subject,
        "idempotency_key": idempotency_key,
        "fingerprint": fp,
        "lines": priced.lines,
        "currency": priced.currency,
        "total_minor": priced.total_minor,
        "total_weight_grams": priced.total_weight_grams,
        "shipping_address": order.shipping_address.model_dump(mode="json"),
        "payment_token": order.payment_token,
        "trace": trace,
    }
    saga = Saga(**start_request)
    saga.start_step(CURRENT.first().step)
    first = orch.runner.first_call(saga)  # its attempt is recorded, so saved with the start
    # The row first: it claims the key (a concurrent duplicate loses on the unique constraint) and
    # holds the request, so a crash before the first save still leaves recovery enough to start it.
    # Leased to this replica from the insert on: its own recovery must not take it for a saga whose driver quit.
    orch.runner.placing.add(saga.id)
    try:
        try:
            row = await orch.index.insert(saga, start_request, max_unfinished)
        except TooManyUnfinished:
            if (existing := await _already_placed(orch, identity, idempotency_key, fp)) is not None:
                return existing, False  # the request that made one of them, again
            raise TooManyRequests(f"At most {max_unfinished} orders may be in progress at once; wait for one to "
                                  "finish.", retry_after=1, max_unfinished=max_unfinished) from None
        if row is None:  # the key is taken
            if (raced := await _already_placed(orch, identity, idempotency_key, fp)) is None:
                raise RequestInProgress("The request with this Idempotency-Key is being processed; try again.")
            return raced, False
        started: Saga | None = saga
        try:
            await orch.store.save(saga)
        except ConcurrentSagaUpdate:
            started = first = None  # another replica started it from the index row already (its lease ran out)
        except Exception as exc:
            log.exception("could not save a new saga; recovery will start it", saga_id=str(saga.id))
            raise ServiceUnavailable("The saga was accepted but not yet started; retry with the same key.") from exc
        SAGAS_STARTED.inc()
        log.info("saga started", saga_id=str(saga.id), customer_id=identity.subject, total_minor=priced.total_minor)
        orch.runner.launch(saga.id, started=started, first=first)
        return row, True
    finally:
        orch.runner.placing.discard(saga.id)


def summary(row: IndexedSaga) -> SagaSummary:
    return SagaSummary(
        saga_id=row.saga_id, status=row.status, customer_id=row.customer_id, order_id=row.order_id,
        total_minor=row.total_minor, currency=row.currency, created_at=row.created_at, updated_at=row.updated_at,
        status_url=status_url(row.saga_id))


def _check_window(created_after: datetime | None, created_before: datetime | None) -> None:
    if created_after is not None and created_before is not None and created_after > created_before:
        raise InvalidRequest("created_after must not be later than created_before.", errors=[
            {"loc": ["query", "created_before"], "msg": "earlier than created_after", "type": "window_reversed"}])


async def list_sagas(orch: Orchestrator, identity: Identity, status: str | None, limit: int, offset: int,
                     created_after: datetime | None = None,
                     created_before: datetime | None = None) -> tuple[list[SagaSummary], int]:
    """A page of the sagas the caller may see (a customer: their own), newest first, and how many match."""
    _check_window(created_after, created_before)
    customer_id = identity.customer_scope()
    rows, total = await orch.index.page(customer_id, status, limit, offset, created_after, created_before)
    return [summary(r) for r in rows], total


async def saga_stats(orch: Orchestrator, identity: Identity, created_after: datetime | None = None,
                     created_before: datetime | None = None) -> SagaStats:
    """How many of the sagas the caller may see are in each status."""
    _check_window(created_after, created_before)
    customer_id = identity.customer_scope()
    found = await orch.index.count_by_status(customer_id, created_after, created_before)
    counts = SagaStatusCounts.model_validate({str(s): found.get(str(s), 0) for s in SagaStatus})
    return SagaStats(counts=counts, total=sum(found.values()), created_after=created_after,
                     created_before=created_before)


def _redact(data: dict[str, Any]) -> dict[str, Any]:
    return {k: (REDACTED if k == "payment_token" else v) for k, v in data.items()}


def _event_type(event: Any) -> str:
    return type(event).__name__


def _event_data(event: Any) -> dict[str, Any]:
    skip = {"originator_id", "originator_version", "timestamp", "originator_topic"}
    return _redact({k: v for k, v in vars(event).items() if k not in skip})


def _timings(events: Iterable[Any]) -> dict[tuple[str, str], datetime]:
    """(step, started|finished|compensated) → when, read from the event timestamps."""
    marks = {"StepStarted": "started", "StepSucceeded": "finished", "StepFailed": "finished",
             "CompensationSucceeded": "compensated", "CompensationFailed": "compensated"}
    found: dict[tuple[str, str], datetime] = {}
    for event in events:
        mark = marks.get(_event_type(event))
        if mark is not None:
            found[(event.step, mark)] = event.timestamp
    return found


def saga_view(saga: Saga, events: list[Any]) -> SagaView:
    timings = _timings(events)
    steps = []
    for step_definition in definition(saga.definition_version).steps:
        name = str(step_definition.step)
        record = saga.steps.get(name)
        if record is None:
            steps.append(StepView(step=name, status="PENDING", attempts=0, started_at=None, finished_at=None,
                                  last_error=None, outcome_known=True, result={}, compensation=None))
            continue
        compensation = None
        if record.compensation is not None:
            compensation = CompensationView(status=str(record.compensation), attempts=record.compensation_attempts,
                                            last_error=record.compensation_error,
                                            finished_at=timings.get((name, "compensated")))
        steps.append(StepView(
            step=name, status=str(record.status), attempts=record.attempts, started_at=timings.get((name, "started")),
            finished_at=timings.get((name, "finished")), last_error=record.last_error,
            outcome_known=record.outcome_known, result=record.result, compensation=compensation))
    results = saga.results()
    return SagaView(
        saga_id=str(saga.id), status=str(saga.status), customer_id=saga.customer_id,
        definition_version=saga.definition_version, order_id=saga.order_id, currency=saga.currency,
        total_minor=saga.total_minor, lines=saga.lines, shipping_address=saga.shipping_address,
        failure_reason=saga.failure_reason, tracking_number=results.get("tracking_number"),
        carrier_code=results.get("carrier_code"), payment_id=results.get("payment_id"),
        created_at=saga.created_on, updated_at=saga.modified_on, steps=steps,
        history=[HistoryEntry(version=e.originator_version, type=_event_type(e), timestamp=e.timestamp,
                              data=_event_data(e)) for e in events],
        status_url=status_url(saga.id))


async def get_saga(orch: Orchestrator, identity: Identity, saga_id: UUID, just_finished: bool = False) -> SagaView:
    """`just_finished`: the saga has just ended (a `Prefer: wait` answer): if this replica drove it from its
    start, its view is rendered from memory instead of a read of the store."""
    recent = orch.store.recent_history(saga_id) if just_finished else None
    saga, events = recent if recent is not None else await orch.store.history(saga_id)
    # Another customer's saga is reported as missing, so ids cannot be probed.
    if saga is None or not identity.may_access(saga.customer_id):
        raise NotFound(f"Saga {saga_id} does not exist.")
    return saga_view(saga, events)


async def get_row(orch: Orchestrator, identity: Identity, saga_id: UUID) -> IndexedSaga:
    row = await orch.index.get(saga_id)
    if row is None or not identity.may_access(row.customer_id):
        raise NotFound(f"Saga {saga_id} does not exist.")
    return row


async def retry_saga(orch: Orchestrator, identity: Identity, saga_id: UUID) -> IndexedSaga:
    """An operator's retry of a saga whose compensation gave up."""
    saga = await orch.store.get(saga_id)
    if saga is None:
        raise NotFound(f"Saga {saga_id} does not exist.")
    if saga.status != SagaStatus.COMPENSATION_FAILED:
        raise Conflict(f"Only a COMPENSATION_FAILED saga can be retried; saga {saga_id} is {saga.status}.",
                       saga_status=str(saga.status))
    if not await orch.index.claim_for_retry(saga_id):
        raise Conflict(f"Saga {saga_id} is already being retried.")
    saga.retry_compensation(requested_by=identity.subject)
    try:
        await orch.store.save(saga)
    except ConcurrentSagaUpdate as exc:
        raise Conflict(f"Saga {saga_id} changed meanwhile; look again.") from exc
    log.info("saga compensation retried", saga_id=str(saga_id), by=identity.subject)
    orch.runner.launch(saga_id)
    row = await orch.index.get(saga_id)
    assert row is not None
    return row


async def event_feed(orch: Orchestrator, after: int, limit: int) -> list[FeedItem]:
    return [replace(item, state=_redact(item.state)) for item in await orch.store.feed(after, limit)]


def new_trace(request_id: str, traceparent: str) -> dict[str, str]:
    """The trace a saga's calls carry, resumed ones too: the original request's id and trace."""
    if traceparent.count("-") != 3:
        traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    return {"request_id": request_id, "traceparent": traceparent}
