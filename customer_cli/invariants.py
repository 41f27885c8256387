"""The fleet's promises, checked through the gateway: every saga finished, stock conserved, money moved once, and
through the services' databases: every event on the bus.

`check_invariants` reads every service's state as an admin (sagas, orders, payments, allocations, carrier
assignments, shipments, products) and reports each broken promise as a readable `Violation`:

- every saga is terminal (COMPLETED, COMPENSATED, or COMPENSATION_FAILED, which waits visibly for an operator);
- a COMPLETED saga's order is CONFIRMED and has exactly one captured payment equal to its total (nothing
  refunded), one live allocation of exactly its lines, one live carrier assignment and one live shipment;
- a COMPENSATED saga's order is CANCELLED and nothing of it is left: no net charge (captured - refunded == 0),
  no held stock, no live carrier assignment, no live shipment;
- for the skus asked about: the stock held (`reserved`) is exactly what confirmed orders hold, nothing is
  oversold, and with the initial stock given, `available == initial - confirmed` and `on_hand == initial`;
- every DELIVERED parcel's order is DELIVERED (order_service follows its parcel through the bus);
- with the services' databases given (`databases`), every outbox is drained: each service's `outbox` table is
  empty, and the saga orchestrator's relay has published its event store's notification log to the end. One
  count per database, whatever the history.

Reads only (GETs, and counts in the databases), so it is safe against a live fleet; the CLI's `check` command
and the reliability tests call it. A check scoped to the last run stays cheap on a fleet with a long history: the
saga list is asked for the sagas created since `since` (`created_after`), and orders, payments and shipments,
whose lists take no such window, are read newest first until the first one older than `since`.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from shared.bus import outbox

SAGAS = "/api/customer-orders"
TERMINAL = frozenset({"COMPLETED", "COMPENSATED", "COMPENSATION_FAILED"})
# A COMPLETED saga's order: CONFIRMED, then SHIPPED and DELIVERED as its parcel moves (moved by the bus's events).
CONFIRMED_STATES = ("CONFIRMED", "SHIPPED", "DELIVERED")
PAGE = 500
_READ_ATTEMPTS = 4
_SHOWN_PER_RULE = 25

# Rules, by the promise they guard (the names appear in reports and in tests' assertions).
SAGA_NOT_TERMINAL = "saga-not-terminal"
COMPENSATION_FAILED = "compensation-failed"
ORDER_STATE = "order-state"
CHARGED_ONCE = "confirmed-charged-once"
STOCK_ALLOCATED = "confirmed-stock-allocated"
CARRIER_ASSIGNED = "confirmed-carrier-assigned"
SHIPPED_ONCE = "confirmed-shipped-once"
NO_NET_CHARGE = "cancelled-no-net-charge"
NO_HELD_STOCK = "cancelled-no-held-stock"
NO_LIVE_ASSIGNMENT = "cancelled-no-live-assignment"
NO_LIVE_SHIPMENT = "cancelled-no-live-shipment"
ONE_ORDER_PER_SAGA = "one-order-per-saga"
STOCK_CONSERVED = "stock-conserved"
NO_OVERSELL = "no-oversell"
DELIVERED_FOLLOWED = "delivered-parcel-order-delivered"
OUTBOX_DRAINED = "outbox-drained"
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class Violation:
    rule: str  # one of the rule names above
    subject: str  # the saga, order or sku it is about
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.subject}: {self.message}"


@dataclass
class InvariantReport:
    gateway_url: str
    since: datetime | None
    violations: list[Violation] = field(default_factory=list)
    # Not broken promises, but worth a look (money or stock of orders that no saga in scope knows, ...).
    notes: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    stock: dict[str, dict[str, int]] = field(default_factory=dict)
    outboxes: dict[str, int] = field(default_factory=dict)  # service -> events not yet on the bus (when asked)
    elapsed_secs: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_rule(self) -> Counter[str]:
        return Counter(v.rule for v in self.violations)

    def violated(self, rule: str) -> list[Violation]:
        return [v for v in self.violations if v.rule == rule]

    def add(self, rule: str, subject: str, message: str) -> None:
        self.violations.append(Violation(rule, subject, message))

    def render(self) -> str:
        scope = f"since {self.since.isoformat()}" if self.since else "all history"
        lines = [f"Invariant check of {self.gateway_url} ({scope}, {self.elapsed_secs:.1f}s): "
                 + ("OK" if self.ok else f"{len(self.violations)} VIOLATION(S)")]
        lines.append("  sagas: " + (", ".join(f"{k.removeprefix('saga:')} {v}" for k, v in sorted(self.counts.items())
                                             if k.startswith("saga:")) or "none"))
        lines.append(f"  orders: {self.counts['orders:CONFIRMED']} confirmed, {self.counts['orders:SHIPPED']} shipped,"
                     f" {self.counts['orders:DELIVERED']} delivered, {self.counts['orders:CANCELLED']}"
                     f" cancelled; payments: {self.counts['payments']} (captured {self.counts['captured_minor']},"
                     f" refunded {self.counts['refunded_minor']} minor units)")
        if self.outboxes:
            lines.append("  outboxes (events not yet on the bus): "
                         + ", ".join(f"{service} {count}" for service, count in sorted(self.outboxes.items())))
        for sku, level in sorted(self.stock.items()):
            lines.append(f"  stock {sku}: " + ", ".join(f"{k} {v}" for k, v in level.items()))
        for rule, count in sorted(self.by_rule().items()):
            lines.append(f"  {rule}: {count}")
            for violation in self.violated(rule)[:_SHOWN_PER_RULE]:
                lines.append(f"    - {violation.subject}: {violation.message}")
            if count > _SHOWN_PER_RULE:
                lines.append(f"    ... and {count - _SHOWN_PER_RULE} more")
        lines.extend(f"  note: {note}" for note in self.notes[:_SHOWN_PER_RULE])
        if len(self.notes) > _SHOWN_PER_RULE:
            lines.append(f"  ... and {len(self.notes) - _SHOWN_PER_RULE} more notes")
        return "\n".join(lines)


class UnreadableError(Exception):
    """A read that kept failing: the check cannot vouch for anything it would have shown."""


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _created(item: dict[str, Any]) -> datetime:
    return _aware(datetime.fromisoformat(str(item["created_at"])))


class _Reader:
    """GETs through the gateway as admin, retried briefly on transient trouble (a fleet that just recovered)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def get(self, path: str, params: dict[str, Any] | None = None, *, missing_ok: bool = False) -> Any:
        last = ""
        for attempt in range(_READ_ATTEMPTS):
            try:
                response = self.client.get(path, params=params)
            except httpx.TransportError as exc:
                last = repr(exc)
            else:
                if response.status_code == 200:
                    return response.json()
                if response.status_code == 404 and missing_ok:
                    return None
                last = f"{response.status_code} {response.text[:200]}"
                if response.status_code < 500 and response.status_code != 429:
                    break
            if attempt + 1 < _READ_ATTEMPTS:
                time.sleep(0.25 * 2**attempt)
        raise UnreadableError(f"GET {path} {params or ''}: {last}")

    def pages(self, path: str, since: datetime | None, params: dict[str, Any] | None = None, *,
              window: bool = False) -> Iterator[dict[str, Any]]:
        """Every item of a newest-first list created at or after `since`, read until the first one older.

        With `window` the list is asked for only those (`created_after`, which the saga list takes): its `total`
        counts only them, so paging ends there. The stop at an older item stays for a list that takes no window.
        """
        query = dict(params or {})
        if window and since is not None:
            # An ISO string, not the datetime: httpx would send str(datetime), with a space for the "T".
            query["created_after"] = since.isoformat()
        offset = 0
        while True:
            page = self.get(path, {**query, "limit": PAGE, "offset": offset})
            items = page["items"]
            for item in items:
                if since is not None and _created(item) < since:
                    return
                yield item
            offset += len(items)
            if not items or offset >= page["total"]:
                return


def _lines(order: dict[str, Any]) -> Counter[str]:
    quantities: Counter[str] = Counter()
    for line in order.get("lines", []):
        quantities[line["sku"]] += int(line["quantity"])
    return quantities


def _net_minor(payments: list[dict[str, Any]]) -> int:
    return sum(int(p["amount_minor"]) - int(p["refunded_minor"]) for p in payments)


def check_invariants(
    gateway_url: str,
    admin_token: str,
    *,
    skus: list[str] | None = None,
    initial_stock: dict[str, int] | None = None,
    since: datetime | None = None,
    sagas: list[dict[str, Any]] | None = None,
    allow_compensation_failed: bool = True,
    workers: int = 8,
    timeout: float = 30,
    transport: httpx.BaseTransport | None = None,
    databases: Mapping[str, str] | None = None,
) -> InvariantReport:
    """Read the fleet through the gateway as admin and report every broken promise.

    `since` scopes the check to sagas (and their orders, payments, shipments) created at or after it.
    `skus` (or the keys of `initial_stock`) are checked for conservation: give the skus that only the
    sagas in scope touched, e.g. those a test created (`transport` lets tests serve a fake fleet).
    A COMPENSATION_FAILED saga is reported as a
    violation only with `allow_compensation_failed=False`; it is always counted and its state left
    unchecked (its compensation is by definition unfinished). `sagas` checks those sagas (each with `saga_id`,
    `status`, `order_id`, `created_at`, `updated_at`: e.g. the bench's DBOS peer's) instead of the orchestrator's.
    `databases` (service package -> its DATABASE_URL) are checked for a drained outbox; without them, outboxes are
    not checked (the gateway does not show them).
    """
    started = time.monotonic()
    since = _aware(since) if since is not None else None
    report = InvariantReport(gateway_url.rstrip("/"), since)
    headers = {"Authorization": f"Bearer {admin_token}", "Accept": "application/json"}
    with httpx.Client(base_url=report.gateway_url, headers=headers, timeout=timeout, transport=transport,
                      limits=httpx.Limits(max_connections=workers + 2)) as client:
        try:
            _check(_Reader(client), report, sorted(set(skus or []) | set(initial_stock or {})),
                   initial_stock or {}, allow_compensation_failed, workers, sagas)
        except UnreadableError as exc:
            report.add(UNREADABLE, report.gateway_url, str(exc))
    _check_outboxes(report, databases or {})
    report.elapsed_secs = time.monotonic() - started
    return report


def _check(reader: _Reader, report: InvariantReport, skus: list[str], initial_stock: dict[str, int],
           allow_compensation_failed: bool, workers: int, given: list[dict[str, Any]] | None = None) -> None:
    since = report.since
    if given is None:
        sagas = list(reader.pages(SAGAS, since, window=True))
    else:
        sagas = [s for s in given if since is None or _created(s) >= since]
    orders = {o["id"]: o for o in reader.pages("/api/orders", since)}
    payments: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for payment in reader.pages("/api/payments", since):
        payments[payment["order_id"]].append(payment)
    shipments: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for shipment in reader.pages("/api/shipments", since):
        shipments[shipment["order_id"]].append(shipment)

    report.counts["sagas"] = len(sagas)
    report.counts.update(f"saga:{s['status']}" for s in sagas)
    saga_of_order: dict[str, str] = {}
    checked: list[dict[str, Any]] = []  # the orders of finished sagas, in the state their saga promises
    stuck: list[str] = []  # the orders of sagas whose compensation failed: their state is whatever it is
    for saga in sagas:
        saga_id, status, order_id = saga["saga_id"], saga["status"], saga.get("order_id")
        if status not in TERMINAL:
            report.add(SAGA_NOT_TERMINAL, saga_id, f"still {status} (order {order_id}, updated {saga['updated_at']})")
            continue
        if status == "COMPENSATION_FAILED":
            message = f"compensation failed (order {order_id}); it waits for an operator's retry"
            if allow_compensation_failed:
                report.notes.append(f"saga {saga_id}: {message}")
            else:
                report.add(COMPENSATION_FAILED, saga_id, message)
            if order_id is not None:
                saga_of_order[order_id] = saga_id
                stuck.append(order_id)
            continue
        if order_id is None:
            if status == "COMPLETED":
                report.add(ORDER_STATE, saga_id, "COMPLETED without an order id")
            continue
        if order_id in saga_of_order:
            report.add(ONE_ORDER_PER_SAGA, saga_id, f"order {order_id} also belongs to saga {saga_of_order[order_id]}")
            continue
        saga_of_order[order_id] = saga_id
        order = orders.get(order_id) or reader.get(f"/api/orders/{order_id}", missing_ok=True)
        expected = CONFIRMED_STATES if status == "COMPLETED" else ("CANCELLED",)
        if order is None:
            report.add(ORDER_STATE, saga_id, f"{status}, but its order {order_id} does not exist")
        elif order["status"] not in expected:
            report.add(ORDER_STATE, order_id, f"saga {saga_id} is {status} but the order is {order['status']}"
                                              f" (expected {' or '.join(expected)})")
        else:
            checked.append(order)

    # Allocations and carrier assignments can only be read one order at a time.
    def per_order(order_id: str) -> tuple[str, Any, Any]:
        allocation = reader.get(f"/api/inventory/allocations/{order_id}", missing_ok=True)
        assignment = reader.get(f"/api/carriers/assignments/{order_id}", missing_ok=True)
        return order_id, allocation, assignment

    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = {oid: (alloc, assign) for oid, alloc, assign in
                 pool.map(per_order, [order["id"] for order in checked] + stuck)}

    held: Counter[str] = Counter()  # stock held by live allocations of orders in scope
    confirmed: Counter[str] = Counter()
    waiting: Counter[str] = Counter()  # stock still held by orders whose compensation failed
    for order_id in stuck:
        allocation = found[order_id][0]
        if allocation is not None and allocation["status"] == "ALLOCATED":
            for line in allocation["lines"]:
                held[line["sku"]] += int(line["quantity"])
                waiting[line["sku"]] += int(line["quantity"])
    for order in checked:
        order_id = order["id"]
        allocation, assignment = found[order_id]
        if allocation is not None and allocation["status"] == "ALLOCATED":
            for line in allocation["lines"]:
                held[line["sku"]] += int(line["quantity"])
        report.counts[f"orders:{order['status']}"] += 1
        paid = payments.get(order_id, [])
        report.counts["payments"] += len(paid)
        report.counts["captured_minor"] += sum(int(p["amount_minor"]) for p in paid)
        report.counts["refunded_minor"] += sum(int(p["refunded_minor"]) for p in paid)
        if order["status"] in CONFIRMED_STATES:
            confirmed.update(_lines(order))
            _check_confirmed(report, order, paid, allocation, assignment, shipments.get(order_id, []))
        else:
            _check_cancelled(report, order, paid, allocation, assignment, shipments.get(order_id, []))

    _note_strays(report, payments, shipments, saga_of_order)
    _check_delivered(reader, report, orders, shipments)
    if skus:
        _check_stock(reader, report, skus, initial_stock, held, confirmed, waiting)


def _check_confirmed(report: InvariantReport, order: dict[str, Any], paid: list[dict[str, Any]],
                     allocation: dict[str, Any] | None, assignment: dict[str, Any] | None,
                     shipments: list[dict[str, Any]]) -> None:
    order_id, total = order["id"], int(order["total_minor"])
    captured = [p for p in paid if p["status"] == "CAPTURED" and int(p["refunded_minor"]) == 0]
    if len(paid) != 1 or len(captured) != 1:
        summary = [(p["status"], p["amount_minor"], p["refunded_minor"]) for p in paid]
        report.add(CHARGED_ONCE, order_id, f"expected one captured, unrefunded payment; found {summary or 'none'}")
    elif int(captured[0]["amount_minor"]) != total or captured[0]["currency"] != order["currency"]:
        report.add(CHARGED_ONCE, order_id, f"charged {captured[0]['amount_minor']} {captured[0]['currency']} for an"
                                           f" order of {total} {order['currency']}")
    if allocation is None or allocation["status"] != "ALLOCATED":
        report.add(STOCK_ALLOCATED, order_id, "confirmed without a live allocation"
                   + (f" (allocation is {allocation['status']})" if allocation else ""))
    else:
        allocated = Counter[str]()
        for line in allocation["lines"]:
            allocated[line["sku"]] += int(line["quantity"])
        if allocated != _lines(order):
            report.add(STOCK_ALLOCATED, order_id, f"allocated {dict(allocated)} but ordered {dict(_lines(order))}")
    if assignment is None or assignment["status"] != "ASSIGNED":
        report.add(CARRIER_ASSIGNED, order_id, "confirmed without a live carrier assignment"
                   + (f" (latest is {assignment['status']})" if assignment else ""))
    live = [s for s in shipments if s["status"] != "CANCELLED"]
    if len(live) != 1:
        report.add(SHIPPED_ONCE, order_id, f"expected one live shipment; found {len(live)}"
                                           f" ({[s['tracking_number'] for s in live]})")
    elif assignment is not None and live[0]["carrier_code"] != assignment["carrier_code"]:
        report.add(SHIPPED_ONCE, order_id, f"shipment goes with {live[0]['carrier_code']} but carrier"
                                           f" {assignment['carrier_code']} is assigned")


def _check_cancelled(report: InvariantReport, order: dict[str, Any], paid: list[dict[str, Any]],
                     allocation: dict[str, Any] | None, assignment: dict[str, Any] | None,
                     shipments: list[dict[str, Any]]) -> None:
    order_id = order["id"]
    net = _net_minor(paid)
    if net != 0:
        charges = [(p["status"], p["amount_minor"], p["refunded_minor"]) for p in paid]
        report.add(NO_NET_CHARGE, order_id, f"cancelled but {net} minor units are still charged ({charges})")
    if allocation is not None and allocation["status"] == "ALLOCATED":
        held = {line["sku"]: line["quantity"] for line in allocation["lines"]}
        report.add(NO_HELD_STOCK, order_id, f"cancelled but still holds stock {held}")
    if assignment is not None and assignment["status"] == "ASSIGNED":
        report.add(NO_LIVE_ASSIGNMENT, order_id, f"cancelled but carrier {assignment['carrier_code']} is still"
                                                 " assigned")
    live = [s["tracking_number"] for s in shipments if s["status"] != "CANCELLED"]
    if live:
        report.add(NO_LIVE_SHIPMENT, order_id, f"cancelled but shipments {live} are live")


def _note_strays(report: InvariantReport, payments: dict[str, list[dict[str, Any]]],
                 shipments: dict[str, list[dict[str, Any]]], saga_of_order: dict[str, str]) -> None:
    """Money or parcels for orders no saga in scope knows: not the saga's promise, but worth a look."""
    for order_id, paid in payments.items():
        if order_id not in saga_of_order and _net_minor(paid):
            report.notes.append(f"order {order_id} (no saga in scope) holds a net charge of {_net_minor(paid)}")
    for order_id, parcels in shipments.items():
        if order_id not in saga_of_order and any(s["status"] != "CANCELLED" for s in parcels):
            report.notes.append(f"order {order_id} (no saga in scope) has a live shipment")


def _check_delivered(reader: _Reader, report: InvariantReport, orders: dict[str, dict[str, Any]],
                     shipments: dict[str, list[dict[str, Any]]]) -> None:
    """Every DELIVERED parcel in scope has its order DELIVERED: order_service learnt it from the bus."""
    for order_id, parcels in shipments.items():
        delivered = [s for s in parcels if s["status"] == "DELIVERED"]
        if not delivered:
            continue
        order = orders.get(order_id) or reader.get(f"/api/orders/{order_id}", missing_ok=True)
        status = order["status"] if order is not None else "missing"
        if status != "DELIVERED":
            report.add(DELIVERED_FOLLOWED, order_id, f"parcel {delivered[0]['tracking_number']} is DELIVERED but the"
                                                     f" order is {status}")


# The saga orchestrator's events are its event store's notification log (saga_orchestrator/events.py): what waits
# is the log after the position its relay published (`bus_relay_position`). The log's table is eventsourcing's:
# `sagas_events` (notification_id) on PostgreSQL, `stored_events` (rowid) on SQLite.
_LOG_END = {"postgresql": "SELECT max(notification_id) FROM sagas_events",
            "sqlite": "SELECT max(rowid) FROM stored_events"}
_RELAYED = "SELECT max(position) FROM bus_relay_position"


def _sync_url(database_url: str) -> str:
    """The service's async URL (asyncpg, aiosqlite) with the project's synchronous drivers: the check is sync."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    return url.set(drivername="postgresql+psycopg" if backend == "postgresql" else backend).render_as_string(
        hide_password=False)


def outbox_backlog(database_url: str) -> int:
    """Events a service wrote that the bus does not have yet: its outbox's rows, or for the saga orchestrator its
    notification log after its relay's position. A count, never a read of the rows (LookupError: no outbox)."""
    engine = create_engine(_sync_url(database_url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
            if outbox.name in tables:
                return int(connection.execute(select(func.count()).select_from(outbox)).scalar_one())
            if "bus_relay_position" in tables and engine.dialect.name in _LOG_END:
                end = connection.execute(text(_LOG_END[engine.dialect.name])).scalar() or 0
                relayed = connection.execute(text(_RELAYED)).scalar() or 0
                return max(0, int(end) - int(relayed))
            raise LookupError("no outbox table in this database")
    finally:
        engine.dispose()


def _check_outboxes(report: InvariantReport, databases: Mapping[str, str]) -> None:
    """Every outbox is drained: what a service wrote, the bus has (the relays keep up, the bus is there)."""
    for service, url in sorted(databases.items()):
        try:
            backlog = outbox_backlog(url)
        except Exception as exc:  # any failure: this outbox cannot be vouched for
            report.add(UNREADABLE, service, f"its outbox could not be counted: {type(exc).__name__}: {exc}"[:300])
            continue
        report.outboxes[service] = backlog
        if backlog:
            report.add(OUTBOX_DRAINED, service, f"{backlog} event(s) written but not yet published on the bus")


def _check_stock(reader: _Reader, report: InvariantReport, skus: list[str], initial_stock: dict[str, int],
                 held: Counter[str], confirmed: Counter[str], waiting: Counter[str]) -> None:
    """Stock is conserved: what is reserved is what confirmed orders hold (plus what failed compensations
    still hold, which is noted, not counted against the fleet twice)."""
    products = {p["sku"]: p for p in reader.pages("/api/inventory/products", None, {"skus": ",".join(skus)})}
    for sku in skus:
        product = products.get(sku)
        if product is None:
            report.add(STOCK_CONSERVED, sku, "product does not exist")
            continue
        on_hand, reserved, available = int(product["on_hand"]), int(product["reserved"]), int(product["available"])
        report.stock[sku] = {"on_hand": on_hand, "reserved": reserved, "available": available,
                             "confirmed": confirmed[sku]}
        if available < 0 or reserved > on_hand or available != on_hand - reserved:
            report.add(NO_OVERSELL, sku, f"on_hand {on_hand}, reserved {reserved}, available {available}")
        if reserved != held[sku]:
            report.add(STOCK_CONSERVED, sku, f"reserved {reserved} but the live allocations of orders in scope hold"
                                             f" {held[sku]}")
        if waiting[sku]:
            report.stock[sku]["held_by_failed_compensations"] = waiting[sku]
            report.notes.append(f"{sku}: {waiting[sku]} units are held by orders whose compensation failed")
        if reserved != confirmed[sku] + waiting[sku]:
            report.add(STOCK_CONSERVED, sku, f"reserved {reserved} but confirmed orders hold {confirmed[sku]}"
                       + (f" (and failed compensations {waiting[sku]})" if waiting[sku] else ""))
        if sku in initial_stock:
            initial = initial_stock[sku]
            report.stock[sku]["initial"] = initial
            if confirmed[sku] > initial:
                report.add(NO_OVERSELL, sku, f"confirmed {confirmed[sku]} of an initial stock of {initial}")
            if on_hand != initial:
                report.add(STOCK_CONSERVED, sku, f"on_hand {on_hand} differs from the initial {initial}")
            expected = initial - confirmed[sku] - waiting[sku]
            if available != expected:
                report.add(STOCK_CONSERVED, sku, f"available {available}, expected initial {initial} - confirmed"
                                                 f" {confirmed[sku]}" + (f" - held {waiting[sku]}" if waiting[sku]
                                                                          else "") + f" = {expected}")


def list_sagas(gateway_url: str, admin_token: str, *, since: datetime | None = None, status: str | None = None,
               timeout: float = 30) -> list[dict[str, Any]]:
    """Every saga created since `since` (newest first), optionally only those in one status."""
    since = _aware(since) if since is not None else None
    headers = {"Authorization": f"Bearer {admin_token}", "Accept": "application/json"}
    with httpx.Client(base_url=gateway_url.rstrip("/"), headers=headers, timeout=timeout) as client:
        return list(_Reader(client).pages(SAGAS, since, {"status": status} if status else None, window=True))


def unfinished_sagas(gateway_url: str, admin_token: str, *, since: datetime | None = None,
                     timeout: float = 30) -> list[dict[str, Any]]:
    """The sagas (created since `since`) that are not terminal yet."""
    return [s for s in list_sagas(gateway_url, admin_token, since=since, timeout=timeout)
            if s["status"] not in TERMINAL]


def wait_until_settled(gateway_url: str, admin_token: str, *, since: datetime | None = None, timeout: float = 120,
                       poll_secs: float = 0.5, on_poll: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Wait (bounded) until every saga since `since` is terminal; returns those still unfinished at the end."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            left = unfinished_sagas(gateway_url, admin_token, since=since)
        except UnreadableError:  # the orchestrator may be restarting
            left = [{"saga_id": "?", "status": "UNREADABLE"}]
        if on_poll is not None:
            on_poll(len(left))
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(poll_secs)
