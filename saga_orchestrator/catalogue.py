"""INVENTORY-SERVICE's catalogue as placeCustomerOrder prices it: products by SKU, from a bounded-staleness cache.

A product that inventory listed is kept for at most `max_age_secs` (CATALOGUE_CACHE_SECS, at most 2 s, 0 = no
cache), counted from when the listing was asked for, so an answer is never older than that. Only what inventory
listed is kept: an SKU it did not list (unknown, or not yet created) is asked for again every time, so an unknown
SKU is always refused by the catalogue's current answer, and a cache miss always asks inventory. One lookup asks
only for the SKUs that are not fresh in the cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from saga_orchestrator.step_client import CallResult, Request
from saga_orchestrator.steps import INVENTORY
from shared.errors import InvalidRequest, ServiceUnavailable

MAX_AGE_SECS = 2.0  # the bound of CATALOGUE_CACHE_SECS
MAX_ENTRIES = 10_000  # past this, expired entries are dropped (and all of them, if none had expired)
PAGE_LIMIT = "500"


class Caller(Protocol):
    """What the cache needs of `StepClient`."""

    async def call(self, request: Request, trace: dict[str, str], deadline_secs: float) -> CallResult: ...


class Catalogue:
    def __init__(self, max_age_secs: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 <= max_age_secs <= MAX_AGE_SECS:
            raise ValueError(f"the catalogue cache keeps products 0 to {MAX_AGE_SECS} s, not {max_age_secs}")
        self.max_age_secs = max_age_secs
        self.clock = clock
        self._products: dict[str, tuple[float, dict[str, Any]]] = {}  # sku → (when asked for, product)

    async def products(self, client: Caller, skus: Iterable[str], trace: dict[str, str],
                       deadline_secs: float) -> dict[str, Any]:
        """The products of these SKUs that the catalogue knows (an SKU it does not know is absent), asked of
        inventory through `client` (the orchestrator's step client) for those not fresh in the cache.

        InvalidRequest when inventory refuses the lookup; ServiceUnavailable when it cannot answer.
        """
        wanted = list(dict.fromkeys(skus))
        now = self.clock()
        found: dict[str, Any] = {}
        missing: list[str] = []
        for sku in wanted:
            entry = self._products.get(sku) if self.max_age_secs else None
            if entry is not None and now - entry[0] <= self.max_age_secs:
                found[sku] = entry[1]
            else:
                missing.append(sku)
        if not missing:
            return found
        asked_at = self.clock()
        result = await client.call(Request(INVENTORY, "GET", "/api/inventory/products", label="catalogue", params={
            "skus": ",".join(missing), "limit": PAGE_LIMIT}), trace, deadline_secs)
        if result.refused:
            raise InvalidRequest(f"The catalogue refused the SKUs: {result.error}.")
        if not result.ok or not isinstance(result.body, dict):
            raise ServiceUnavailable("The product catalogue is unavailable; try again.", service=INVENTORY)
        listed = {p["sku"]: p for p in result.body.get("items", []) if isinstance(p, dict) and "sku" in p}
        for sku in missing:
            if sku in listed:
                found[sku] = listed[sku]
                if self.max_age_secs:
                    self._keep(sku, asked_at, listed[sku])
        return found

    def _keep(self, sku: str, asked_at: float, product: dict[str, Any]) -> None:
        if len(self._products) >= MAX_ENTRIES:
            now = self.clock()
            self._products = {k: v for k, v in self._products.items() if now - v[0] <= self.max_age_secs}
            if len(self._products) >= MAX_ENTRIES:
                self._products.clear()
        self._products[sku] = (asked_at, product)
