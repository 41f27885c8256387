"""payment_service routes: parse, call the service layer, shape the response."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import JSONResponse

from payment_service import service
from payment_service.models import Payment, Refund
from payment_service.schemas import (
    CUSTOMER_ID_PATTERN,
    ORDER_ID_PATTERN,
    PAYMENT_ID_PATTERN,
    OrderRefundOut,
    PaymentCreate,
    PaymentOut,
    RefundCreate,
    RefundOut,
    RefundReceipt,
)
from shared.auth import Caller, Privileged
from shared.idempotency import run_idempotent
from shared.schemas import Page

router = APIRouter(prefix="/api/payments", tags=["payments"])
PaymentIdPath = Annotated[str, Path(pattern=PAYMENT_ID_PATTERN)]
OrderIdPath = Annotated[str, Path(pattern=ORDER_ID_PATTERN)]


def _out(payment: Payment | Mapping[str, Any]) -> PaymentOut:
    return PaymentOut.model_validate(payment)


def _receipt(refund: Refund, payment: Payment) -> RefundReceipt:
    return RefundReceipt(**RefundOut.model_validate(refund).model_dump(), payment_status=payment.status,
                         payment_refunded_minor=payment.refunded_minor)


@router.post("", status_code=201, response_model=PaymentOut)
async def make_payment(body: PaymentCreate, request: Request, identity: Privileged) -> JSONResponse:
    failed_attempts: list[service.AttemptValues] = []

    async def work(session: AsyncSession) -> PaymentOut:
        return _out(await service.make_payment(session, body, failed_attempts))

    try:
        # The charge reaches the card processor: the key is claimed first, so a retry never charges twice.
        return await run_idempotent(request, identity, work, status_code=201, claim_first=True)
    finally:
        # Declines and processor errors roll the charge's transaction back; their attempts are kept apart.
        await service.record_attempts(request.app.state.db, failed_attempts)


@router.get("", response_model=Page[PaymentOut])
async def list_payments(
    request: Request,
    identity: Caller,
    order_id: Annotated[str | None, Query(pattern=ORDER_ID_PATTERN)] = None,
    customer_id: Annotated[str | None, Query(pattern=CUSTOMER_ID_PATTERN)] = None,
    status: Literal["CAPTURED", "PARTIALLY_REFUNDED", "REFUNDED"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> Page[PaymentOut]:
    async with request.app.state.db.transaction() as session:
        payments, total = await service.list_payments(session, identity, order_id, customer_id, status, limit,
                                                      offset)
        return Page(items=[_out(p) for p in payments], total=total, limit=limit, offset=offset)


@router.get("/{payment_id}", response_model=PaymentOut)
async def get_payment(payment_id: PaymentIdPath, request: Request, identity: Caller) -> PaymentOut:
    async with request.app.state.db.transaction() as session:
        return _out(await service.get_payment(session, identity, payment_id))


@router.post("/{payment_id}/refunds", status_code=201, response_model=RefundReceipt)
async def refund_payment(payment_id: PaymentIdPath, body: RefundCreate, request: Request, identity: Privileged
                         ) -> JSONResponse:
    async def work(session: AsyncSession) -> RefundReceipt:
        refund, payment = await service.refund_payment(session, identity, payment_id, body.amount_minor, body.reason)
        return _receipt(refund, payment)

    return await run_idempotent(request, identity, work, status_code=201)


@router.post("/orders/{order_id}/refund", response_model=OrderRefundOut)
async def refund_order(order_id: OrderIdPath, request: Request, identity: Privileged) -> JSONResponse:
    async def work(session: AsyncSession) -> OrderRefundOut:
        payment = await service.refund_order(session, order_id)
        if payment is None:
            return OrderRefundOut(order_id=order_id, status="NONE")
        return OrderRefundOut(order_id=order_id, status="REFUNDED", payment_id=payment.id,
                              amount_minor=payment.amount_minor, refunded_minor=payment.refunded_minor)

    return await run_idempotent(request, identity, work)
