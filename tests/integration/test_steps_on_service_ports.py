"""Every saga step and its compensation, called once on the services' own ports with a service token, as the
orchestrator calls them (the gateway routes none of them: tests/integration/test_trust.py)."""

from __future__ import annotations

import uuid

import httpx

from tests.conftest import User
from tests.fleet import Fleet

ADDRESS = {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}


def _product(api: httpx.Client, admin: User, on_hand: int = 5) -> dict:
    sku = f"E2E-{uuid.uuid4().hex[:8].upper()}"
    response = api.post("/api/inventory/products", headers=admin.headers, json={
        "sku": sku, "name": "End-to-end widget", "unit_price_minor": 1999, "currency": "EUR",
        "weight_grams": 500, "on_hand": on_hand})
    assert response.status_code == 201, response.text
    return response.json()


def _carrier(api: httpx.Client, admin: User) -> dict:
    code = f"C{uuid.uuid4().hex[:6].upper()}"
    response = api.post("/api/carriers", headers=admin.headers, json={
        "code": code, "name": "E2E Express", "countries": ["DE"], "max_weight_grams": 30000,
        "daily_capacity": 100, "base_price_minor": 1, "price_per_kg_minor": 1, "currency": "EUR"})
    assert response.status_code == 201, response.text
    return response.json()


def test_each_step_and_compensation_on_the_services_ports(fleet: Fleet, api: httpx.Client, admin: User,
                                                          customer: User) -> None:
    h = {"Authorization": f"Bearer {fleet.service_token()}"}
    product = _product(api, admin)
    _carrier(api, admin)
    orders, inventory, payments, carriers, shipments = (httpx.Client(base_url=fleet.processes[p].url, timeout=30)
                                                        for p in ("order_service", "inventory_service",
                                                                  "payment_service", "carrier_service",
                                                                  "shipment_service"))

    order = orders.post("/api/orders", headers=h, json={"customer_id": customer.user_id, "currency": "EUR",
                                                      "shipping_address": ADDRESS})
    assert order.status_code == 201, order.text
    order_id = order.json()["id"]
    lines = orders.post(f"/api/orders/{order_id}/lines", headers=h, json={
        "lines": [{"sku": product["sku"], "quantity": 2, "unit_price_minor": product["unit_price_minor"]}]})
    assert lines.status_code == 200 and lines.json()["total_minor"] == 3998, lines.text
    allocation = inventory.post("/api/inventory/allocations", headers=h,
                          json={"order_id": order_id, "lines": [{"sku": product["sku"], "quantity": 2}]})
    assert allocation.status_code == 201, allocation.text
    assert allocation.json()["total_weight_grams"] == 1000
    payment = payments.post("/api/payments", headers=h, json={
        "order_id": order_id, "customer_id": customer.user_id, "amount_minor": 3998, "currency": "EUR",
        "payment_token": "tok_visa"})
    assert payment.status_code == 201 and payment.json()["status"] == "CAPTURED", payment.text
    assignment = carriers.post("/api/carriers/assignments", headers=h,
                          json={"order_id": order_id, "country": "DE", "weight_grams": 1000})
    assert assignment.status_code == 201, assignment.text
    shipment = shipments.post("/api/shipments", headers=h, json={
        "order_id": order_id, "customer_id": customer.user_id,
        "carrier_code": assignment.json()["carrier_code"], "address": ADDRESS})
    assert shipment.status_code == 201 and shipment.json()["tracking_number"], shipment.text

    # The customer sees their own shipment and payment through the gateway.
    assert api.get(f"/api/shipments/{shipment.json()['id']}", headers=customer.headers).status_code == 200
    assert api.get(f"/api/payments/{payment.json()['id']}", headers=customer.headers).status_code == 200

    # Compensations, in reverse order.
    assert shipments.post(f"/api/shipments/orders/{order_id}/cancel", headers=h).json()["status"] == "CANCELLED"
    assert carriers.post(f"/api/carriers/assignments/{order_id}/release", headers=h).json()["status"] == "RELEASED"
    refund = payments.post(f"/api/payments/orders/{order_id}/refund", headers=h)
    assert refund.status_code == 200 and refund.json()["status"] == "REFUNDED", refund.text
    assert inventory.post(f"/api/inventory/allocations/{order_id}/release", headers=h).json()["status"] == "RELEASED"
    assert orders.delete(f"/api/orders/{order_id}/lines", headers=h).json()["lines"] == []
    cancelled = orders.post(f"/api/orders/{order_id}/cancel", headers=h, json={"reason": "e2e"})
    assert cancelled.json()["status"] == "CANCELLED"

    stock = api.get(f"/api/inventory/products/{product['sku']}").json()
    assert stock["reserved"] == 0 and stock["on_hand"] == 5


def test_customer_may_not_call_steps(fleet: Fleet, api: httpx.Client, customer: User) -> None:
    inventory = fleet.processes["inventory_service"].url
    response = httpx.post(f"{inventory}/api/inventory/allocations", headers=customer.headers,
                        json={"order_id": "x", "lines": [{"sku": "A", "quantity": 1}]})
    assert response.status_code == 403
    assert api.post("/api/inventory/products", headers=customer.headers, json={}).status_code in (403, 422)
