"""carrier_service domain rules: the cheapest active carrier that serves, carries and has room today wins."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from carrier_service.models import (
    Assignment,
    AssignmentStatus,
    Carrier,
    CarrierAssignment,
    CarrierCountry,
    CarrierDailyLoad,
    CarrierDetails,
    Release,
    ReleaseStatus,
)
from carrier_service.schemas import AssignmentRequest, CarrierCreate, CarrierUpdate
from shared import events
from shared.bus import emit
from shared.db import Row, Tx, conflict_insert, table_of
from shared.errors import Conflict, NotFound
from shared.fence import compensate, enter_step
from shared.paging import visible_page

carriers = table_of(Carrier)
carrier_countries = table_of(CarrierCountry)
assignments = table_of(CarrierAssignment)
loads = table_of(CarrierDailyLoad)


def utc_today() -> date:
    """The capacity day; a function of its own so tests can move the clock."""
    return datetime.now(UTC).date()


def _details(carrier: Row, countries: Sequence[str]) -> CarrierDetails:
    return CarrierDetails(
        id=carrier["id"], code=carrier["code"], name=carrier["name"], countries=tuple(sorted(countries)),
        max_weight_grams=carrier["max_weight_grams"], daily_capacity=carrier["daily_capacity"],
        base_price_minor=carrier["base_price_minor"], price_per_kg_minor=carrier["price_per_kg_minor"],
        currency=carrier["currency"], active=carrier["active"], created_at=carrier["created_at"],
        updated_at=carrier["updated_at"])


def _assignment(row: Row) -> Assignment:
    return Assignment(**{column.key: row[column.key] for column in assignments.c if column.key != "status"},
                      status=AssignmentStatus(row["status"]))


# Built once and executed with parameters: compiled once, prepared once per connection.
_CREATE_CARRIER = (conflict_insert(carriers).on_conflict_do_nothing(index_elements=[carriers.c.code])
                   .returning(*carriers.c))
_INSERT_COUNTRIES = insert(carrier_countries)
_DELETE_COUNTRIES = delete(carrier_countries).where(carrier_countries.c.carrier_id == bindparam("w_id"))
# A carrier and its countries in one statement: one row per country.
_CARRIER = (select(carriers, carrier_countries.c.country)
            .select_from(carriers.outerjoin(carrier_countries, carrier_countries.c.carrier_id == carriers.c.id))
            .where(carriers.c.id == bindparam("w_id")))
_LOCK_CARRIER = select(carriers).where(carriers.c.id == bindparam("w_id")).with_for_update()
_UPDATE_CARRIER = update(carriers).where(carriers.c.id == bindparam("w_id")).returning(*carriers.c)
_COUNTRIES = select(carrier_countries.c.country).where(carrier_countries.c.carrier_id == bindparam("w_id"))


async def create_carrier(tx: Tx, data: CarrierCreate) -> CarrierDetails:
    # A concurrent create of the same code waits on the unique index, then inserts nothing.
    carrier = await tx.fetchrow(_CREATE_CARRIER, data.model_dump(exclude={"countries"}))
    if carrier is None:
        raise Conflict(f"A carrier with code {data.code} already exists.", code=data.code)
    await tx.executemany(_INSERT_COUNTRIES, [{"carrier_id": carrier["id"], "country": country}
                                             for country in data.countries])
    return _details(carrier, data.countries)


async def get_carrier(tx: Tx, carrier_id: str) -> CarrierDetails:
    rows = await tx.fetch(_CARRIER, {"w_id": carrier_id})
    if not rows:
        raise NotFound(f"Carrier {carrier_id} does not exist.")
    return _details(rows[0], [row["country"] for row in rows if row["country"] is not None])


async def update_carrier(tx: Tx, carrier_id: str, data: CarrierUpdate) -> CarrierDetails:
    changes = data.changes()
    countries: list[str] | None = changes.pop("countries", None)
    carrier = await tx.fetchrow(_UPDATE_CARRIER if changes else _LOCK_CARRIER, {"w_id": carrier_id, **changes})
    if carrier is None:
        raise NotFound(f"Carrier {carrier_id} does not exist.")
    current = [row["country"] for row in await tx.fetch(_COUNTRIES, {"w_id": carrier_id})]
    if countries is not None and sorted(countries) != sorted(current):
        await tx.execute(_DELETE_COUNTRIES, {"w_id": carrier_id})
        await tx.executemany(_INSERT_COUNTRIES, [{"carrier_id": carrier_id, "country": c} for c in countries])
        current = countries
    return _details(carrier, current)


async def list_carriers(
    tx: Tx, country: str | None, active: bool | None, limit: int, offset: int
) -> tuple[list[CarrierDetails], int]:
    match = []
    if country:
        match.append(carriers.c.id.in_(select(carrier_countries.c.carrier_id)
                                       .where(carrier_countries.c.country == country)))
    if active is not None:
        match.append(carriers.c.active.is_(active))
    page, total = await visible_page(tx, carriers, match, (carriers.c.code,), limit, offset)
    countries_of: dict[str, list[str]] = {carrier["id"]: [] for carrier in page}
    if page:
        for row in await tx.fetch(select(carrier_countries.c.carrier_id, carrier_countries.c.country)
                                  .where(carrier_countries.c.carrier_id.in_(countries_of))):
            countries_of[row["carrier_id"]].append(row["country"])
    return [_details(carrier, countries_of[carrier["id"]]) for carrier in page], total


# --- the saga's step and its compensation ---------------------------------------------------------------------

_LIVE_ASSIGNMENT = select(assignments.c.id, assignments.c.carrier_code).where(
    assignments.c.order_id == bindparam("w_order_id"), assignments.c.status == AssignmentStatus.ASSIGNED)
# Every active carrier serving the country, locked in id order so concurrent assignments cannot deadlock. Holding
# these row locks while taking a place is what keeps capacity from being overbooked: a concurrent assignment to
# the same carrier waits here until this transaction commits. Each row also carries the order's live assignment
# id (None without one) and the carrier's load of the day, saving statements. That load is read in the
# statement's snapshot, taken before the locks were granted: an assignment committed meanwhile is missing from
# it, which is why taking the place checks the capacity again.
_LOCK_SERVING = (
    select(carriers.c.id, carriers.c.code, carriers.c.max_weight_grams, carriers.c.daily_capacity,
           carriers.c.base_price_minor, carriers.c.price_per_kg_minor, carriers.c.currency,
           select(assignments.c.id)
           .where(assignments.c.order_id == bindparam("w_order_id"), assignments.c.status == AssignmentStatus.ASSIGNED)
           .scalar_subquery().label("live_assignment_id"),
           func.coalesce(select(loads.c.assigned)
                         .where(loads.c.carrier_id == carriers.c.id, loads.c.day == bindparam("w_day"))
                         .scalar_subquery(), 0).label("assigned"))
    .join(carrier_countries, carrier_countries.c.carrier_id == carriers.c.id)
    .where(carrier_countries.c.country == bindparam("w_country"), carriers.c.active.is_(True))
    .order_by(carriers.c.id)
    .with_for_update(of=carriers)
)
# Count one more assignment on the carrier's day, unless it is full: the upsert's conflict branch reads the
# counter as last committed, whatever the snapshot was.
_TAKE_PLACE = (
    conflict_insert(loads)
    .values(carrier_id=bindparam("w_carrier_id"), day=bindparam("w_day"), assigned=1)
    .on_conflict_do_update(index_elements=[loads.c.carrier_id, loads.c.day], set_={"assigned": loads.c.assigned + 1},
                           where=loads.c.assigned < bindparam("w_capacity", type_=loads.c.assigned.type))
    .returning(loads.c.assigned))
_INSERT_ASSIGNMENT = insert(assignments).returning(*assignments.c)
# One conditional UPDATE: a concurrent release waits on the row, re-checks the status, and changes nothing.
_RELEASE = (update(assignments)
            .where(assignments.c.order_id == bindparam("w_order_id"), assignments.c.status == AssignmentStatus.ASSIGNED)
            .values(status=AssignmentStatus.RELEASED, released_at=bindparam("w_now"))
            .returning(*assignments.c))
_GIVE_BACK_PLACE = (update(loads).where(loads.c.carrier_id == bindparam("w_carrier_id"),
                                        loads.c.day == bindparam("w_day"))
                    .values(assigned=loads.c.assigned - 1))
# The order's live assignment, else its most recent released one.
_ASSIGNMENT = (select(assignments).where(assignments.c.order_id == bindparam("w_order_id"))
               .order_by((assignments.c.status == AssignmentStatus.ASSIGNED).desc(), assignments.c.created_at.desc())
               .limit(1))


async def _load_of(tx: Tx, carrier_ids: list[str], day: date) -> dict[str, int]:
    # A statement of its own, after the locks: its snapshot sees every assignment committed before them.
    rows = await tx.fetch(select(loads.c.carrier_id, loads.c.assigned)
                          .where(loads.c.carrier_id.in_(carrier_ids), loads.c.day == day))
    return {row["carrier_id"]: int(row["assigned"]) for row in rows}


def price_for(carrier: Row, weight_grams: int) -> int:
    """Base price plus the per-kg price for every started kilogram (integer math, no floats)."""
    started_kg = -(-weight_grams // 1000)
    return int(carrier["base_price_minor"] + started_kg * carrier["price_per_kg_minor"])


def _no_carrier(detail: str, code: str, **extra: object) -> Conflict:
    return Conflict(f"No carrier fits: {detail}.", reason=detail, code=code, **extra)


async def _refuse_if_assigned(tx: Tx, order_id: str) -> None:
    existing = await tx.fetchrow(_LIVE_ASSIGNMENT, {"w_order_id": order_id})
    if existing is not None:
        raise Conflict(f"Order {order_id} already has carrier {existing['carrier_code']} assigned.",
                       code="already_assigned", assignment_id=existing["id"])


async def assign_carrier(tx: Tx, data: AssignmentRequest) -> Assignment:
    """The cheapest carrier with room today, assigned once per order and never after the order's release."""
    await enter_step(tx, data.order_id)
    day = utc_today()
    serving = await tx.fetch(_LOCK_SERVING, {"w_country": data.country, "w_order_id": data.order_id, "w_day": day})
    # A live assignment is refused before any other reason; with no carrier rows there is no id to look at.
    if not serving or serving[0]["live_assignment_id"] is not None:
        await _refuse_if_assigned(tx, data.order_id)
    if not serving:
        raise _no_carrier(f"no carrier serves country {data.country}", "country_not_served")
    fitting = [carrier for carrier in serving if carrier["max_weight_grams"] >= data.weight_grams]
    if not fitting:
        raise _no_carrier(f"parcel of {data.weight_grams} g exceeds every carrier's limit", "overweight")
    load = {carrier["id"]: int(carrier["assigned"]) for carrier in fitting}
    while True:
        with_room = [carrier for carrier in fitting if load.get(carrier["id"], 0) < carrier["daily_capacity"]]
        if not with_room:
            raise _no_carrier(f"all carriers serving {data.country} are at capacity today", "at_capacity")
        chosen = min(with_room, key=lambda carrier: (price_for(carrier, data.weight_grams), carrier["code"]))
        taken = await tx.fetchrow(_TAKE_PLACE, {"w_carrier_id": chosen["id"], "w_day": day,
                                                "w_capacity": chosen["daily_capacity"]})
        if taken is not None:
            break
        # Filled by an assignment that committed while this one waited for the locks: read the loads again.
        load = await _load_of(tx, [carrier["id"] for carrier in fitting], day)
    try:
        # No savepoint: a failed insert ends the work, and the caller rolls the transaction back.
        assignment = await tx.fetchrow(_INSERT_ASSIGNMENT, {
            "order_id": data.order_id, "carrier_id": chosen["id"], "carrier_code": chosen["code"],
            "country": data.country, "weight_grams": data.weight_grams,
            "price_minor": price_for(chosen, data.weight_grams), "currency": chosen["currency"],
            "status": AssignmentStatus.ASSIGNED, "service_day": day, "released_at": None})
    except IntegrityError as exc:  # a concurrent assignment of the same order committed first
        raise Conflict(f"Order {data.order_id} already has a carrier assigned.", code="already_assigned") from exc
    assert assignment is not None  # an INSERT ... RETURNING returns its row
    await emit(tx, events.CarrierAssigned(order_id=data.order_id, carrier_code=chosen["code"],
                                          price_minor=assignment["price_minor"], currency=chosen["currency"]),
               subject=data.order_id, order_id=data.order_id)
    return _assignment(assignment)


async def release_assignment(tx: Tx, order_id: str) -> Release:
    """Release the order's live assignment; NONE when it holds none (released already, or never assigned).

    Only the release that changed it gives the place back to the carrier's day. The order's fence is closed
    first (shared/fence.py): an assignment arriving later is refused, one in flight is waited for and released.
    """
    await compensate(tx, order_id)
    released = await tx.fetchrow(_RELEASE, {"w_order_id": order_id, "w_now": datetime.now(UTC)})
    if released is None:  # nothing released, nothing to say
        return Release(order_id, ReleaseStatus.NONE)
    await tx.execute(_GIVE_BACK_PLACE, {"w_carrier_id": released["carrier_id"], "w_day": released["service_day"]})
    await emit(tx, events.CarrierReleased(order_id=order_id, carrier_code=released["carrier_code"]),
               subject=order_id, order_id=order_id)
    return Release(order_id, ReleaseStatus.RELEASED, _assignment(released))


async def get_assignment(tx: Tx, order_id: str) -> Assignment:
    assignment = await tx.fetchrow(_ASSIGNMENT, {"w_order_id": order_id})
    if assignment is None:
        raise NotFound(f"Order {order_id} has no carrier assignment.")
    return _assignment(assignment)


