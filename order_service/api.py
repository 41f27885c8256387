"""order_service routes: parse, call the service layer, shape the response."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.responses import Response

from order_service import schemas, service
from order_service.models import OrderStatus
from shared.auth import Admin, Caller, Privileged
from shared.dependencies import Paging, SessionDep
from shared.idempotency import Idempotent
from shared.schemas import Page

router = APIRouter(prefix="/api/orders", tags=["orders"])


@router.post("", status_code=201, response_model=schemas.OrderOut)
async def create_order(body: schemas.OrderCreate, identity: Caller, idempotent: Idempotent) -> Response:
    return await idempotent.run(service.create_order, identity, body)


@router.get("", response_model=Page[schemas.OrderOut])
async def list_orders(
    session: SessionDep,
    page: Paging,
    identity: Caller,
    customer_id: Annotated[str | None, Query(max_length=64)] = None,
    status: OrderStatus | None = None,
) -> Page[schemas.OrderOut]:
    orders, total = await service.list_orders(session, identity, customer_id, status, page.limit, page.offset)
    return page.page([schemas.OrderOut.model_validate(order) for order in orders], total)


@router.get("/{order_id}", response_model=schemas.OrderOut)
async def get_order(order_id: str, identity: Caller, session: SessionDep) -> Any:
    return await service.get_order(session, identity, order_id)


@router.get("/{order_id}/timeline", response_model=schemas.Timeline)
async def get_timeline(order_id: str, identity: Caller, session: SessionDep) -> schemas.Timeline:
    """Every event of every service about the order, in the order they happened (a projection fed by the bus:
    an event appears here moments after its service committed it)."""
    rows = await service.order_timeline(session, identity, order_id)
    return schemas.Timeline(order_id=order_id, events=[
        schemas.TimelineEvent(id=row["event_id"], type=row["type"], source=row["source"], subject=row["subject"],
                              time=row["time"], data=row["data"]) for row in rows])


@router.post("/{order_id}/lines", response_model=schemas.OrderOut)
async def add_lines(order_id: str, body: schemas.LinesAdd, identity: Privileged, idempotent: Idempotent) -> Response:
    return await idempotent.run(service.add_lines, identity, order_id, body.lines)


@router.delete("/{order_id}/lines", response_model=schemas.OrderOut)
async def remove_all_lines(order_id: str, identity: Privileged, idempotent: Idempotent) -> Response:
    return await idempotent.run(service.remove_lines, identity, order_id)


@router.delete("/{order_id}/lines/{line_id}", response_model=schemas.OrderOut)
async def remove_line(order_id: str, line_id: str, identity: Admin, idempotent: Idempotent) -> Response:
    """An operator removes one line (the saga's compensation removes them all: DELETE /{order_id}/lines)."""
    return await idempotent.run(service.remove_lines, identity, order_id, line_id)


@router.post("/{order_id}/cancel", response_model=schemas.OrderOut)
async def cancel_order(order_id: str, identity: Caller, idempotent: Idempotent, body: schemas.OrderCancel | None = None
                       ) -> Response:
    return await idempotent.run(service.cancel_order, identity, order_id, body.reason if body else "cancelled")


@router.post("/{order_id}/confirm", response_model=schemas.OrderOut)
async def confirm_order(order_id: str, identity: Privileged, idempotent: Idempotent) -> Response:
    return await idempotent.run(service.confirm_order, identity, order_id)
