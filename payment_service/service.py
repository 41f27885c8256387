"""payment_service domain rules: one payment per order, refunds never exceed it, compensation refunds once."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Row, Table, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from payment_service import processor
from payment_service.models import ChargeAttempt, Payment, PaymentStatus, Refund
from payment_service.schemas import PaymentCreate
from shared.auth import Identity
from shared.db import new_id, utc_now
from shared.errors import Conflict, NotFound, PaymentRequired, ServiceUnavailable
from shared.fence import compensate, enter_step

# The hot paths use the tables directly (Core statements): no unit of work, no instances loaded to change a column.
payments = cast(Table, Payment.__table__)
refunds = cast(Table, Refund.__table__)
charge_attempts = cast(Table, ChargeAttempt.__table__)

# A payment's id, amount_minor and refunded_minor (what the compensation answers with).
PaymentAmounts = Row[Any, Any, Any]
# The columns of a charge_attempts row to insert (its id and created_at are the columns' defaults).
AttemptValues = dict[str, Any]


async def _refuse_if_charged(session: AsyncSession, order_id: str) -> None:
    payment = (await session.execute(
        select(payments.c.id, payments.c.status).where(payments.c.order_id == order_id))).one_or_none()
    if payment is not None:
        raise Conflict(f"Order {order_id} already has a payment ({payment.status}); an order is charged once.",
                       order_id=order_id, payment_id=payment.id, payment_status=payment.status)


async def _attempts_so_far(session: AsyncSession, data: PaymentCreate) -> int:
    if not processor.counts_attempts(data.payment_token):
        return 0  # the outcome does not depend on it
    return int((await session.execute(select(func.count()).select_from(charge_attempts).where(
        charge_attempts.c.order_id == data.order_id,
        charge_attempts.c.payment_token == data.payment_token))).scalar_one())


async def _record_attempt(attempt: AttemptValues, session: AsyncSession) -> None:
    await session.execute(insert(charge_attempts), attempt)


async def make_payment(session: AsyncSession, data: PaymentCreate) -> dict[str, Any]:
    """Charge the card once per order; the new payment's columns.

    The order's fence is entered before the processor is called (shared/fence.py): a charge after the order's
    compensation is refused, and a concurrent charge of it (or a compensation) waits for this one and is then
    refused (or refunds it), never charged too. A refusal rolls the transaction back, fence included;
    its attempt is kept all the same (DomainError.keeping: committed after the rollback), so a decline
    stays on file and tok_flaky counts its failures.
    """
    await enter_step(session, data.order_id)
    await _refuse_if_charged(session, data.order_id)
    previous = await _attempts_so_far(session, data)
    result = processor.charge(data.payment_token, data.amount_minor, data.currency, attempt=previous + 1)
    attempt: AttemptValues = {"order_id": data.order_id, "customer_id": data.customer_id,
                              "amount_minor": data.amount_minor, "currency": data.currency,
                              "payment_token": data.payment_token}
    match result:
        case processor.Declined(code=code, message=message):
            raise PaymentRequired(message, code=code, order_id=data.order_id).keeping(
                functools.partial(_record_attempt, {**attempt, "outcome": "DECLINED", "code": code}))
        case processor.Unavailable(code=code, message=message):
            raise ServiceUnavailable(message, code=code, order_id=data.order_id, retry_after=1).keeping(
                functools.partial(_record_attempt, {**attempt, "outcome": "UNAVAILABLE", "code": code}))
        case processor.Captured(reference=reference, brand=brand):
            pass

    now = utc_now()
    payment = {"id": new_id(), "order_id": data.order_id, "customer_id": data.customer_id,
               "amount_minor": data.amount_minor, "currency": data.currency, "status": PaymentStatus.CAPTURED,
               "refunded_minor": 0, "processor_reference": reference, "card_brand": brand,
               "created_at": now, "updated_at": now}
    # Statements executed with parameters: compiled once, no bind parameters built per call.
    await session.execute(insert(payments), payment)
    await session.execute(insert(charge_attempts), {**attempt, "outcome": "CAPTURED"})
    return {**payment, "refunds": []}


async def get_payment(session: AsyncSession, identity: Identity, payment_id: str, for_update: bool = False
                      ) -> Payment:
    query = select(Payment).where(Payment.id == payment_id).execution_options(populate_existing=True)
    if for_update:
        query = query.with_for_update()
    payment = (await session.execute(query)).scalar_one_or_none()
    # Another customer's payment is reported as missing, so ids cannot be probed.
    if payment is None or not identity.may_access(payment.customer_id):
        raise NotFound(f"Payment {payment_id} does not exist.")
    return payment


async def list_payments(
    session: AsyncSession, identity: Identity, order_id: str | None, customer_id: str | None, status: str | None,
    limit: int, offset: int,
) -> tuple[list[Payment], int]:
    query = select(Payment)
    if not identity.is_privileged:
        customer_id = identity.subject
    if customer_id:
        query = query.where(Payment.customer_id == customer_id)
    if order_id:
        query = query.where(Payment.order_id == order_id)
    if status:
        query = query.where(Payment.status == status)
    total = (await session.execute(select(func.count()).select_from(query.subquery()))).scalar_one()
    rows = await session.execute(query.order_by(Payment.created_at.desc(), Payment.id).limit(limit).offset(offset))
    return list(rows.scalars()), int(total)


def _refund(payment: Payment, amount_minor: int, reason: str | None) -> Refund:
    refund = Refund(amount_minor=amount_minor, reason=reason)
    payment.refunds.append(refund)
    payment.refunded_minor += amount_minor
    full = payment.refunded_minor == payment.amount_minor
    payment.status = PaymentStatus.REFUNDED if full else PaymentStatus.PARTIALLY_REFUNDED
    return refund


async def refund_payment(session: AsyncSession, identity: Identity, payment_id: str, amount_minor: int,
                         reason: str | None) -> Refund:
    """A partial or full refund; the Refund answers with its payment's state after it (payment_status...)."""
    payment = await get_payment(session, identity, payment_id, for_update=True)
    if payment.status == PaymentStatus.REFUNDED:
        raise Conflict(f"Payment {payment_id} is already fully refunded.", payment_status=payment.status,
                       refundable_minor=0)
    refundable = payment.amount_minor - payment.refunded_minor
    if amount_minor > refundable:
        raise Conflict(f"Cannot refund {amount_minor}: only {refundable} of payment {payment_id} is refundable.",
                       payment_status=payment.status, requested=amount_minor, refundable_minor=refundable)
    refund = _refund(payment, amount_minor, reason)
    await session.flush()
    return refund


async def _order_payment_locked(session: AsyncSession, order_id: str) -> PaymentAmounts | None:
    return (await session.execute(
        select(payments.c.id, payments.c.amount_minor, payments.c.refunded_minor)
        .where(payments.c.order_id == order_id).with_for_update())).one_or_none()


@dataclass(frozen=True)
class OrderRefund:
    """What the compensation did: REFUNDED with the payment's amounts after it, or NONE when never charged."""

    order_id: str
    status: str
    payment_id: str | None = None
    amount_minor: int = 0
    refunded_minor: int = 0


def _refunded(order_id: str, payment: PaymentAmounts | None) -> OrderRefund:
    if payment is None:
        return OrderRefund(order_id, "NONE")
    return OrderRefund(order_id, "REFUNDED", payment.id, payment.amount_minor, payment.refunded_minor)


async def refund_order(session: AsyncSession, order_id: str) -> OrderRefund:
    """The saga's compensation: refund whatever is left of the order's payment, at most once; NONE: never charged.

    The order's fence is closed first (shared/fence.py), so a charge that arrives late (the saga timed out
    waiting for it) is refused rather than taking money for a cancelled order; a charge in flight is waited for.
    """
    await compensate(session, order_id)
    payment = await _order_payment_locked(session, order_id)
    if payment is None:
        return _refunded(order_id, None)
    refundable = payment.amount_minor - payment.refunded_minor
    if refundable <= 0:
        return _refunded(order_id, payment)
    # The row is locked: refunding the rest makes the payment fully refunded.
    payment = (await session.execute(
        update(payments).where(payments.c.id == payment.id)
        .values(refunded_minor=payments.c.amount_minor, status=PaymentStatus.REFUNDED)
        .returning(payments.c.id, payments.c.amount_minor, payments.c.refunded_minor))).one()
    await session.execute(insert(refunds).values(payment_id=payment.id, amount_minor=refundable,
                                                 reason="order compensated"))
    return _refunded(order_id, payment)
