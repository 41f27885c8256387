"""A small shop for tests that place orders through the gateway: a product, a carrier, faults, orders."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from tests.conftest import User
from tests.fleet import Fleet

ADDRESS = {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}
TERMINAL = {"COMPLETED", "COMPENSATED", "COMPENSATION_FAILED"}


@dataclass(frozen=True)
class Shop:
    sku: str
    carrier_code: str


def open_shop(gateway_url: str, admin: User, prefix: str) -> Shop:
    """A product with plenty of stock and a carrier for DE, both new (the fleet is shared by the session)."""
    tag = uuid.uuid4().hex[:6].upper()
    shop = Shop(sku=f"{prefix}-{tag}", carrier_code=f"{prefix}{tag}")
    with httpx.Client(base_url=gateway_url, timeout=30) as api:
        response = api.post("/api/inventory/products", headers=admin.headers, json={
            "sku": shop.sku, "name": "Dashboard widget", "unit_price_minor": 1250, "currency": "EUR",
            "weight_grams": 400, "on_hand": 100_000})
        assert response.status_code == 201, response.text
        response = api.post("/api/carriers", headers=admin.headers, json={
            "code": shop.carrier_code, "name": "Test Parcel", "countries": ["DE", "FR", "NL"],
            "max_weight_grams": 1_000_000, "daily_capacity": 100_000, "base_price_minor": 0,
            "price_per_kg_minor": 0, "currency": "EUR"})
        assert response.status_code == 201, response.text
    return shop


def place_order(api: httpx.Client, user: User, shop: Shop, card: str = "tok_visa") -> str:
    """Start a saga (without waiting for it) and return its id."""
    response = api.post("/api/customer-orders", headers={**user.headers, "Idempotency-Key": str(uuid.uuid4())},
                        json={"lines": [{"sku": shop.sku, "quantity": 1}], "shipping_address": ADDRESS,
                              "payment_token": card})
    assert response.status_code == 202, response.text
    return str(response.json()["saga_id"])


def wait_terminal(api: httpx.Client, user: User, saga_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        saga: dict[str, Any] = api.get(f"/api/customer-orders/{saga_id}", headers=user.headers).json()
        if saga["status"] in TERMINAL:
            return saga
        time.sleep(0.2)
    raise TimeoutError(f"saga {saga_id} did not finish within {timeout}s")


def inject_fault(fleet: Fleet, package: str, path_regex: str, method: str = "POST", status: int = 503,
                 count: int = 1, delay_ms: int = 0) -> None:
    fleet.processes[package].inject_fault(path_regex, method, status, count, delay_ms)


def clear_faults(fleet: Fleet, package: str) -> None:
    fleet.processes[package].clear_faults()
