"""Issue 15 items 1 and 2, played as the attacker against the real processes (the gateway and the services' ports).

Trust does not flow through discovery: the registry refuses strangers, and even an AUTH-SERVICE instance
registered with the registry's own credentials gets no /validate, no JWKS fetch and no client secret. Nobody
mints a service token or reaches a saga step through the gateway.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jwt

from saga_orchestrator.steps import DEFINITIONS, ServiceCall
from tests.conftest import User
from tests.fleet import Fleet

ROGUE_KID = "rogue-key"
_ROGUE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ROGUE_PRIVATE_PEM = _ROGUE_KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
ROGUE_JWKS = {"keys": [{**jwk.construct(_ROGUE_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(), "RS256").to_dict(),
    "kid": ROGUE_KID, "use": "sig"}]}


def rogue_admin_token() -> str:
    now = int(time.time())
    claims = {"sub": "attacker", "roles": ["admin"], "email": "", "typ": "access", "iss": "customer-service-auth",
              "aud": "customer-service", "iat": now, "exp": now + 600, "jti": uuid.uuid4().hex}
    return str(jwt.encode(claims, ROGUE_PRIVATE_PEM, algorithm="RS256", headers={"kid": ROGUE_KID}))


class RogueAuth:
    """An impostor auth_service: every token is an admin's, its JWKS is the attacker's; it records who calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        rogue = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                rogue.calls.append(f"{self.command} {self.path}")
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                body = json.dumps(ROGUE_JWKS if self.path.startswith("/jwks") else
                                  {"user_id": "attacker", "roles": ["admin"], "email": "",
                                   "access_token": rogue_admin_token(), "expires_in": 600}).encode()
                self.send_response(200)
                for name, value in (("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                    ("X-User-Id", "attacker"), ("X-User-Roles", "admin"), ("X-User-Email", "")):
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def registration(self) -> dict[str, Any]:
        instance_id = f"127.0.0.1:auth-service:{self.port}"
        return {"instance": {
            "instanceId": instance_id, "hostName": "127.0.0.1", "app": "AUTH-SERVICE", "ipAddr": "127.0.0.1",
            "status": "UP", "overriddenstatus": "UNKNOWN", "port": {"$": self.port, "@enabled": "true"},
            "securePort": {"$": 443, "@enabled": "false"}, "countryId": 1,
            "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
            "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90}, "metadata": {},
            "vipAddress": "auth-service", "secureVipAddress": "auth-service", "lastDirtyTimestamp": "1700000000000",
        }}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def rogue() -> Iterator[RogueAuth]:
    server = RogueAuth()
    yield server
    server.close()


def test_an_anonymous_stranger_cannot_register_with_the_registry(fleet: Fleet, rogue: RogueAuth) -> None:
    assert fleet.registry is not None
    stranger = httpx.post(f"{fleet.registry.url}/eureka/apps/AUTH-SERVICE", json=rogue.registration())
    assert stranger.status_code == 401
    guessed = httpx.post(f"{fleet.registry.url}/eureka/apps/AUTH-SERVICE", json=rogue.registration(),
                         auth=("eureka", "eureka"))
    assert guessed.status_code == 401
    assert rogue.port not in fleet.registered_ports("AUTH-SERVICE")


def test_a_registered_impostor_of_auth_service_is_never_asked(fleet: Fleet, rogue: RogueAuth, api: httpx.Client,
                                                              customer: User) -> None:
    """Worst case: the registry's password leaked and the impostor is UP in the registry next to the real one.
    Tokens and forward-auth still come from the configured AUTH_URLS only."""
    registered = httpx.post(f"{fleet.registry_url}/apps/AUTH-SERVICE", json=rogue.registration())
    assert registered.status_code == 204
    instance = quote(f"127.0.0.1:auth-service:{rogue.port}")
    try:
        assert rogue.port in fleet.registered_ports("AUTH-SERVICE")
        attacker = {"Authorization": f"Bearer {rogue_admin_token()}"}
        order = fleet.processes["order_service"].url
        # The services refresh their copy of the registry every second: long enough for several refreshes.
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            assert api.get("/api/orders", headers=attacker).status_code == 401
            assert httpx.get(f"{order}/api/orders", headers=attacker).status_code == 401
            # A customer's own token still works: it is the real auth_service that answers.
            assert api.get("/api/orders", headers=customer.headers).status_code == 200
            time.sleep(0.25)
        assert rogue.calls == []
    finally:
        httpx.delete(f"{fleet.registry_url}/apps/AUTH-SERVICE/{instance}")


def _internal_calls() -> list[ServiceCall]:
    """Every saga step and compensation, except the order's own create and cancel (a customer's too)."""
    calls = [call for definition in DEFINITIONS.values() for step in definition.steps
             for call in (step.action, step.compensation) if call is not None]
    return [call for call in calls if call.path not in ("/api/orders", "/api/orders/{order_id}/cancel")]


@pytest.mark.parametrize("call", _internal_calls(), ids=lambda call: f"{call.method} {call.path}")
def test_saga_steps_are_not_routed_by_the_gateway(api: httpx.Client, admin: User, call: ServiceCall) -> None:
    path = call.render_path({"order_id": uuid.uuid4().hex})
    response = api.request(call.method, path, headers={**admin.headers, "Idempotency-Key": uuid.uuid4().hex},
                           json={})
    assert response.status_code == 404, response.text


def test_nobody_mints_a_service_token_through_the_gateway(fleet: Fleet, api: httpx.Client) -> None:
    form = {"grant_type": "client_credentials", "client_id": "saga-orchestrator",
            "client_secret": fleet.service_secret}
    assert api.post("/api/auth/token", data=form).status_code == 404  # even with the right secret
    # On auth_service's own port the fleet's services get theirs; the published development secret is gone.
    auth = fleet.processes["auth_service"].url
    assert httpx.post(f"{auth}/api/auth/token", data=form).status_code == 200
    published = {**form, "client_secret": "dev-only-service-secret-change-me"}
    assert httpx.post(f"{auth}/api/auth/token", data=published).status_code == 401
