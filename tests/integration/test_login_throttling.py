"""Login throttling through the gateway: one client's failed logins do not lock out everybody else's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import User
from tests.fleet import Fleet, ServiceProcess

ATTACKER, NEIGHBOUR = "203.0.113.66", "203.0.113.77"


@pytest.fixture(scope="module")
def gateway_behind_a_load_balancer(fleet: Fleet) -> Iterator[ServiceProcess]:
    """A gateway trusting 127.0.0.1: the test client plays a load balancer and names the clients itself."""
    with fleet.extra("gateway", "gateway_behind_lb", env={"TRUSTED_PROXIES": "127.0.0.1"}) as proc:
        yield proc


def login_status(client: httpx.Client, user: User, forwarded_for: str | None = None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    response = client.post("/api/auth/login", headers=headers, json={"email": user.email, "password": user.password})
    return response.status_code


def test_one_clients_failed_logins_do_not_lock_out_another_client(
        gateway_behind_a_load_balancer: ServiceProcess, api: httpx.Client, customer: User) -> None:
    with httpx.Client(base_url=gateway_behind_a_load_balancer.url, timeout=30) as balancer:
        # Wrong passwords for many accounts, one each: only the per-address limit (20 in the fleet) stops them.
        for _ in range(50):
            wrong = balancer.post("/api/auth/login", headers={"X-Forwarded-For": ATTACKER},
                                  json={"email": f"spray-{uuid.uuid4().hex[:8]}@example.com", "password": "guess"})
            if wrong.status_code == 429:
                break
            assert wrong.status_code == 401, wrong.text
        assert wrong.status_code == 429, "the attacker's address was never throttled"
        assert login_status(balancer, customer, ATTACKER) == 429
        assert login_status(balancer, customer, NEIGHBOUR) == 200
    # And the clients of the fleet's own gateway (all of them 127.0.0.1 here) were never the attacker.
    assert login_status(api, customer) == 200
