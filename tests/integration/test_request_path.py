"""The request path end to end: client → gateway → /validate → registry → order_service, real processes."""

from __future__ import annotations

import time

import httpx

from tests.conftest import User
from tests.fleet import Fleet

ADDRESS = {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}


def test_register_login_create_and_read_order(api: httpx.Client, customer: User) -> None:
    created = api.post("/api/orders", json={"currency": "EUR", "shipping_address": ADDRESS}, headers=customer.headers)
    assert created.status_code == 201, created.text
    order = created.json()
    assert order["customer_id"] == customer.user_id and order["status"] == "PENDING"
    read = api.get(f"/api/orders/{order['id']}", headers=customer.headers)
    assert read.status_code == 200 and read.json()["id"] == order["id"]
    assert read.headers.get("x-request-id")


def test_no_token_is_401(api: httpx.Client) -> None:
    response = api.get("/api/orders")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")


def test_bad_token_is_401(api: httpx.Client) -> None:
    response = api.get("/api/orders", headers={"Authorization": "Bearer not-a-jwt"})
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")


def test_unknown_route_is_404(api: httpx.Client, customer: User) -> None:
    response = api.get("/api/nothing-here", headers=customer.headers)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


def test_client_identity_headers_are_dropped(api: httpx.Client, customer: User) -> None:
    forged = {**customer.headers, "X-User-Id": "someone-else", "X-User-Roles": "admin"}
    created = api.post("/api/orders", json={"currency": "EUR"}, headers=forged)
    assert created.status_code == 201
    assert created.json()["customer_id"] == customer.user_id
    listed = api.get("/api/orders", params={"customer_id": "someone-else"}, headers=forged).json()
    assert {o["customer_id"] for o in listed["items"]} == {customer.user_id}


def test_direct_call_without_token_is_401(fleet: Fleet) -> None:
    response = httpx.get(f"{fleet.processes['order_service'].url}/api/orders")
    assert response.status_code == 401


def test_order_service_stopped_is_503(fleet: Fleet, api: httpx.Client, customer: User) -> None:
    order_service = fleet.processes["order_service"]
    order_service.stop()
    try:
        fleet.wait_deregistered("ORDER-SERVICE", order_service.port)
        # The gateway's copy of the registry refreshes every renewal interval (1 s in tests).
        deadline_attempts = 30
        for _ in range(deadline_attempts):
            response = api.get("/api/orders", headers=customer.headers)
            if response.status_code == 503:
                break
            time.sleep(0.3)
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
    finally:
        fleet.restart("order_service")
    for _ in range(30):
        if api.get("/api/orders", headers=customer.headers).status_code == 200:
            break
        time.sleep(0.3)
    assert api.get("/api/orders", headers=customer.headers).status_code == 200
