"""carrier_service domain rules: the cheapest active carrier that serves, carries and has room today wins."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, cast

from sqlalchemy import Row, Table, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from carrier_service.models import AssignmentStatus, Carrier, CarrierAssignment, CarrierCountry, CarrierDailyLoad
from carrier_service.schemas import AssignmentRequest, CarrierCreate, CarrierUpdate
from shared.db import conflict_insert
from shared.errors import Conflict, NotFound
from shared.fence import compensate, enter_step


def utc_today() -> date:
    """The capacity day; a function of its own so tests can move the clock."""
    return datetime.now(UTC).date()


def _country_rows(countries: list[str]) -> list[CarrierCountry]:
    return [CarrierCountry(country=country) for country in countries]


async def create_carrier(session: AsyncSession, data: CarrierCreate) -> Carrier:
    if (await session.execute(select(Carrier.id).where(Carrier.code == data.code))).first() is not None:
        raise Conflict(f"A carrier with code {data.code} already exists.", code=data.code)
    carrier = Carrier(**data.model_dump(exclude={"countries"}), country_rows=_country_rows(data.countries))
    try:
        # Added inside the savepoint: begin_nested() flushes what is pending before the savepoint starts.
        async with session.begin_nested():
            session.add(carrier)
            await session.flush()
    except IntegrityError as exc:  # a concurrent create of the same code won the race
        raise Conflict(f"A carrier with code {data.code} already exists.", code=data.code) from exc
    return carrier


async def get_carrier(session: AsyncSession, carrier_id: str, for_update: bool = False) -> Carrier:
    query = select(Carrier).where(Carrier.id == carrier_id)
    if for_update:
        query = query.with_for_update()
    carrier = (await session.execute(query)).scalar_one_or_none()
    if carrier is None:
        raise NotFound(f"Carrier {carrier_id} does not exist.")
    return carrier


async def update_carrier(session: AsyncSession, carrier_id: str, data: CarrierUpdate) -> Carrier:
    carrier = await get_carrier(session, carrier_id, for_update=True)
    changes = data.changes()
    countries = changes.pop("countries", None)
    for field, value in changes.items():
        setattr(carrier, field, value)
    if countries is not None and countries != carrier.countries:
        carrier.country_rows.clear()
        await session.flush()  # delete the old rows before inserting the same keys again
        carrier.country_rows.extend(_country_rows(countries))
    await session.flush()
    await session.refresh(carrier)
    return carrier


async def list_carriers(
    session: AsyncSession, country: str | None, active: bool | None, limit: int, offset: int
) -> tuple[list[Carrier], int]:
    query = select(Carrier)
    if country:
        query = query.where(Carrier.id.in_(select(CarrierCountry.carrier_id).where(CarrierCountry.country == country)))
    if active is not None:
        query = query.where(Carrier.active.is_(active))
    total = (await session.execute(select(func.count()).select_from(query.subquery()))).scalar_one()
    rows = await session.execute(query.order_by(Carrier.code).limit(limit).offset(offset))
    return list(rows.scalars()), int(total)


# The saga's step and its compensation run on every order: Core statements on the tables, no ORM unit of work.
carriers = cast(Table, Carrier.__table__)
carrier_countries = cast(Table, CarrierCountry.__table__)
assignments = cast(Table, CarrierAssignment.__table__)
loads = cast(Table, CarrierDailyLoad.__table__)
# A result row of any columns, read by name.
AnyRow = Row[*tuple[Any, ...]]


async def _live_assignment(session: AsyncSession, order_id: str) -> AnyRow | None:
    query = select(assignments.c.id, assignments.c.carrier_code).where(
        assignments.c.order_id == order_id, assignments.c.status == AssignmentStatus.ASSIGNED
    )
    return (await session.execute(query)).one_or_none()


async def _lock_carriers_serving(session: AsyncSession, country: str, order_id: str, day: date) -> list[AnyRow]:
    """Lock every active carrier serving the country, in id order so concurrent assignments cannot deadlock.

    Holding these row locks while taking a place is what keeps capacity from being overbooked: a concurrent
    assignment to the same carrier waits here until this transaction commits. Each row also carries the
    order's live assignment id (None without one) and the carrier's load of the day, saving statements.
    That load is read in the statement's snapshot, taken before the locks were granted: an assignment
    committed meanwhile is missing from it, which is why taking the place checks the capacity again.
    """
    live_assignment_id = (
        select(assignments.c.id)
        .where(assignments.c.order_id == order_id, assignments.c.status == AssignmentStatus.ASSIGNED)
        .scalar_subquery()
        .label("live_assignment_id")
    )
    assigned = func.coalesce(
        select(loads.c.assigned).where(loads.c.carrier_id == carriers.c.id, loads.c.day == day).scalar_subquery(), 0
    ).label("assigned")
    query = (
        select(carriers.c.id, carriers.c.code, carriers.c.max_weight_grams, carriers.c.daily_capacity,
               carriers.c.base_price_minor, carriers.c.price_per_kg_minor, carriers.c.currency,
               live_assignment_id, assigned)
        .join(carrier_countries, carrier_countries.c.carrier_id == carriers.c.id)
        .where(carrier_countries.c.country == country, carriers.c.active.is_(True))
        .order_by(carriers.c.id)
        .with_for_update(of=carriers)
    )
    return list((await session.execute(query)).all())


async def _load_of(session: AsyncSession, carrier_ids: list[str], day: date) -> dict[str, int]:
    # A statement of its own, after the locks: its snapshot sees every assignment committed before them.
    rows = await session.execute(
        select(loads.c.carrier_id, loads.c.assigned).where(loads.c.carrier_id.in_(carrier_ids), loads.c.day == day)
    )
    return {carrier_id: int(assigned) for carrier_id, assigned in rows.all()}


async def _take_place(session: AsyncSession, carrier: AnyRow, day: date) -> bool:
    """Count one more assignment on the carrier's day, unless it is full; False when it is.

    The upsert's conflict branch reads the counter as last committed, whatever the snapshot was.
    """
    statement = (
        conflict_insert(session, loads)
        .values(carrier_id=carrier.id, day=day, assigned=1)
        .on_conflict_do_update(
            index_elements=[loads.c.carrier_id, loads.c.day],
            set_={"assigned": loads.c.assigned + 1},
            where=loads.c.assigned < carrier.daily_capacity,
        )
        .returning(loads.c.assigned)
    )
    return (await session.execute(statement)).first() is not None


def price_for(carrier: AnyRow, weight_grams: int) -> int:
    """Base price plus the per-kg price for every started kilogram (integer math, no floats)."""
    started_kg = -(-weight_grams // 1000)
    return int(carrier.base_price_minor + started_kg * carrier.price_per_kg_minor)


def _no_carrier(detail: str, code: str, **extra: object) -> Conflict:
    return Conflict(f"No carrier fits: {detail}.", reason=detail, code=code, **extra)


async def _refuse_if_assigned(session: AsyncSession, order_id: str) -> None:
    existing = await _live_assignment(session, order_id)
    if existing is not None:
        raise Conflict(f"Order {order_id} already has carrier {existing.carrier_code} assigned.",
                       code="already_assigned", assignment_id=existing.id)


async def assign_carrier(session: AsyncSession, data: AssignmentRequest) -> AnyRow:
    """The cheapest carrier with room today, assigned once per order and never after the order's release."""
    await enter_step(session, data.order_id)
    day = utc_today()
    serving = await _lock_carriers_serving(session, data.country, data.order_id, day)
    # A live assignment is refused before any other reason; with no carrier rows there is no id to look at.
    if not serving or serving[0].live_assignment_id is not None:
        await _refuse_if_assigned(session, data.order_id)
    if not serving:
        raise _no_carrier(f"no carrier serves country {data.country}", "country_not_served")
    fitting = [carrier for carrier in serving if carrier.max_weight_grams >= data.weight_grams]
    if not fitting:
        raise _no_carrier(f"parcel of {data.weight_grams} g exceeds every carrier's limit", "overweight")
    load = {carrier.id: int(carrier.assigned) for carrier in fitting}
    while True:
        with_room = [carrier for carrier in fitting if load.get(carrier.id, 0) < carrier.daily_capacity]
        if not with_room:
            raise _no_carrier(f"all carriers serving {data.country} are at capacity today", "at_capacity")
        chosen = min(with_room, key=lambda carrier: (price_for(carrier, data.weight_grams), carrier.code))
        if await _take_place(session, chosen, day):
            break
        # Filled by an assignment that committed while this one waited for the locks: read the loads again.
        load = await _load_of(session, [carrier.id for carrier in fitting], day)
    try:
        # No savepoint: a failed insert ends the work, and the caller rolls the transaction back.
        return (await session.execute(insert(assignments).values(
            order_id=data.order_id,
            carrier_id=chosen.id,
            carrier_code=chosen.code,
            country=data.country,
            weight_grams=data.weight_grams,
            price_minor=price_for(chosen, data.weight_grams),
            currency=chosen.currency,
            status=AssignmentStatus.ASSIGNED,
            service_day=day,
        ).returning(*assignments.c))).one()
    except IntegrityError as exc:  # a concurrent assignment of the same order committed first
        raise Conflict(f"Order {data.order_id} already has a carrier assigned.", code="already_assigned") from exc


@dataclass(frozen=True)
class Release:
    """What a release did: RELEASED with the assignment it freed, or NONE when the order held none."""

    order_id: str
    status: str
    assignment: AnyRow | None = None


async def release_assignment(session: AsyncSession, order_id: str) -> Release:
    """Release the order's live assignment; NONE when it holds none (released already, or never assigned).

    One conditional UPDATE: a concurrent release waits on the row, re-checks the status, and changes nothing;
    only the release that changed it gives the place back to the carrier's day. The order's fence is closed
    first (shared/fence.py): an assignment arriving later is refused, one in flight is waited for and released.
    """
    await compensate(session, order_id)
    released = (await session.execute(
        update(assignments)
        .where(assignments.c.order_id == order_id, assignments.c.status == AssignmentStatus.ASSIGNED)
        .values(status=AssignmentStatus.RELEASED, released_at=datetime.now(UTC))
        .returning(*assignments.c)
    )).one_or_none()
    if released is not None:
        await session.execute(
            update(loads)
            .where(loads.c.carrier_id == released.carrier_id, loads.c.day == released.service_day)
            .values(assigned=loads.c.assigned - 1)
        )
        return Release(order_id, "RELEASED", released)
    return Release(order_id, "NONE")


async def get_assignment(session: AsyncSession, order_id: str) -> CarrierAssignment:
    """The order's live assignment, else its most recent released one."""
    query = (
        select(CarrierAssignment)
        .where(CarrierAssignment.order_id == order_id)
        .order_by((CarrierAssignment.status == AssignmentStatus.ASSIGNED).desc(), CarrierAssignment.created_at.desc())
        .limit(1)
    )
    assignment = (await session.execute(query)).scalar_one_or_none()
    if assignment is None:
        raise NotFound(f"Order {order_id} has no carrier assignment.")
    return assignment
