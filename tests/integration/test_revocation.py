"""Issue 15 item 4: after logout the token is refused everywhere — the gateway, every service's own port, every
auth_service replica — within one revocation poll (REVOCATION_POLL_SECS). The tests make the poll happen now
(the test-only POST /_revocations/refresh) instead of sleeping through an interval."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import User, login, register_customer
from tests.fleet import Fleet, ServiceProcess

# A route of each service that a customer's own token opens.
CUSTOMER_ROUTES = {
    "order_service": "/api/orders",
    "payment_service": "/api/payments",
    "shipment_service": "/api/shipments",
    "carrier_service": "/api/carriers",
    "saga_orchestrator": "/api/customer-orders",
}


def poll_now(process: ServiceProcess) -> None:
    assert httpx.post(f"{process.url}/_revocations/refresh").status_code == 204


def test_a_logged_out_token_is_refused_by_every_service_directly(fleet: Fleet, api: httpx.Client) -> None:
    user = register_customer(api)
    for package, path in CUSTOMER_ROUTES.items():
        response = httpx.get(fleet.processes[package].url + path, headers=user.headers)
        assert response.status_code == 200, (package, response.text)
    assert api.post("/api/auth/logout", headers=user.headers).status_code == 204
    assert api.get("/api/orders", headers=user.headers).status_code == 401  # the gateway: at once
    refused = {}
    for package, path in CUSTOMER_ROUTES.items():
        poll_now(fleet.processes[package])
        refused[package] = httpx.get(fleet.processes[package].url + path, headers=user.headers).status_code
    assert refused == dict.fromkeys(CUSTOMER_ROUTES, 401)


def test_every_service_polls_the_configured_auth_service(fleet: Fleet) -> None:
    """The list comes from AUTH_URLS' GET /revocations (never routed by the gateway)."""
    answer = httpx.get(f"{fleet.auth_url}/revocations")
    assert answer.status_code == 200 and isinstance(answer.json()["revoked"], list)
    assert httpx.get(f"{fleet.gateway_url}/revocations").status_code == 404


def test_the_gateway_polls_the_list_itself_for_its_own_metrics(fleet: Fleet, api: httpx.Client,
                                                                admin: User) -> None:
    """The gateway checks an admin's token at its own /metrics (shared/metrics.py): it keeps the list fresh on its
    own poll — never told to here — so a logged-out admin token is refused there, and a live one is still let in
    (no 503 for a list gone stale) however long the gateway has run."""
    token = login(api, admin.email, admin.password)
    headers = {"Authorization": f"Bearer {token}"}
    assert api.get("/metrics", headers=headers).status_code == 200
    assert api.post("/api/auth/logout", headers=headers).status_code == 204
    gateway = fleet.processes["gateway"]
    answers = []
    for _ in range(300):  # a condition awaited (one poll interval: REVOCATION_POLL_SECS), not a timing asserted
        answers.append(httpx.get(f"{gateway.url}/metrics", headers=headers, timeout=5).status_code)
        if answers[-1] != 200:
            break
        time.sleep(0.1)
    assert answers[-1] == 401, answers[-5:]
    assert httpx.get(f"{gateway.url}/metrics", headers=admin.headers, timeout=5).status_code == 200


@pytest.fixture
def second_auth(fleet: Fleet) -> Iterator[ServiceProcess]:
    with fleet.extra("auth_service", "auth_service_2") as process:
        yield process


def test_a_revocation_at_one_auth_replica_reaches_the_others(fleet: Fleet, api: httpx.Client,
                                                             second_auth: ServiceProcess) -> None:
    user = register_customer(api)
    first = fleet.processes["auth_service"]
    assert httpx.get(f"{second_auth.url}/validate", headers=user.headers).status_code == 200
    assert httpx.post(f"{first.url}/api/auth/logout", headers=user.headers).status_code == 204
    assert httpx.get(f"{first.url}/validate", headers=user.headers).status_code == 401
    poll_now(second_auth)
    assert httpx.get(f"{second_auth.url}/validate", headers=user.headers).status_code == 401
