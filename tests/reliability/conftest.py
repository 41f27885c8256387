"""Fixtures of the reliability suite: the session's fleet with an orchestrator on short deadlines, stock, faults.

Sizes scale with RELIABILITY_SCALE (1 in CI; `make reliability` runs 10): orders, kills, examples.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.conftest import User, login, register_customer
from tests.fleet import ADMIN_EMAIL, ADMIN_PASSWORD, Fleet, ServiceProcess

SCALE = max(1, int(os.environ.get("RELIABILITY_SCALE", "1")))
# CI (scale 1) replays one fixed seed, so that a red run is the code's doing; the long run explores (it prints
# its seed: RELIABILITY_SEED=<seed> replays it).
SEED = int(os.environ.get("RELIABILITY_SEED") or (random.randrange(1_000_000) if SCALE > 1 else 20261126))
# Short deadlines, so that a slow or dead participant fails a step within seconds; compensations keep trying
# long enough for a killed service to come back.
SAGA_ENV = {
    "STEP_DEADLINE_SECS": "3",
    "STEP_ATTEMPT_TIMEOUT_SECS": "2",
    "COMPENSATION_DEADLINE_SECS": "10",
    "RETRY_INITIAL_SECS": "0.05",
    "RETRY_MAX_SECS": "0.5",
    "LEASE_SECS": "4",
    "RECOVERY_INTERVAL_SECS": "1",
}


JOURNAL: list[str] = []


def pytest_report_header() -> str:
    return f"reliability: RELIABILITY_SCALE={SCALE} RELIABILITY_SEED={SEED}"


def say(text: str) -> None:
    """What a test tried or found: printed (seen with -s) and repeated in the summary at the end of the run."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0].rsplit("::", 1)[-1]
    print(f"\n{text}")
    JOURNAL.append(f"{test}: {text}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if JOURNAL:
        terminalreporter.section(f"reliability (RELIABILITY_SCALE={SCALE}, RELIABILITY_SEED={SEED}):"
                                 " what was tried and found")
        for line in JOURNAL:
            terminalreporter.write_line(line)


@pytest.fixture
def rng() -> random.Random:
    return random.Random(SEED)


def wait_gateway_routes(gateway_url: str, token: str, timeout: float = 30) -> None:
    """Until the gateway reaches a saga orchestrator again (its registry copy refreshes every second)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=gateway_url, timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                if client.get("/api/customer-orders", params={"limit": 1},
                              headers={"Authorization": f"Bearer {token}"}).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise TimeoutError("the gateway does not reach SAGA-ORCHESTRATOR")


@dataclass
class Renewal:
    """When access tokens are renewed: at first use, then every `every_secs` (they live 15 minutes; a long run,
    RELIABILITY_SCALE=10, outlives several). "Never renewed" is None, not 0.0: time.monotonic() counts from boot,
    so on a machine booted less than `every_secs` ago a 0.0 would look like a renewal that just happened."""

    clock: Callable[[], float] = time.monotonic
    every_secs: float = 600
    renewed_at: float | None = None

    def due(self) -> bool:
        return self.renewed_at is None or self.clock() - self.renewed_at > self.every_secs

    def done(self) -> None:
        self.renewed_at = self.clock()


@dataclass
class Admin:
    gateway_url: str
    renewal: Renewal = field(default_factory=Renewal)
    _token: str = ""

    @property
    def token(self) -> str:
        if self.renewal.due():
            with httpx.Client(base_url=self.gateway_url, timeout=30) as client:
                self._token = login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
            self.renewal.done()
        return self._token

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="package")
def rel_admin(gateway_url: str) -> Admin:
    return Admin(gateway_url)


@pytest.fixture(scope="package")
def chaos_orchestrator(fleet: Fleet, gateway_url: str, rel_admin: Admin) -> Iterator[ServiceProcess]:
    """The fleet's orchestrator on short deadlines for this package; the default one is restored afterwards."""
    proc = fleet.replace("saga_orchestrator", **SAGA_ENV)
    wait_gateway_routes(gateway_url, rel_admin.token)
    yield proc
    fleet.replace("saga_orchestrator")
    wait_gateway_routes(gateway_url, rel_admin.token)


@pytest.fixture(scope="package")
def carrier(gateway_url: str, rel_admin: Admin) -> str:
    """A carrier for DE that never runs out of capacity, so only stock and cards decide an order."""
    code = f"REL{uuid.uuid4().hex[:8].upper()}"
    with httpx.Client(base_url=gateway_url, timeout=30) as api:
        response = api.post("/api/carriers", headers=rel_admin.headers, json={
            "code": code, "name": "Reliable Parcel", "countries": ["DE"], "max_weight_grams": 1_000_000,
            "daily_capacity": 1_000_000, "base_price_minor": 0, "price_per_kg_minor": 0, "currency": "EUR"})
        assert response.status_code == 201, response.text
    return code


@dataclass
class Shoppers:
    """A few customers that orders are spread over; their access tokens are renewed like the admin's."""

    gateway_url: str
    users: list[User]
    renewal: Renewal = field(default_factory=Renewal)

    @property
    def tokens(self) -> list[str]:
        if self.renewal.due():
            with httpx.Client(base_url=self.gateway_url, timeout=30) as client:
                for user in self.users:
                    user.token = login(client, user.email, user.password)
            self.renewal.done()
        return [user.token for user in self.users]


@pytest.fixture(scope="package")
def shoppers(gateway_url: str) -> Shoppers:
    with httpx.Client(base_url=gateway_url, timeout=30) as api:
        shoppers = Shoppers(gateway_url, [register_customer(api) for _ in range(4)])
    shoppers.renewal.done()  # register_customer logged each of them in
    return shoppers


@pytest.fixture
def new_product(gateway_url: str, rel_admin: Admin, carrier: str) -> Callable[[int], str]:
    """Create a product with `on_hand` units that only this test orders; returns its sku."""

    def create(on_hand: int) -> str:
        sku = f"REL-{uuid.uuid4().hex[:10].upper()}"
        with httpx.Client(base_url=gateway_url, timeout=30) as api:
            response = api.post("/api/inventory/products", headers=rel_admin.headers, json={
                "sku": sku, "name": "Reliability widget", "unit_price_minor": 990, "currency": "EUR",
                "weight_grams": 250, "on_hand": on_hand})
            assert response.status_code == 201, response.text
        return sku

    return create
