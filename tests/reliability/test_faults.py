"""Faults while orders flow: a participant killed, the orchestrator SIGKILLed, a participant too slow, the database
cutting every connection. After the dust settles every saga is terminal and every invariant holds.

Every test restores what it broke (restarts what it killed, clears its faults) before it checks.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import psycopg
import pytest

from customer_cli.invariants import wait_until_settled
from tests.fleet import DB_PREFIX, DB_SUFFIX, PG_ADMIN_DSN, POSTGRES, Fleet, ServiceProcess
from tests.reliability.conftest import SCALE, Admin, Shoppers, say, wait_gateway_routes
from tests.reliability.drive import order_bodies, run_load, running_load, settle_and_check

pytestmark = pytest.mark.integration


def _assert_clean(run_summary: str, report_ok: bool, rendered: str) -> None:
    say(f"placed: {run_summary}")
    say(f"found: {rendered.splitlines()[0]}")
    assert report_ok, rendered


@pytest.mark.parametrize("victim", ["inventory_service", "payment_service"])
def test_a_participant_killed_mid_load(chaos_orchestrator: ServiceProcess, fleet: Fleet, gateway_url: str,
                                       rel_admin: Admin, shoppers: Shoppers, new_product: Callable[[int], str],
                                       rng: random.Random, victim: str) -> None:
    orders, units = 40 * SCALE, 25 * SCALE
    sku = new_product(units)
    bodies = order_bodies(orders, sku, rng=rng, declined_share=0.1, unshippable_share=0.1)
    say(f"tried: {orders} orders for {units} units; SIGKILL {victim} after {orders // 3} were placed,"
          " restart it 1 s later")
    with running_load(gateway_url, shoppers.tokens, bodies, concurrency=10) as run:
        run.wait_placed(orders // 3)
        fleet.processes[victim].kill()
        time.sleep(1)
        fleet.restart(victim)
    assert not run.server_errors(), run.server_errors()[:5]
    report = settle_and_check(gateway_url, rel_admin.token, run, initial_stock={sku: units})
    _assert_clean(run.summary(), report.ok, report.render())
    assert len(set(run.saga_ids)) == orders


def test_the_orchestrator_sigkilled_at_random_moments(chaos_orchestrator: ServiceProcess, fleet: Fleet,
                                                      gateway_url: str, rel_admin: Admin, shoppers: Shoppers,
                                                      new_product: Callable[[int], str], rng: random.Random) -> None:
    orders, units, kills = 60 * SCALE, 40 * SCALE, 3 * SCALE
    sku = new_product(units)
    bodies = order_bodies(orders, sku, rng=rng, declined_share=0.1, flaky_share=0.2, unshippable_share=0.1)
    moments = sorted(rng.uniform(0.05, 0.9) for _ in range(kills))
    say(f"tried: {orders} orders for {units} units; SIGKILL the orchestrator {kills} times, after"
          f" {[round(m * orders) for m in moments]} orders were placed")
    with running_load(gateway_url, shoppers.tokens, bodies, concurrency=10) as run:
        for moment in moments:
            run.wait_placed(round(moment * orders))
            time.sleep(rng.uniform(0, 0.5))  # somewhere inside a step, a save, a lease renewal
            fleet.processes["saga_orchestrator"].kill()
            fleet.restart("saga_orchestrator")
    wait_gateway_routes(gateway_url, rel_admin.token)
    assert not run.server_errors(), run.server_errors()[:5]
    # Clients whose request died with the orchestrator retried with the same key: still one saga per order.
    assert {p.status for p in run.placements} <= {200, 202}, run.summary()
    assert len(set(run.saga_ids)) == orders
    report = settle_and_check(gateway_url, rel_admin.token, run, initial_stock={sku: units})
    _assert_clean(run.summary(), report.ok, report.render())
    assert report.counts["sagas"] == orders


# The step made slow, by the path its action takes (compensations take other paths or methods, so they pass).
SLOW_STEPS = {
    "create_order": ("order_service", "POST", r"^/api/orders$"),
    "add_order_lines": ("order_service", "POST", r"^/api/orders/[^/]+/lines$"),
    "allocate_inventory": ("inventory_service", "POST", r"^/api/inventory/allocations$"),
    "make_payment": ("payment_service", "POST", r"^/api/payments$"),
    "assign_carrier": ("carrier_service", "POST", r"^/api/carriers/assignments$"),
    "create_shipment": ("shipment_service", "POST", r"^/api/shipments$"),
    "confirm_order": ("order_service", "POST", r"/confirm$"),
}
DELAY_MS = 4000  # beyond the 3 s step deadline: every attempt times out
# CI slows one step whose compensation fences late calls itself and one that the saga replays first; the long run
# (RELIABILITY_SCALE > 1) slows every step.
SLOW_IN_CI = ["make_payment", "assign_carrier"]


@pytest.mark.parametrize("step", list(SLOW_STEPS) if SCALE > 1 else SLOW_IN_CI)
def test_a_participant_slower_than_the_step_deadline(chaos_orchestrator: ServiceProcess, fleet: Fleet,
                                                     gateway_url: str, rel_admin: Admin, shoppers: Shoppers,
                                                     new_product: Callable[[int], str], rng: random.Random,
                                                     faults: Callable[..., None], step: str) -> None:
    orders, units = 4 * SCALE, 3 * SCALE
    sku = new_product(units)
    name, method, path = SLOW_STEPS[step]
    faults(name, path, method=method, status=0, count=-1, delay_ms=DELAY_MS)
    say(f"tried: {orders} orders while {name} answers {method} {path} after {DELAY_MS} ms")
    run = run_load(gateway_url, shoppers.tokens, order_bodies(orders, sku, rng=rng), concurrency=orders)
    assert not run.server_errors(), run.server_errors()[:5]
    assert set(run.statuses()) == {202}, run.summary()
    # While the service stays slow, sagas end compensated, or visibly waiting for an operator when even
    # their compensation cannot learn what the slow step did.
    left = wait_until_settled(gateway_url, rel_admin.token, since=run.started_at, timeout=90)
    assert not left, left
    fleet.processes[name].clear_faults()  # the operator fixes the service first
    # The attempts the orchestrator gave up on may still arrive, late: let them land, then look.
    time.sleep(DELAY_MS / 1000 + 1)
    report = settle_and_check(gateway_url, rel_admin.token, run, initial_stock={sku: units})
    _assert_clean(run.summary(), report.ok, report.render())
    if step != "confirm_order":  # the finish may be waited for; every other step fails and is compensated
        assert report.counts["saga:COMPENSATED"] == orders, report.render()


# A participant slow in its database: a lock that holds back the step's write (inserts, updates) but not the
# reads of its compensation, the way a busy table would. The step's call times out, its compensation finds
# nothing to undo, then the lock goes and the step's transaction commits: late, after the compensation.
SLOW_WRITES = {
    "allocate_inventory": ("inventory_service", "LOCK TABLE allocation_lines IN SHARE MODE"),
    "make_payment": ("payment_service", "LOCK TABLE payments IN SHARE MODE"),
    "assign_carrier": ("carrier_service", "LOCK TABLE carrier_assignments IN SHARE MODE"),
    "create_shipment": ("shipment_service", "LOCK TABLE shipments IN SHARE MODE"),
    # The finish: lock the rows of orders that are priced and pending, i.e. on their way to confirm.
    "confirm_order": ("order_service", "SELECT o.id FROM orders o WHERE o.status = 'PENDING'"
                                       " AND o.customer_id = ANY(%(customers)s) AND EXISTS (SELECT 1 FROM order_lines"
                                       " l WHERE l.order_id = o.id) FOR UPDATE OF o SKIP LOCKED"),
}
LOCK_SECS = 5.0  # beyond the 3 s step deadline


def _service_dsn(package: str) -> str:
    return POSTGRES.dsn(f"{DB_PREFIX}_{package}")


def _hold_lock(dsn: str, statement: str, params: dict[str, object], seconds: float, held: threading.Event,
               errors: list[BaseException]) -> None:
    """Run `statement` in one transaction, again and again (new rows get locked too), for `seconds`; roll back."""
    try:
        with psycopg.connect(dsn) as conn:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                conn.execute(statement, params)
                held.set()
                time.sleep(0.05)
            conn.rollback()
    except BaseException as exc:
        errors.append(exc)
        raise
    finally:
        held.set()


@pytest.mark.parametrize("step", list(SLOW_WRITES))
def test_a_participant_slow_in_its_database(chaos_orchestrator: ServiceProcess, fleet: Fleet, gateway_url: str,
                                            rel_admin: Admin, shoppers: Shoppers, new_product: Callable[[int], str],
                                            rng: random.Random, step: str) -> None:
    orders, units = 4 * SCALE, 3 * SCALE
    sku = new_product(units)
    package, statement = SLOW_WRITES[step]
    customers = [user.user_id for user in shoppers.users]
    say(f"tried: {orders} orders while {package} holds `{statement[:60]}...` for {LOCK_SECS} s")
    held, errors = threading.Event(), list[BaseException]()
    locker = threading.Thread(target=_hold_lock, args=(_service_dsn(package), statement,
                                                       {"customers": customers}, LOCK_SECS, held, errors))
    locker.start()
    try:
        assert held.wait(10) and not errors, errors
        run = run_load(gateway_url, shoppers.tokens, order_bodies(orders, sku, rng=rng), concurrency=orders)
    finally:
        locker.join()
    assert not errors, errors
    assert not run.server_errors(), run.server_errors()[:5]
    assert set(run.statuses()) == {202}, run.summary()
    report = settle_and_check(gateway_url, rel_admin.token, run, initial_stock={sku: units})
    _assert_clean(run.summary(), report.ok, report.render())


def _drop_connections(prefix: str) -> int:
    like = prefix.replace("_", r"\_") + r"\_%" + DB_SUFFIX.replace("_", r"\_")
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname LIKE %s AND pid <> pg_backend_pid()", (like,)).fetchall()
    return len(rows)


def test_database_connections_dropped_mid_load(chaos_orchestrator: ServiceProcess, fleet: Fleet, gateway_url: str,
                                               rel_admin: Admin, shoppers: Shoppers,
                                               new_product: Callable[[int], str], rng: random.Random) -> None:
    orders, units, drops = 60 * SCALE, 40 * SCALE, 3 * SCALE
    sku = new_product(units)
    bodies = order_bodies(orders, sku, rng=rng, declined_share=0.1)
    say(f"tried: {orders} orders for {units} units; every connection to {DB_PREFIX}_* terminated"
          f" {drops} times")
    dropped: list[int] = []
    with running_load(gateway_url, shoppers.tokens, bodies, concurrency=10) as run:
        for i in range(drops):
            run.wait_placed(round((i + 1) * orders / (drops + 1)))
            dropped.append(_drop_connections(DB_PREFIX))
    say(f"connections terminated: {dropped}")
    assert sum(dropped) > 0
    report = settle_and_check(gateway_url, rel_admin.token, run, initial_stock={sku: units})
    _assert_clean(run.summary(), report.ok, report.render())
    assert not run.server_errors(), run.server_errors()[:5]
    assert len(set(run.saga_ids)) == orders
