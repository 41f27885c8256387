"""The orchestrator's catalogue lookup from a bounded-staleness cache (saga_orchestrator/catalogue.py).

No HTTP and no sleeping: a scripted inventory that records what it was asked, and a clock the test moves.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from saga_orchestrator.catalogue import Catalogue
from saga_orchestrator.settings import Settings
from saga_orchestrator.step_client import CallResult, Request
from shared.errors import InvalidRequest, ServiceUnavailable
from tests.clock import Clock
from tests.saga_orchestrator.fakes import CATALOGUE, call_result, ok, refused, transient

TRACE = {"request_id": "req-1"}


class Inventory:
    """Answers `GET /api/inventory/products?skus=...` from a product table; records each lookup's SKUs."""

    def __init__(self) -> None:
        self.products: dict[str, dict[str, Any]] = {sku: dict(p) for sku, p in CATALOGUE.items()}
        self.asked: list[list[str]] = []
        self.answer: CallResult | None = None  # overrides the answer (refused, unavailable)

    async def call(self, request: Request, trace: dict[str, str], deadline_secs: float) -> CallResult:
        assert (request.app, request.method, request.path, request.label) == (
            "INVENTORY-SERVICE", "GET", "/api/inventory/products", "catalogue")
        skus = (request.params or {})["skus"].split(",")
        self.asked.append(skus)
        if self.answer is not None:
            return self.answer
        return call_result(ok({"items": [dict(self.products[s]) for s in skus if s in self.products]}))


# 0: a machine booted a moment ago.
@pytest.fixture(params=[0.0, 1_000_000.0], ids=["just-booted", "up-for-weeks"])
def clock(request: pytest.FixtureRequest) -> Clock:
    return Clock(request.param)


async def test_a_fresh_product_is_not_asked_for_again(clock: Clock) -> None:
    inventory, catalogue = Inventory(), Catalogue(2.0, clock)
    first = await catalogue.products(inventory, ["KB-1"], TRACE, 5)
    clock.now += 2.0
    second = await catalogue.products(inventory, ["KB-1"], TRACE, 5)
    assert first == second == {"KB-1": CATALOGUE["KB-1"]}
    assert inventory.asked == [["KB-1"]]


async def test_a_product_older_than_the_bound_is_asked_for_again(clock: Clock) -> None:
    inventory, catalogue = Inventory(), Catalogue(2.0, clock)
    await catalogue.products(inventory, ["KB-1"], TRACE, 5)
    inventory.products["KB-1"]["unit_price_minor"] = 9999
    clock.now += 2.001
    again = await catalogue.products(inventory, ["KB-1"], TRACE, 5)
    assert again["KB-1"]["unit_price_minor"] == 9999
    assert inventory.asked == [["KB-1"], ["KB-1"]]


async def test_the_age_counts_from_when_inventory_was_asked(clock: Clock) -> None:
    """An answer that took a while to come is as old as the question, not as the answer."""
    inventory, catalogue = Inventory(), Catalogue(2.0, clock)
    slow = inventory.call

    async def answer_late(*args: Any, **kwargs: Any) -> CallResult:
        result = await slow(*args, **kwargs)
        clock.now += 1.5
        return result

    inventory.call = answer_late  # type: ignore[method-assign]
    await catalogue.products(inventory, ["KB-1"], TRACE, 5)
    clock.now += 0.6  # 2.1 s after the question, 0.6 s after the answer
    await catalogue.products(inventory, ["KB-1"], TRACE, 5)
    assert len(inventory.asked) == 2


async def test_an_unknown_sku_is_asked_for_every_time_and_only_the_misses_are_asked(clock: Clock) -> None:
    inventory, catalogue = Inventory(), Catalogue(2.0, clock)
    await catalogue.products(inventory, ["KB-1"], TRACE, 5)
    found = await catalogue.products(inventory, ["KB-1", "NEW-1"], TRACE, 5)
    assert found == {"KB-1": CATALOGUE["KB-1"]}  # NEW-1 is unknown: absent, so placeCustomerOrder refuses it
    inventory.products["NEW-1"] = {"sku": "NEW-1", "unit_price_minor": 5, "currency": "EUR", "weight_grams": 1}
    found = await catalogue.products(inventory, ["KB-1", "NEW-1"], TRACE, 5)  # created meanwhile: known at once
    assert set(found) == {"KB-1", "NEW-1"}
    assert inventory.asked == [["KB-1"], ["NEW-1"], ["NEW-1"]]


async def test_zero_turns_the_cache_off(clock: Clock) -> None:
    inventory, catalogue = Inventory(), Catalogue(0, clock)
    for _ in range(3):
        assert await catalogue.products(inventory, ["KB-1", "MS-1"], TRACE, 5) == {
            "KB-1": CATALOGUE["KB-1"], "MS-1": CATALOGUE["MS-1"]}
    assert inventory.asked == [["KB-1", "MS-1"]] * 3


async def test_a_miss_while_inventory_is_away_or_refusing_is_an_error(clock: Clock) -> None:
    inventory, catalogue = Inventory(), Catalogue(2.0, clock)
    await catalogue.products(inventory, ["KB-1"], TRACE, 5)
    inventory.answer = call_result(transient())
    with pytest.raises(ServiceUnavailable):
        await catalogue.products(inventory, ["KB-1", "MS-1"], TRACE, 5)
    inventory.answer = call_result(refused(422, "bad skus"))
    with pytest.raises(InvalidRequest):
        await catalogue.products(inventory, ["MS-1"], TRACE, 5)
    # A failed lookup kept nothing: MS-1 is asked for again once inventory answers.
    inventory.answer = None
    assert await catalogue.products(inventory, ["MS-1"], TRACE, 5) == {"MS-1": CATALOGUE["MS-1"]}
    assert inventory.asked[-1] == ["MS-1"]


@pytest.mark.parametrize("secs", [-1, 2.5])
def test_the_bound_is_zero_to_two_seconds(secs: float) -> None:
    with pytest.raises(ValidationError):
        Settings(catalogue_cache_secs=secs, eureka_server_url="")
    with pytest.raises(ValueError):
        Catalogue(secs)


def test_the_default_is_two_seconds() -> None:
    assert Settings(eureka_server_url="").catalogue_cache_secs == 2.0
