"""shipment_service routes: parse, call the service layer, shape the response."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from shared.auth import Admin, Caller, Privileged
from shared.dependencies import Paging, SessionDep
from shared.idempotency import Idempotent
from shared.schemas import Page
from shipment_service import schemas, service
from shipment_service.models import ShipmentStatus

router = APIRouter(prefix="/api/shipments", tags=["shipments"])
IdPath = Annotated[str, Path(max_length=64)]


@router.post("", status_code=201, response_model=schemas.ShipmentOut)
async def create_shipment(body: schemas.ShipmentCreate, identity: Privileged, idempotent: Idempotent) -> Response:
    return await idempotent.run(service.create_shipment, body)


@router.get("", response_model=Page[schemas.ShipmentOut])
async def list_shipments(
    session: SessionDep,
    page: Paging,
    identity: Caller,
    order_id: Annotated[str | None, Query(max_length=64)] = None,
    customer_id: Annotated[str | None, Query(max_length=64)] = None,
    status: ShipmentStatus | None = None,
) -> Page[schemas.ShipmentOut]:
    shipments, total = await service.list_shipments(session, identity, order_id, customer_id, status, page.limit,
                                                    page.offset)
    return page.page([schemas.ShipmentOut.model_validate(s) for s in shipments], total)


@router.get("/tracking/{tracking_number}", response_model=schemas.ShipmentOut)
async def track_shipment(tracking_number: IdPath, identity: Caller, session: SessionDep) -> Any:
    return await service.get_by_tracking_number(session, identity, tracking_number.upper())


@router.post("/orders/{order_id}/cancel", response_model=schemas.OrderShipmentCancelOut)
async def cancel_order_shipment(order_id: IdPath, identity: Privileged, idempotent: Idempotent,
                                body: schemas.ShipmentCancel | None = None) -> Response:
    return await idempotent.run(service.cancel_order_shipment, order_id, body.reason if body else "order compensated")


@router.get("/{shipment_id}", response_model=schemas.ShipmentOut)
async def get_shipment(shipment_id: IdPath, identity: Caller, session: SessionDep) -> Any:
    return await service.get_shipment(session, identity, shipment_id)


@router.post("/{shipment_id}/cancel", response_model=schemas.ShipmentOut)
async def cancel_shipment(shipment_id: IdPath, identity: Caller, idempotent: Idempotent,
                          body: schemas.ShipmentCancel | None = None) -> Response:
    return await idempotent.run(service.cancel_shipment, identity, shipment_id, body.reason if body else "cancelled")


@router.post("/{shipment_id}/status", response_model=schemas.ShipmentOut)
async def change_status(shipment_id: IdPath, body: schemas.StatusChange, identity: Admin,
                        idempotent: Idempotent) -> Response:
    """An operator records the parcel's progress (no step of the saga moves a shipment)."""
    return await idempotent.run(service.change_status, identity, shipment_id, body.status, body.note)
