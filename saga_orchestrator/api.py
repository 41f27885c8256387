"""saga_orchestrator routes: parse, call the service layer, shape the response."""

from __future__ import annotations

import re
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import Response

from saga_orchestrator import service
from saga_orchestrator.domain import SagaStatus, saga_uuid
from saga_orchestrator.schemas import (
    CustomerOrderCreate,
    EventFeed,
    SagaAccepted,
    SagaStats,
    SagaSummary,
    SagaView,
    Timestamp,
)
from shared.auth import Admin, Caller
from shared.dependencies import Paging
from shared.errors import DomainError, InvalidRequest, NotFound
from shared.idempotency import HEADER as IDEMPOTENCY_HEADER
from shared.idempotency import REPLAYED_HEADER
from shared.schemas import Page, model_response

router = APIRouter(prefix=service.BASE_PATH, tags=["customer-orders"])
MAX_WAIT_SECS = 30
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)", re.IGNORECASE)
CreatedAfter = Annotated[Timestamp | None, Query(
    description="Only sagas created at or after this instant (ISO 8601 with a timezone, e.g. "
                "`2026-05-01T12:00:00Z`; percent-encode a `+` offset as `%2B`).")]
CreatedBefore = Annotated[Timestamp | None, Query(
    description="Only sagas created before this instant (excluded; ISO 8601 with a timezone).")]


class MissingIdempotencyKey(DomainError):
    status, title, type_slug = 400, "Idempotency-Key required", "idempotency-key-required"


def _orchestrator(request: Request) -> service.Orchestrator:
    orchestrator: service.Orchestrator = request.app.state.orchestrator
    return orchestrator


def _saga_id(value: str) -> UUID:
    saga_id = saga_uuid(value)
    if saga_id is None:
        raise NotFound(f"Saga {value} does not exist.")
    return saga_id


def _wait_secs(prefer: str | None) -> int:
    """Seconds to wait for the outcome (RFC 7240 `wait`), capped; any number of digits (int() refuses > 4300)."""
    match = _PREFER_WAIT.search(prefer or "")
    if not match:
        return 0
    digits = match.group(1).lstrip("0")
    return MAX_WAIT_SECS if len(digits) > 3 else min(int(digits or "0"), MAX_WAIT_SECS)


@router.post("", status_code=202, response_model=SagaAccepted,
             responses={200: {"model": SagaView, "description": "Finished within `Prefer: wait=N`."}})
async def place_customer_order(
    body: CustomerOrderCreate,
    request: Request,
    identity: Caller,
    idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)] = None,
    prefer: Annotated[str | None, Header()] = None,
) -> Response:
    key = (idempotency_key or "").strip().strip('"')
    if not key:
        raise MissingIdempotencyKey(f"The {IDEMPOTENCY_HEADER} header is required: a retried request must "
                                    "never place a second order.")
    if len(key) > 200:
        raise InvalidRequest(f"The {IDEMPOTENCY_HEADER} header must be at most 200 characters.")
    wait = _wait_secs(prefer)  # every header is parsed before the saga is placed
    orch = _orchestrator(request)
    trace = service.new_trace(getattr(request.state, "request_id", ""), request.headers.get("traceparent", ""))
    row, created = await service.place_customer_order(orch, identity, key, body, trace)
    headers = {"Location": service.status_url(row.saga_id)}
    if not created:
        headers[REPLAYED_HEADER] = "true"
    if wait:
        headers["Preference-Applied"] = f"wait={wait}"
        saga_id = UUID(row.saga_id)
        if await orch.runner.wait(saga_id, wait):
            view = await service.get_saga(orch, identity, saga_id, just_finished=True)
            return model_response(view, 200, headers)
        row = await service.get_row(orch, identity, saga_id)
    accepted = SagaAccepted(saga_id=row.saga_id, status=row.status, status_url=service.status_url(row.saga_id))
    return model_response(accepted, 202, headers)


@router.get("", response_model=Page[SagaSummary])
async def list_customer_orders(
    request: Request,
    identity: Caller,
    page: Paging,
    status: SagaStatus | None = None,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
) -> Page[SagaSummary]:
    items, total = await service.list_sagas(_orchestrator(request), identity, status and str(status), page.limit,
                                            page.offset, created_after, created_before)
    return page.page(items, total)


# Declared before "/{saga_id}", which would otherwise take "stats" for a saga id (and answer 404).
@router.get("/stats", response_model=SagaStats)
async def customer_order_stats(
    request: Request,
    identity: Caller,
    created_after: CreatedAfter = None,
    created_before: CreatedBefore = None,
) -> SagaStats:
    """How many sagas are in each status (a customer: of their own), optionally within a created-time window."""
    return await service.saga_stats(_orchestrator(request), identity, created_after, created_before)


@router.get("/events", response_model=EventFeed)
async def saga_event_feed(
    request: Request,
    identity: Admin,
    after: Annotated[int, Query(ge=0, le=2**63 - 1,
                                description="Last event id already seen (0 = from the start).")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventFeed:
    items = await service.event_feed(_orchestrator(request), after, limit)
    return EventFeed(items=items, after=after, next_after=items[-1].id if items else after, limit=limit)


@router.get("/{saga_id}", response_model=SagaView)
async def get_customer_order(saga_id: str, request: Request, identity: Caller) -> SagaView:
    return await service.get_saga(_orchestrator(request), identity, _saga_id(saga_id))


@router.post("/{saga_id}/retry", status_code=202, response_model=SagaAccepted)
async def retry_customer_order(saga_id: str, request: Request, identity: Admin) -> Response:
    row = await service.retry_saga(_orchestrator(request), identity, _saga_id(saga_id))
    accepted = SagaAccepted(saga_id=row.saga_id, status=row.status, status_url=service.status_url(row.saga_id))
    return model_response(accepted, 202, {"Location": service.status_url(row.saga_id)})
