"""The invariant checker itself: a fake fleet that keeps every promise passes; each broken promise is named."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from eventsourcing.domain import Aggregate

from customer_cli import invariants
from customer_cli.invariants import check_invariants
from customer_cli.processes import ROOT
from saga_orchestrator.event_store import SagaApplication, eventsourcing_env
from saga_orchestrator.models import relay_positions
from shared import events
from shared.bus import emit
from shared.db import Database
from shared.migrations import upgrade_to_head
from tests.inprocess import BACKENDS, backend_database_url

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SKU = "REL-FAKE"
ADDRESS = {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}


def _at(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


class FakeFleet:
    """The read side of the fleet, as the gateway shows it to an admin, served by an httpx MockTransport."""

    def __init__(self) -> None:
        self.sagas: list[dict[str, Any]] = []
        self.orders: dict[str, dict[str, Any]] = {}
        self.payments: list[dict[str, Any]] = []
        self.allocations: dict[str, dict[str, Any]] = {}
        self.assignments: dict[str, dict[str, Any]] = {}
        self.shipments: list[dict[str, Any]] = []
        self.products: dict[str, dict[str, Any]] = {}
        self.broken_paths: set[str] = set()

    # -- building a consistent state -----------------------------------------------------------

    def product(self, sku: str, on_hand: int, reserved: int) -> None:
        self.products[sku] = {"sku": sku, "on_hand": on_hand, "reserved": reserved, "available": on_hand - reserved,
                              "created_at": _at(0)}

    def saga(self, n: int, status: str, order_status: str | None, quantity: int = 2, price: int = 500) -> str:
        order_id = f"order-{n}"
        created = _at(n)
        self.sagas.insert(0, {"saga_id": f"saga-{n}", "status": status, "order_id": order_id if order_status else None,
                              "created_at": created, "updated_at": created})
        if order_status is None:
            return order_id
        total = quantity * price
        self.orders[order_id] = {
            "id": order_id, "status": order_status, "currency": "EUR", "total_minor": total, "created_at": created,
            "lines": [{"sku": SKU, "quantity": quantity, "unit_price_minor": price}]}
        confirmed = order_status == "CONFIRMED"
        self.payments.insert(0, {"id": f"pay-{n}", "order_id": order_id, "status": "CAPTURED" if confirmed else
                                 "REFUNDED", "amount_minor": total, "refunded_minor": 0 if confirmed else total,
                                 "currency": "EUR", "created_at": created})
        self.allocations[order_id] = {"order_id": order_id, "status": "ALLOCATED" if confirmed else "RELEASED",
                                      "lines": [{"sku": SKU, "quantity": quantity}]}
        self.assignments[order_id] = {"order_id": order_id, "carrier_code": "FAKE",
                                      "status": "ASSIGNED" if confirmed else "RELEASED"}
        self.shipments.insert(0, {"id": f"ship-{n}", "order_id": order_id, "carrier_code": "FAKE",
                                  "tracking_number": f"CS{n:012d}", "status": "CREATED" if confirmed else "CANCELLED",
                                  "created_at": created})
        return order_id

    # -- serving it ----------------------------------------------------------------------------

    @staticmethod
    def _page(items: list[dict[str, Any]], request: httpx.Request) -> httpx.Response:
        limit, offset = int(request.url.params.get("limit", 50)), int(request.url.params.get("offset", 0))
        return httpx.Response(200, json={"items": items[offset:offset + limit], "total": len(items), "limit": limit,
                                         "offset": offset})

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.headers.get("authorization") != "Bearer admin-token":
            return httpx.Response(401)
        if any(path.startswith(p) for p in self.broken_paths):
            return httpx.Response(503, json={"title": "unavailable"})
        found: dict[str, Any] | None
        if path == "/api/customer-orders":
            # The saga list's created-time window, as the real API applies it (after inclusive).
            after = request.url.params.get("created_after")
            sagas = [s for s in self.sagas if after is None
                     or datetime.fromisoformat(s["created_at"]) >= datetime.fromisoformat(after)]
            return self._page(sagas, request)
        if path == "/api/orders":
            return self._page(sorted(self.orders.values(), key=lambda o: o["created_at"], reverse=True), request)
        if path.startswith("/api/orders/"):
            found = self.orders.get(path.rsplit("/", 1)[1])
        elif path == "/api/payments":
            return self._page(self.payments, request)
        elif path == "/api/shipments":
            return self._page(self.shipments, request)
        elif path == "/api/inventory/products":
            wanted = request.url.params["skus"].split(",")
            return self._page([p for sku, p in sorted(self.products.items()) if sku in wanted], request)
        elif path.startswith("/api/inventory/allocations/"):
            found = self.allocations.get(path.rsplit("/", 1)[1])
        elif path.startswith("/api/carriers/assignments/"):
            found = self.assignments.get(path.rsplit("/", 1)[1])
        else:
            return httpx.Response(404)
        return httpx.Response(200, json=found) if found is not None else httpx.Response(404)

    def check(self, **kwargs: Any) -> invariants.InvariantReport:
        return check_invariants("http://gateway.test", "admin-token", transport=httpx.MockTransport(self.handle),
                                skus=[SKU], initial_stock={SKU: 10}, **kwargs)


def consistent_fleet() -> FakeFleet:
    """Two confirmed orders of 2 units, one cancelled order, a refusal before any order: 10 units, 4 held."""
    fleet = FakeFleet()
    fleet.saga(1, "COMPLETED", "CONFIRMED")
    fleet.saga(2, "COMPENSATED", "CANCELLED")
    fleet.saga(3, "COMPLETED", "CONFIRMED")
    fleet.saga(4, "COMPENSATED", None)
    fleet.product(SKU, on_hand=10, reserved=4)
    return fleet


def test_a_consistent_fleet_passes() -> None:
    report = consistent_fleet().check()
    assert report.ok, report.render()
    assert report.counts["sagas"] == 4 and report.counts["orders:CONFIRMED"] == 2
    assert report.counts["orders:CANCELLED"] == 1
    assert report.stock[SKU] == {"on_hand": 10, "reserved": 4, "available": 6, "confirmed": 4, "initial": 10}
    text = report.render()
    assert "OK" in text and "COMPLETED 2" in text and f"stock {SKU}" in text


def _payment(fleet: FakeFleet, order_id: str) -> dict[str, Any]:
    return next(p for p in fleet.payments if p["order_id"] == order_id)


def _shipment(fleet: FakeFleet, order_id: str) -> dict[str, Any]:
    return next(s for s in fleet.shipments if s["order_id"] == order_id)


def _charged_twice(f: FakeFleet) -> None:
    f.payments.append({**_payment(f, "order-1"), "id": "pay-again"})


def _second_shipment(f: FakeFleet) -> None:
    f.shipments.append({**_shipment(f, "order-3"), "id": "ship-again", "tracking_number": "CS999"})


def _cancelled_but_holding(f: FakeFleet) -> None:
    f.allocations["order-2"]["status"] = "ALLOCATED"
    f.product(SKU, on_hand=10, reserved=6)


def _stock_vanished(f: FakeFleet) -> None:
    f.product(SKU, on_hand=9, reserved=4)


def _oversold(f: FakeFleet) -> None:
    f.product(SKU, on_hand=10, reserved=12)


def _shared_order(f: FakeFleet) -> None:
    f.sagas.insert(0, {**f.sagas[-1], "saga_id": "saga-dup", "order_id": "order-1"})


def _delivered_but_shipped(f: FakeFleet) -> None:
    _shipment(f, "order-3").update(status="DELIVERED")
    f.orders["order-3"]["status"] = "SHIPPED"  # the delivery's event never reached order_service


# Each way a promise can break, and the rule that must name it.
BREAKAGES: dict[str, tuple[Callable[[FakeFleet], object], str]] = {
    "saga still running": (lambda f: f.sagas[0].update(status="RUNNING"), invariants.SAGA_NOT_TERMINAL),
    "completed saga, pending order": (lambda f: f.orders["order-1"].update(status="PENDING"), invariants.ORDER_STATE),
    "compensated saga, confirmed order": (lambda f: f.orders["order-2"].update(status="CONFIRMED"),
                                          invariants.ORDER_STATE),
    "saga's order missing": (lambda f: f.orders.pop("order-3"), invariants.ORDER_STATE),
    "confirmed, never charged": (lambda f: f.payments.remove(_payment(f, "order-1")), invariants.CHARGED_ONCE),
    "confirmed, charged twice": (_charged_twice, invariants.CHARGED_ONCE),
    "confirmed, charged the wrong amount": (lambda f: _payment(f, "order-1").update(amount_minor=999),
                                            invariants.CHARGED_ONCE),
    "confirmed, refunded": (lambda f: _payment(f, "order-3").update(refunded_minor=1000, status="REFUNDED"),
                            invariants.CHARGED_ONCE),
    "confirmed, stock released": (lambda f: f.allocations["order-1"].update(status="RELEASED"),
                                  invariants.STOCK_ALLOCATED),
    "confirmed, allocated the wrong lines": (lambda f: f.allocations["order-1"].update(
        lines=[{"sku": SKU, "quantity": 1}]), invariants.STOCK_ALLOCATED),
    "confirmed, no carrier": (lambda f: f.assignments.pop("order-3"), invariants.CARRIER_ASSIGNED),
    "confirmed, no shipment": (lambda f: _shipment(f, "order-1").update(status="CANCELLED"), invariants.SHIPPED_ONCE),
    "confirmed, two shipments": (_second_shipment, invariants.SHIPPED_ONCE),
    "cancelled, not refunded": (lambda f: _payment(f, "order-2").update(refunded_minor=0, status="CAPTURED"),
                                invariants.NO_NET_CHARGE),
    "cancelled, still holding stock": (_cancelled_but_holding, invariants.NO_HELD_STOCK),
    "cancelled, carrier still assigned": (lambda f: f.assignments["order-2"].update(status="ASSIGNED"),
                                          invariants.NO_LIVE_ASSIGNMENT),
    "cancelled, shipment live": (lambda f: _shipment(f, "order-2").update(status="CREATED"),
                                 invariants.NO_LIVE_SHIPMENT),
    "two sagas, one order": (_shared_order, invariants.ONE_ORDER_PER_SAGA),
    "stock vanished": (_stock_vanished, invariants.STOCK_CONSERVED),
    "stock held by nobody": (lambda f: f.product(SKU, on_hand=10, reserved=5), invariants.STOCK_CONSERVED),
    "oversold": (_oversold, invariants.NO_OVERSELL),
    "payments unreadable": (lambda f: f.broken_paths.add("/api/payments"), invariants.UNREADABLE),
    "delivered parcel, order only confirmed": (lambda f: _shipment(f, "order-1").update(status="DELIVERED"),
                                               invariants.DELIVERED_FOLLOWED),
    "delivered parcel, order shipped": (_delivered_but_shipped, invariants.DELIVERED_FOLLOWED),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_each_broken_promise_is_reported(breakage: str) -> None:
    fleet = consistent_fleet()
    breaking, rule = BREAKAGES[breakage]
    breaking(fleet)
    report = fleet.check()
    assert not report.ok
    assert rule in report.by_rule(), report.render()
    assert rule in report.render()


def test_compensation_failed_is_visible_and_refusable() -> None:
    fleet = consistent_fleet()
    fleet.sagas[0]["status"] = "COMPENSATION_FAILED"
    lenient = fleet.check()
    assert lenient.ok and lenient.counts["saga:COMPENSATION_FAILED"] == 1
    assert any("operator" in note for note in lenient.notes)
    strict = fleet.check(allow_compensation_failed=False)
    assert strict.by_rule() == {invariants.COMPENSATION_FAILED: 1}


def test_stock_held_by_a_failed_compensation_is_noted_not_counted_twice() -> None:
    fleet = consistent_fleet()
    next(s for s in fleet.sagas if s["saga_id"] == "saga-2")["status"] = "COMPENSATION_FAILED"
    fleet.allocations["order-2"]["status"] = "ALLOCATED"  # its release is what failed
    fleet.product(SKU, on_hand=10, reserved=6)
    lenient = fleet.check()
    assert lenient.ok, lenient.render()
    assert lenient.stock[SKU]["held_by_failed_compensations"] == 2
    assert any("compensation failed" in note for note in lenient.notes)
    assert fleet.check(allow_compensation_failed=False).by_rule() == {invariants.COMPENSATION_FAILED: 1}


def test_since_scopes_the_check() -> None:
    fleet = consistent_fleet()
    fleet.sagas[-1]["status"] = "RUNNING"  # saga-1, the oldest
    fleet.product(SKU, on_hand=10, reserved=2)  # what the orders in scope hold
    report = check_invariants("http://gateway.test", "admin-token", transport=httpx.MockTransport(fleet.handle),
                              skus=[SKU], since=T0 + timedelta(seconds=2))
    assert report.ok, report.render()
    assert report.counts["sagas"] == 3


def test_stray_money_is_noted() -> None:
    fleet = consistent_fleet()
    stray = copy.deepcopy(_payment(fleet, "order-1"))
    fleet.payments.insert(0, {**stray, "id": "pay-stray", "order_id": "order-nobody"})
    report = fleet.check()
    assert report.ok and any("order-nobody" in note for note in report.notes)


def test_a_shipped_or_delivered_order_keeps_its_completed_sagas_promises() -> None:
    fleet = consistent_fleet()
    _shipment(fleet, "order-1").update(status="DELIVERED")
    fleet.orders["order-1"]["status"] = "DELIVERED"
    _shipment(fleet, "order-3").update(status="IN_TRANSIT")
    fleet.orders["order-3"]["status"] = "SHIPPED"
    report = fleet.check()
    assert report.ok, report.render()
    assert report.counts["orders:DELIVERED"] == 1 and report.counts["orders:SHIPPED"] == 1
    assert report.stock[SKU]["confirmed"] == 4  # their stock is still theirs
    assert "1 shipped, 1 delivered" in report.render()


def test_a_delivered_parcel_whose_order_is_confirmed_is_named() -> None:
    fleet = consistent_fleet()
    _shipment(fleet, "order-1").update(status="DELIVERED")
    [violation] = fleet.check().violated(invariants.DELIVERED_FOLLOWED)
    assert violation.subject == "order-1"
    assert "CS000000000001 is DELIVERED but the order is CONFIRMED" in violation.message


# -- outboxes: the services' own databases, migrated as the services migrate them ---------------------------------


async def _migrated(package: str, backend: str) -> str:
    url = backend_database_url(backend, f"cs_unit_invariants_{package}")
    await asyncio.to_thread(upgrade_to_head, ROOT / package, url)
    return url


async def _emit(url: str, count: int) -> None:
    """`count` events written as a service writes them (in a transaction, into its outbox), never relayed."""
    db = Database(url)
    try:
        async with db.transaction() as tx:
            for n in range(count):
                await emit(tx, events.OrderCancelled(order_id=f"order-{n}", reason="test"), subject=f"order-{n}",
                           order_id=f"order-{n}")
    finally:
        await db.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_non_empty_outbox_is_reported_with_its_service_and_count(backend: str) -> None:
    drained, waiting = await _migrated("order_service", backend), await _migrated("payment_service", backend)
    await _emit(waiting, 3)
    report = consistent_fleet().check(databases={"order_service": drained, "payment_service": waiting})
    assert report.by_rule() == {invariants.OUTBOX_DRAINED: 1}, report.render()
    [violation] = report.violated(invariants.OUTBOX_DRAINED)
    assert violation.subject == "payment_service" and violation.message.startswith("3 event(s)")
    assert report.outboxes == {"order_service": 0, "payment_service": 3}
    assert "outboxes (events not yet on the bus): order_service 0, payment_service 3" in report.render()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_orchestrators_outbox_is_its_log_after_the_relays_position(backend: str) -> None:
    url = await _migrated("saga_orchestrator", backend)
    store = SagaApplication(env=eventsourcing_env(url))  # its tables, as the orchestrator opens them
    try:
        for _ in range(3):
            store.save(Aggregate())
        last = store.recorder.max_notification_id() or 0
    finally:
        store.close()
    assert invariants.outbox_backlog(url) == 3  # nothing relayed yet
    db = Database(url)
    try:
        async with db.transaction() as tx:
            await tx.execute(relay_positions.insert().values(relay="sagas", position=last - 1))
    finally:
        await db.dispose()
    assert invariants.outbox_backlog(url) == 1
    report = consistent_fleet().check(databases={"saga_orchestrator": url})
    assert report.by_rule() == {invariants.OUTBOX_DRAINED: 1} and report.outboxes == {"saga_orchestrator": 1}


def test_a_database_without_an_outbox_is_unreadable_not_drained(tmp_path: Path) -> None:
    report = consistent_fleet().check(databases={"order_service": f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"})
    assert report.by_rule() == {invariants.UNREADABLE: 1}
    assert report.violated(invariants.UNREADABLE)[0].subject == "order_service"
