"""payment_service routes: parse, call the service layer, shape the response."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from payment_service import schemas, service
from payment_service.models import PaymentStatus
from shared.auth import Admin, Caller, Privileged
from shared.contracts import CUSTOMER_ID_PATTERN
from shared.dependencies import Paging, SessionDep
from shared.idempotency import Idempotent
from shared.schemas import ORDER_ID_PATTERN, Page

router = APIRouter(prefix="/api/payments", tags=["payments"])
PaymentIdPath = Annotated[str, Path(pattern=schemas.PAYMENT_ID_PATTERN)]
OrderIdPath = Annotated[str, Path(pattern=ORDER_ID_PATTERN)]


@router.post("", status_code=201, response_model=schemas.PaymentOut)
async def make_payment(body: schemas.PaymentCreate, identity: Privileged, idempotent: Idempotent) -> Response:
    # The charge reaches the card processor: the key is claimed first, so a retry never charges twice.
    return await idempotent.claim_then_run(service.make_payment, body)


@router.get("", response_model=Page[schemas.PaymentOut])
async def list_payments(
    session: SessionDep,
    page: Paging,
    identity: Caller,
    order_id: Annotated[str | None, Query(pattern=ORDER_ID_PATTERN)] = None,
    customer_id: Annotated[str | None, Query(pattern=CUSTOMER_ID_PATTERN)] = None,
    status: PaymentStatus | None = None,
) -> Page[schemas.PaymentOut]:
    payments, total = await service.list_payments(session, identity, order_id, customer_id, status, page.limit,
                                                  page.offset)
    return page.page([schemas.PaymentOut.model_validate(p) for p in payments], total)


@router.get("/{payment_id}", response_model=schemas.PaymentOut)
async def get_payment(payment_id: PaymentIdPath, identity: Caller, session: SessionDep) -> Any:
    return await service.get_payment(session, identity, payment_id)


@router.post("/{payment_id}/refunds", status_code=201, response_model=schemas.RefundReceipt)
async def refund_payment(payment_id: PaymentIdPath, body: schemas.RefundCreate, identity: Admin,
                         idempotent: Idempotent) -> Response:
    """An operator's refund of part or all of a payment (the saga refunds through /orders/{order_id}/refund)."""
    return await idempotent.run(service.refund_payment, identity, payment_id, body.amount_minor, body.reason)


@router.post("/orders/{order_id}/refund", response_model=schemas.OrderRefundOut)
async def refund_order(order_id: OrderIdPath, identity: Privileged, idempotent: Idempotent) -> Response:
    return await idempotent.run(service.refund_order, order_id)
