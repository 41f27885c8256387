"""Zero trust between services: every domain service refuses callers it cannot verify, gateway or not."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jwt

from tests.conftest import User, register_customer
from tests.fleet import Fleet

# A protected endpoint of each domain service.
PROTECTED = {
    "order_service": "/api/orders",
    "inventory_service": "/api/inventory/allocations/some-order",
    "payment_service": "/api/payments",
    "carrier_service": "/api/carriers",
    "shipment_service": "/api/shipments",
    "saga_orchestrator": "/api/customer-orders",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(sub: str = "attacker") -> dict:
    now = int(time.time())
    return {"sub": sub, "roles": ["admin"], "typ": "access", "iss": "customer-service-auth",
            "aud": "customer-service", "iat": now, "exp": now + 600}


@pytest.fixture(scope="module")
def real_key(fleet: Fleet) -> dict:
    keys = httpx.get(f"{fleet.processes['auth_service'].url}/jwks").json()["keys"]
    return keys[-1]


def _attacks(real_key: dict) -> dict[str, str]:
    kid = real_key["kid"]
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    public_pem = jwk.construct(real_key, "RS256").to_pem()
    confused_input = f"{_b64(json.dumps({'alg': 'HS256', 'kid': kid}).encode())}.{_b64(json.dumps(_claims()).encode())}"
    confused_sig = _b64(hmac.new(public_pem, confused_input.encode(), hashlib.sha256).digest())
    return {
        "forged signature": jwt.encode(_claims(), other, algorithm="RS256", headers={"kid": kid}),
        "alg none": f"{_b64(json.dumps({'alg': 'none', 'kid': kid}).encode())}."
                    f"{_b64(json.dumps(_claims()).encode())}.",
        "hs256 with the public key": f"{confused_input}.{confused_sig}",
        "garbage": "garbage",
    }


@pytest.mark.parametrize("package", list(PROTECTED))
def test_direct_call_without_token_is_401(fleet: Fleet, package: str) -> None:
    if package not in fleet.processes:
        pytest.skip(f"{package} is not part of this fleet")
    response = httpx.get(fleet.processes[package].url + PROTECTED[package])
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("package", list(PROTECTED))
def test_direct_call_with_forged_tokens_is_401(fleet: Fleet, real_key: dict, package: str) -> None:
    if package not in fleet.processes:
        pytest.skip(f"{package} is not part of this fleet")
    for name, token in _attacks(real_key).items():
        response = httpx.get(fleet.processes[package].url + PROTECTED[package],
                             headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, f"{package} accepted a token with {name}"


def test_forged_tokens_are_refused_at_the_gateway(api: httpx.Client, real_key: dict) -> None:
    for name, token in _attacks(real_key).items():
        response = api.get("/api/orders", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, f"the gateway let a token with {name} through"


def test_revoked_token_is_refused(api: httpx.Client) -> None:
    user = register_customer(api)
    assert api.get("/api/orders", headers=user.headers).status_code == 200
    assert api.post("/api/auth/logout", headers=user.headers).status_code == 204
    assert api.get("/api/orders", headers=user.headers).status_code == 401


def test_another_customers_resources_are_invisible(api: httpx.Client, customer: User) -> None:
    other = register_customer(api)
    order = api.post("/api/orders", json={"currency": "EUR"}, headers=other.headers).json()
    assert api.get(f"/api/orders/{order['id']}", headers=customer.headers).status_code == 404
    assert api.get(f"/api/orders/{order['id']}", headers=other.headers).status_code == 200
    assert api.post(f"/api/orders/{order['id']}/cancel", headers=customer.headers).status_code == 404
