"""Load: far more demand than supply, all at once, through the gateway — nothing oversold, nothing lost, no 500."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from tests.fleet import ServiceProcess
from tests.reliability.conftest import SCALE, Admin, Shoppers, say
from tests.reliability.drive import order_bodies, run_load, settle_and_check

pytestmark = pytest.mark.integration


def test_scarce_stock_under_concurrent_orders(chaos_orchestrator: ServiceProcess, gateway_url: str,
                                              rel_admin: Admin, shoppers: Shoppers,
                                              new_product: Callable[[int], str], rng: random.Random) -> None:
    orders, concurrency, units = 150 * SCALE, 30, 40 * SCALE
    sku = new_product(units)
    # Some cards decline after stock was allocated (their stock must come back), some fail twice first, and some
    # orders go where no carrier does (refused after the charge: refunded, stock back).
    bodies = order_bodies(orders, sku, rng=rng, declined_share=0.1, flaky_share=0.1, unshippable_share=0.1)
    say(f"tried: {orders} orders for {units} units of {sku}, {concurrency} at a time")

    run = run_load(gateway_url, shoppers.tokens, bodies, concurrency)
    say(f"placed: {run.summary()}")
    assert not run.server_errors(), run.server_errors()[:5]
    assert set(run.statuses()) == {202}, run.summary()
    assert len(set(run.saga_ids)) == orders

    report = settle_and_check(gateway_url, rel_admin.token, run, initial_stock={sku: units})
    say(f"found: {report.render()}")
    assert report.ok, report.render()
    # Demand exceeds supply many times over: some sold, never more than there was, every other order refused.
    sold = report.stock[sku]["confirmed"]
    assert 0 < sold <= units
    assert report.counts["saga:COMPLETED"] == sold and report.counts["saga:COMPENSATED"] == orders - sold
