"""payment_service domain rules: one payment per order, refunds never exceed it, compensation refunds once."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from payment_service import processor
from payment_service.models import ChargeAttempt, Payment, PaymentStatus, Refund, SettledBy, SettledOrder
from payment_service.schemas import PaymentCreate
from shared.auth import Identity
from shared.db import Database
from shared.errors import Conflict, NotFound, PaymentRequired, ServiceUnavailable


async def _payment_of_order(session: AsyncSession, order_id: str, for_update: bool = False) -> Payment | None:
    query = select(Payment).where(Payment.order_id == order_id).execution_options(populate_existing=True)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def _settled_by(session: AsyncSession, order_id: str) -> str | None:
    settled = await session.get(SettledOrder, order_id, populate_existing=True)
    return settled.claimed_by if settled is not None else None


def _already_settled(order_id: str, claimed_by: str, payment: Payment | None) -> Conflict:
    if payment is not None:
        return Conflict(f"Order {order_id} already has a payment ({payment.status}); an order is charged once.",
                        order_id=order_id, payment_id=payment.id, payment_status=payment.status)
    if claimed_by == SettledBy.COMPENSATION:
        return Conflict(f"Order {order_id} was compensated before it was charged; it cannot be charged now.",
                        order_id=order_id)
    return Conflict(f"Order {order_id} is already paid.", order_id=order_id)


async def make_payment(session: AsyncSession, data: PaymentCreate, failed_attempts: list[ChargeAttempt]) -> Payment:
    """Charge the card once per order. Refusals raise; their attempts go to `failed_attempts`.

    A refusal rolls the caller's transaction back, so the caller saves `failed_attempts` afterwards in a
    transaction of its own (`record_attempts`): a decline is kept on file, and tok_flaky counts its failures.
    """
    payment = await _payment_of_order(session, data.order_id)
    claimed_by = await _settled_by(session, data.order_id)
    if payment is not None or claimed_by is not None:
        raise _already_settled(data.order_id, claimed_by or SettledBy.PAYMENT, payment)

    previous = (await session.execute(select(func.count()).select_from(ChargeAttempt).where(
        ChargeAttempt.order_id == data.order_id, ChargeAttempt.payment_token == data.payment_token))).scalar_one()
    result = processor.charge(data.payment_token, data.amount_minor, data.currency, attempt=int(previous) + 1)
    attempt = ChargeAttempt(order_id=data.order_id, customer_id=data.customer_id, amount_minor=data.amount_minor,
                            currency=data.currency, payment_token=data.payment_token)
    match result:
        case processor.Declined(code=code, message=message):
            attempt.outcome, attempt.code = "DECLINED", code
            failed_attempts.append(attempt)
            raise PaymentRequired(message, code=code, order_id=data.order_id)
        case processor.Unavailable(code=code, message=message):
            attempt.outcome, attempt.code = "UNAVAILABLE", code
            failed_attempts.append(attempt)
            raise ServiceUnavailable(message, code=code, order_id=data.order_id, retry_after=1)
        case processor.Captured(reference=reference, brand=brand):
            attempt.outcome = "CAPTURED"

    payment = Payment(order_id=data.order_id, customer_id=data.customer_id, amount_minor=data.amount_minor,
                      currency=data.currency, status=PaymentStatus.CAPTURED, refunded_minor=0,
                      processor_reference=reference, card_brand=brand, refunds=[])
    try:
        # A concurrent charge or compensation of the same order waits on this key, then one of them fails here.
        async with session.begin_nested():
            session.add(SettledOrder(order_id=data.order_id, claimed_by=SettledBy.PAYMENT))
            session.add(payment)
            await session.flush()
    except IntegrityError as exc:
        raise _already_settled(data.order_id, await _settled_by(session, data.order_id) or SettledBy.PAYMENT,
                               await _payment_of_order(session, data.order_id)) from exc
    session.add(attempt)
    await session.flush()
    return payment


async def record_attempts(db: Database, attempts: list[ChargeAttempt]) -> None:
    if attempts:
        async with db.transaction() as session:
            session.add_all(attempts)


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
                         reason: str | None) -> tuple[Refund, Payment]:
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
    return refund, payment


async def refund_order(session: AsyncSession, order_id: str) -> Payment | None:
    """The saga's compensation: refund whatever is left of the order's payment, at most once; None: never charged.

    With no payment, the order is marked settled by compensation, so a charge that arrives late (the
    saga timed out waiting for it) is refused rather than taking money for a cancelled order.
    """
    payment = await _payment_of_order(session, order_id, for_update=True)
    if payment is None:
        if await _settled_by(session, order_id) is not None:
            return None
        try:
            async with session.begin_nested():
                session.add(SettledOrder(order_id=order_id, claimed_by=SettledBy.COMPENSATION))
                await session.flush()
            return None
        except IntegrityError:
            # A charge (or another compensation) committed meanwhile.
            payment = await _payment_of_order(session, order_id, for_update=True)
            if payment is None:
                return None
    refundable = payment.amount_minor - payment.refunded_minor
    if refundable > 0:
        _refund(payment, refundable, "order compensated")
        await session.flush()
    return payment
