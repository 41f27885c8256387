"""payment_service domain rules: one payment per order, refunds never exceed it, compensation refunds once."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update

from payment_service import processor
from payment_service.models import (
    CapturedPayment,
    ChargeAttempt,
    ChargeOutcome,
    IssuedRefund,
    OrderRefund,
    OrderRefundStatus,
    Payment,
    PaymentStatus,
    Refund,
    RefundEntry,
)
from payment_service.schemas import PaymentCreate
from shared import events
from shared.auth import Identity
from shared.bus import emit
from shared.db import Row, Tx, new_id, table_of, utc_now
from shared.errors import Conflict, PaymentRequired, ServiceUnavailable
from shared.fence import compensate, enter_step
from shared.paging import children_of, matching, visible_page, visible_row

payments = table_of(Payment)
refunds = table_of(Refund)
charge_attempts = table_of(ChargeAttempt)

# The columns of a charge_attempts row to insert (its id and created_at are the columns' defaults).
AttemptValues = dict[str, Any]
_REFUND_COLUMNS = (refunds.c.id.label("refund_id"), refunds.c.amount_minor.label("refund_amount_minor"),
                   refunds.c.reason.label("refund_reason"), refunds.c.created_at.label("refund_created_at"))


def _refund(row: Row) -> RefundEntry:
    return RefundEntry(id=row["refund_id"], payment_id=row["id"], amount_minor=row["refund_amount_minor"],
                       reason=row["refund_reason"], created_at=row["refund_created_at"])


def _payment(row: Row, refund_rows: Sequence[Row] = ()) -> CapturedPayment:
    return CapturedPayment(
        id=row["id"], order_id=row["order_id"], customer_id=row["customer_id"], amount_minor=row["amount_minor"],
        currency=row["currency"], status=PaymentStatus(row["status"]), refunded_minor=row["refunded_minor"],
        processor_reference=row["processor_reference"], card_brand=row["card_brand"], created_at=row["created_at"],
        updated_at=row["updated_at"],
        refunds=tuple(_refund(refund) for refund in refund_rows if refund["refund_id"] is not None))


# Built once and executed with parameters: compiled once, prepared once per connection.
_ORDER_PAYMENT = select(payments.c.id, payments.c.status).where(payments.c.order_id == bindparam("w_order_id"))
_ATTEMPTS = select(func.count()).select_from(charge_attempts).where(
    charge_attempts.c.order_id == bindparam("w_order_id"), charge_attempts.c.payment_token == bindparam("w_token"))
_INSERT_PAYMENT = insert(payments)
_INSERT_ATTEMPT = insert(charge_attempts)
# A payment and its refunds in one statement: one row per refund, or one row without a refund.
_PAYMENT = (select(payments, *_REFUND_COLUMNS)
            .select_from(payments.outerjoin(refunds, refunds.c.payment_id == payments.c.id))
            .where(payments.c.id == bindparam("w_id")).order_by(refunds.c.created_at))
_LOCK_PAYMENT = select(payments).where(payments.c.id == bindparam("w_id")).with_for_update()
_SET_REFUNDED = (update(payments).where(payments.c.id == bindparam("w_id"))
                 .values(refunded_minor=bindparam("w_refunded"), status=bindparam("w_status"))
                 .returning(payments.c.status, payments.c.refunded_minor))
_INSERT_REFUND = insert(refunds).returning(*refunds.c)
_ORDER_PAYMENT_LOCKED = (select(payments.c.id, payments.c.order_id, payments.c.amount_minor, payments.c.refunded_minor,
                                payments.c.currency)
                         .where(payments.c.order_id == bindparam("w_order_id")).with_for_update())
# The row is locked: refunding the rest makes the payment fully refunded.
_REFUND_REST = (update(payments).where(payments.c.id == bindparam("w_id"))
                .values(refunded_minor=payments.c.amount_minor, status=PaymentStatus.REFUNDED))


async def _refuse_if_charged(tx: Tx, order_id: str) -> None:
    payment = await tx.fetchrow(_ORDER_PAYMENT, {"w_order_id": order_id})
    if payment is not None:
        raise Conflict(f"Order {order_id} already has a payment ({payment['status']}); an order is charged once.",
                       order_id=order_id, payment_id=payment["id"], payment_status=payment["status"])


async def _attempts_so_far(tx: Tx, data: PaymentCreate) -> int:
    if not processor.counts_attempts(data.payment_token):
        return 0  # the outcome does not depend on it
    return int(await tx.fetchval(_ATTEMPTS, {"w_order_id": data.order_id, "w_token": data.payment_token}))


async def _record_attempt(attempt: AttemptValues, tx: Tx) -> None:
    await tx.execute(_INSERT_ATTEMPT, attempt)


async def _record_decline(attempt: AttemptValues, tx: Tx) -> None:
    """The declined attempt on file and its event, in the transaction that keeps them (after the refusal's
    rollback): a decline answered 402 is a decline on the bus, and a replay of its key neither."""
    attempt = {**attempt, "id": new_id()}
    await tx.execute(_INSERT_ATTEMPT, attempt)
    order_id = attempt["order_id"]
    await emit(tx, events.PaymentDeclined(order_id=order_id, attempt_id=attempt["id"],
                                          amount_minor=attempt["amount_minor"], currency=attempt["currency"],
                                          code=attempt["code"]), subject=order_id, order_id=order_id)


async def make_payment(tx: Tx, data: PaymentCreate) -> CapturedPayment:
    """Charge the card once per order.

    The order's fence is entered before the processor is called (shared/fence.py): a charge after the order's
    compensation is refused, and a concurrent charge of it (or a compensation) waits for this one and is then
    refused (or refunds it), never charged too. A refusal rolls the transaction back, fence included;
    its attempt is kept all the same (DomainError.keeping: committed after the rollback), so a decline
    stays on file and tok_flaky counts its failures.
    """
    await enter_step(tx, data.order_id)
    await _refuse_if_charged(tx, data.order_id)
    previous = await _attempts_so_far(tx, data)
    result = processor.charge(data.payment_token, data.amount_minor, data.currency, attempt=previous + 1)
    attempt: AttemptValues = {"order_id": data.order_id, "customer_id": data.customer_id,
                              "amount_minor": data.amount_minor, "currency": data.currency,
                              "payment_token": data.payment_token}
    match result:
        case processor.Declined(code=code, message=message):
            raise PaymentRequired(message, code=code, order_id=data.order_id).keeping(
                functools.partial(_record_decline, {**attempt, "outcome": ChargeOutcome.DECLINED, "code": code}))
        case processor.Unavailable(code=code, message=message):
            # Kept for tok_flaky's count, but no event: the charge has no outcome yet (the saga retries it).
            raise ServiceUnavailable(message, code=code, order_id=data.order_id, retry_after=1).keeping(
                functools.partial(_record_attempt, {**attempt, "outcome": ChargeOutcome.UNAVAILABLE, "code": code}))
        case processor.Captured(reference=reference, brand=brand):
            pass

    now, payment_id = utc_now(), new_id()
    payment = {"id": payment_id, "order_id": data.order_id, "customer_id": data.customer_id,
               "amount_minor": data.amount_minor, "currency": data.currency, "status": PaymentStatus.CAPTURED,
               "refunded_minor": 0, "processor_reference": reference, "card_brand": brand,
               "created_at": now, "updated_at": now}
    await tx.execute(_INSERT_PAYMENT, payment)
    await tx.execute(_INSERT_ATTEMPT, {**attempt, "outcome": ChargeOutcome.CAPTURED, "code": None})
    await emit(tx, events.PaymentCaptured(order_id=data.order_id, payment_id=payment_id,
                                          amount_minor=data.amount_minor, currency=data.currency),
               subject=data.order_id, order_id=data.order_id)
    return _payment(payment)


def _missing(payment_id: str) -> str:
    """The 404's detail for a payment that is not there, or not the caller's (shared.paging.visible_row)."""
    return f"Payment {payment_id} does not exist."


async def get_payment(tx: Tx, identity: Identity, payment_id: str) -> CapturedPayment:
    rows = await tx.fetch(_PAYMENT, {"w_id": payment_id})
    return _payment(visible_row(rows[0] if rows else None, identity, _missing(payment_id)), rows)


async def list_payments(
    tx: Tx, identity: Identity, order_id: str | None, customer_id: str | None, status: PaymentStatus | None,
    limit: int, offset: int,
) -> tuple[list[CapturedPayment], int]:
    match = matching(payments, customer_id=identity.customer_scope(customer_id), order_id=order_id, status=status)
    page, total = await visible_page(tx, payments, match, (payments.c.created_at.desc(), payments.c.id), limit,
                                     offset)
    # A refund row has its payment's id as "id", as in the payment-and-refunds join _refund reads.
    refunds_of = await children_of(tx, page, refunds.c.payment_id.label("id"), _REFUND_COLUMNS, refunds.c.created_at)
    return [_payment(payment, refunds_of[payment["id"]]) for payment in page], total


async def refund_payment(tx: Tx, identity: Identity, payment_id: str, amount_minor: int, reason: str | None
                         ) -> IssuedRefund:
    payment = visible_row(await tx.fetchrow(_LOCK_PAYMENT, {"w_id": payment_id}), identity, _missing(payment_id))
    if payment["status"] == PaymentStatus.REFUNDED:
        raise Conflict(f"Payment {payment_id} is already fully refunded.", payment_status=payment["status"],
                       refundable_minor=0)
    refundable = payment["amount_minor"] - payment["refunded_minor"]
    if amount_minor > refundable:
        raise Conflict(f"Cannot refund {amount_minor}: only {refundable} of payment {payment_id} is refundable.",
                       payment_status=payment["status"], requested=amount_minor, refundable_minor=refundable)
    refunded = payment["refunded_minor"] + amount_minor
    status = PaymentStatus.REFUNDED if refunded == payment["amount_minor"] else PaymentStatus.PARTIALLY_REFUNDED
    await tx.execute(_SET_REFUNDED, {"w_id": payment_id, "w_refunded": refunded, "w_status": status})
    refund = await _refund_issued(tx, payment, amount_minor, reason, refunded, status)
    return IssuedRefund(id=refund["id"], payment_id=payment_id, amount_minor=amount_minor, reason=reason,
                        created_at=refund["created_at"], payment_status=status, payment_refunded_minor=refunded)


async def _refund_issued(tx: Tx, payment: Row, amount_minor: int, reason: str | None, refunded: int,
                         status: PaymentStatus) -> Row:
    """The refund's row and its event (the payment's row already updated to `refunded`, `status`)."""
    refund = await tx.fetchrow(_INSERT_REFUND, {"payment_id": payment["id"], "amount_minor": amount_minor,
                                                "reason": reason})
    assert refund is not None  # an INSERT ... RETURNING returns its row
    await emit(tx, events.PaymentRefunded(
        order_id=payment["order_id"], payment_id=payment["id"], refund_id=refund["id"], amount_minor=amount_minor,
        currency=payment["currency"], refunded_minor=refunded, payment_status=status, reason=reason),
        subject=payment["order_id"], order_id=payment["order_id"])
    return refund


async def refund_order(tx: Tx, order_id: str) -> OrderRefund:
    """The saga's compensation: refund whatever is left of the order's payment, at most once; NONE: never charged.

    The order's fence is closed first (shared/fence.py), so a charge that arrives late (the saga timed out
    waiting for it) is refused rather than taking money for a cancelled order; a charge in flight is waited for.
    """
    await compensate(tx, order_id)
    payment = await tx.fetchrow(_ORDER_PAYMENT_LOCKED, {"w_order_id": order_id})
    if payment is None:
        return OrderRefund(order_id, OrderRefundStatus.NONE)
    refundable = payment["amount_minor"] - payment["refunded_minor"]
    if refundable > 0:  # a repeat finds nothing left to refund: no refund, no event
        await tx.execute(_REFUND_REST, {"w_id": payment["id"]})
        await _refund_issued(tx, payment, refundable, "order compensated", payment["amount_minor"],
                             PaymentStatus.REFUNDED)
    return OrderRefund(order_id, OrderRefundStatus.REFUNDED, payment["id"], payment["amount_minor"],
                       payment["amount_minor"])
