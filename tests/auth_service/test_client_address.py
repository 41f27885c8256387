"""Login throttling per client address: behind the gateway, the client it names, not the gateway itself — and
only the authenticated gateway names one (issue 15 item 8): its X-Forwarded-For counts with its service token in
X-Gateway-Authorization, never for the address a request comes from."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tests.auth_service.conftest import GATEWAY_SECRET, PASSWORD, SERVICE_SECRET, auth_settings, new_account, running

GATEWAY = "10.1.0.1"  # where the gateway connects from
STRANGER = "192.0.2.50"  # not the gateway: whatever it writes in X-Forwarded-For proves nothing
LOAD_BALANCERS = "2001:db8::/32"  # in front of the gateway (TRUSTED_PROXIES below)
LIMIT = 4


@pytest.fixture(scope="module")
async def app(database_url: str) -> AsyncIterator[FastAPI]:
    settings = auth_settings(database_url, trusted_proxies=f"10.1.0.0/24, {LOAD_BALANCERS}",
                             login_max_failures_per_address=LIMIT)
    async with running(settings) as (app, _):
        yield app


async def service_token(app: FastAPI, client_id: str) -> str:
    secret = GATEWAY_SECRET if client_id == "gateway" else SERVICE_SECRET
    async with peer(app, GATEWAY) as client:
        response = await client.post("/api/auth/token", data={
            "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret})
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])


async def test_the_gateways_token_needs_the_gateways_own_secret(app: FastAPI) -> None:
    """A service holding the shared secret cannot mint the token whose X-Forwarded-For auth_service believes."""
    async with peer(app, "10.1.0.20") as client:
        forged = await client.post("/api/auth/token", data={
            "grant_type": "client_credentials", "client_id": "gateway", "client_secret": SERVICE_SECRET})
        assert forged.status_code == 401, forged.text
        crossed = await client.post("/api/auth/token", data={
            "grant_type": "client_credentials", "client_id": "saga-orchestrator", "client_secret": GATEWAY_SECRET})
        assert crossed.status_code == 401, crossed.text
    assert await service_token(app, "gateway")


@pytest.mark.parametrize("client_id", ["order-service", "inventory-service", "payment-service", "carrier-service",
                                       "shipment-service"])
async def test_the_sagas_participants_get_no_service_token(app: FastAPI, client_id: str) -> None:
    """Only the orchestrator and the gateway are clients: a participant's id is unknown, even with the secret."""
    async with peer(app, "10.1.0.21") as client:
        refused = await client.post("/api/auth/token", data={
            "grant_type": "client_credentials", "client_id": client_id, "client_secret": SERVICE_SECRET})
    assert refused.status_code == 401, refused.text


async def test_the_gateways_token_is_privileged_nowhere(app: FastAPI) -> None:
    """It vouches for the gateway's X-Forwarded-For at auth_service and carries no `service` role, so it opens no
    service's internal endpoints (the orchestrator's token does: it is the saga's)."""
    async with peer(app, GATEWAY) as client:
        gateway, orchestrator = [
            await client.post("/validate", headers={"Authorization": f"Bearer {await service_token(app, client_id)}"})
            for client_id in ("gateway", "saga-orchestrator")]
    assert gateway.status_code == 200 and gateway.json()["roles"] == ["gateway"], gateway.text
    assert orchestrator.status_code == 200 and orchestrator.json()["roles"] == ["service"], orchestrator.text


def peer(app: FastAPI, address: str, token: str | None = None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    headers = {"X-Gateway-Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(transport=transport, base_url="http://auth.test", headers=headers)


async def spray(client: httpx.AsyncClient, forwarded_for: str | None = None, times: int = LIMIT) -> None:
    """Wrong passwords for as many accounts: one failure each, so only the address limit can catch them."""
    for _ in range(times):
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        wrong = await client.post("/api/auth/login", headers=headers,
                                  json={"email": f"spray-{uuid.uuid4().hex[:8]}@example.com", "password": "guess"})
        assert wrong.status_code == 401, wrong.text


async def login_status(client: httpx.AsyncClient, email: str, forwarded_for: str | None = None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    response = await client.post("/api/auth/login", headers=headers, json={"email": email, "password": PASSWORD})
    return response.status_code


async def test_one_client_behind_the_gateway_does_not_lock_out_the_others(app: FastAPI) -> None:
    async with peer(app, GATEWAY, await service_token(app, "gateway")) as gateway:
        account = await new_account(gateway)
        await spray(gateway, forwarded_for="203.0.113.1")
        assert await login_status(gateway, account.email, "203.0.113.1") == 429
        assert await login_status(gateway, account.email, "203.0.113.2") == 200
        # The chain a gateway behind a load balancer sends: the client is the right-most untrusted entry.
        assert await login_status(gateway, account.email, "6.6.6.6, 203.0.113.1, 2001:db8::7") == 429
        assert await login_status(gateway, account.email, "203.0.113.1, 203.0.113.3") == 200
        # The gateway's own requests (no header) are not the client's either.
        assert await login_status(gateway, account.email) == 200


@pytest.mark.parametrize(("credential", "address"), [("none", "10.1.0.11"), ("another service's token", "10.1.0.12"),
                                                     ("a forged header", "10.1.0.13")])
async def test_a_process_at_a_trusted_address_does_not_pick_its_throttle_identity(app: FastAPI, credential: str,
                                                                                 address: str) -> None:
    """The attack of item 8: a local process at the gateway's own (trusted) address, forging X-Forwarded-For
    on every login, is still counted as itself."""
    token = {"none": None, "another service's token": await service_token(app, "saga-orchestrator"),
             "a forged header": "not-a-token"}[credential]
    async with peer(app, address, token) as impostor, peer(app, GATEWAY, await service_token(app, "gateway")) as gw:
        account = await new_account(gw)
        for n in range(LIMIT):
            await spray(impostor, forwarded_for=f"198.51.100.{n}", times=1)
        assert await login_status(impostor, account.email, "198.51.100.200") == 429
        # Its failures were the gateway address's, not any client's that the real gateway names.
        assert await login_status(gw, account.email, "198.51.100.1") == 200


async def test_an_untrusted_peers_forwarded_for_is_ignored(app: FastAPI) -> None:
    async with peer(app, STRANGER) as stranger, peer(app, "192.0.2.51") as neighbour:
        account = await new_account(neighbour)
        for n in range(LIMIT):  # a new forged address every time: the failures still count against the peer
            await spray(stranger, forwarded_for=f"198.51.100.{n}", times=1)
        assert await login_status(stranger, account.email, "198.51.100.99") == 429
        assert await login_status(neighbour, account.email) == 200


def test_trusted_proxies_is_a_setting_of_every_service_and_trusts_nobody_by_default(database_url: str) -> None:
    assert auth_settings(database_url).trusted_proxies == ()
    production = auth_settings(database_url, env="production",
                               service_client_secret="s3cret-of-at-least-32-characters-0123",
                               gateway_client_secret="another-s3cret-of-at-least-32-characters",
                               bootstrap_admin_password="not-the-demo-one")
    assert production.trusted_proxies == ()
