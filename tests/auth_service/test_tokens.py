"""auth_service tokens: /validate for the gateway, forged and stale tokens, JWKS, and key rotation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from jose import jwt
from sqlalchemy import event

from shared.auth import Revocations
from shared.errors import ServiceUnavailable
from tests.auth_service.conftest import (
    Account,
    auth_settings,
    bearer,
    claims_for,
    current_signing_key,
    hand_made_token,
    hs256_with,
    login,
    new_account,
    other_rsa_private_pem,
    public_pem_of,
    running,
    unverified_kid,
)
from tests.inprocess import PROBLEM


async def test_validate_returns_identity_in_body_and_headers(client: httpx.AsyncClient, account: Account) -> None:
    for method in ("GET", "POST"):
        response = await client.request(method, "/validate", headers=account.headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"user_id": account.id, "roles": ["customer"], "email": account.email}
        assert response.headers["x-user-id"] == account.id
        assert response.headers["x-user-roles"] == "customer"
        assert response.headers["x-user-email"] == account.email


async def test_access_token_claims_follow_the_contract(client: httpx.AsyncClient, account: Account) -> None:
    header = jwt.get_unverified_header(account.access_token)
    claims = jwt.get_unverified_claims(account.access_token)
    assert header["alg"] == "RS256" and header["kid"]
    assert set(claims) == {"iss", "aud", "sub", "roles", "email", "typ", "iat", "exp", "jti"}
    assert claims["iss"] == "customer-service-auth" and claims["aud"] == "customer-service"
    assert claims["sub"] == account.id and claims["roles"] == ["customer"] and claims["typ"] == "access"
    assert claims["exp"] - claims["iat"] == 900


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic abc", "Bearer not.a.jwt", "Bearer x"])
async def test_validate_without_a_usable_token_is_401(client: httpx.AsyncClient, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = await client.get("/validate", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM and response.json()["detail"]
    assert "x-user-id" not in response.headers


def _rs256(private_pem: str, kid: str, claims: dict[str, Any]) -> str:
    return str(jwt.encode(claims, private_pem, algorithm="RS256", headers={"kid": kid}))


ForgeToken = Callable[[str, str], str]  # (real private pem, real kid) → token


FORGERIES: dict[str, ForgeToken] = {
    "signed by another key under the real kid": lambda pem, kid: _rs256(other_rsa_private_pem(), kid, claims_for()),
    "alg none": lambda pem, kid: hand_made_token({"alg": "none", "typ": "JWT", "kid": kid}, claims_for(),
                                                 lambda _: b""),
    "HS256 keyed with the public key PEM": lambda pem, kid: hand_made_token(
        {"alg": "HS256", "typ": "JWT", "kid": kid}, claims_for(), hs256_with(public_pem_of(pem))),
    "expired": lambda pem, kid: _rs256(pem, kid, claims_for(iat=int(time.time()) - 600,
                                                            exp=int(time.time()) - 60)),
    "wrong issuer": lambda pem, kid: _rs256(pem, kid, claims_for(iss="someone-else")),
    "wrong audience": lambda pem, kid: _rs256(pem, kid, claims_for(aud="another-system")),
    "no expiry": lambda pem, kid: _rs256(pem, kid, {k: v for k, v in claims_for().items() if k != "exp"}),
    "not an access token": lambda pem, kid: _rs256(pem, kid, claims_for(typ="refresh")),
    "unknown kid": lambda pem, kid: _rs256(pem, "no-such-key", claims_for()),
    "no jti": lambda pem, kid: _rs256(pem, kid, {k: v for k, v in claims_for().items() if k != "jti"}),
    # Properly signed but unfit for the X-User-* headers or for arithmetic: refused, never a 500.
    "roles not a list": lambda pem, kid: _rs256(pem, kid, claims_for(roles=5)),
    "roles a string": lambda pem, kid: _rs256(pem, kid, claims_for(roles="admin")),
    "exp far beyond any calendar": lambda pem, kid: _rs256(pem, kid, claims_for(exp=10**30)),
    "header injection in sub": lambda pem, kid: _rs256(pem, kid, claims_for("a\r\nX-User-Roles: admin")),
    "non-ASCII email": lambda pem, kid: _rs256(pem, kid, claims_for(email="日本@example.com")),
    "list as header": lambda pem, kid: hand_made_token([kid], claims_for(), lambda _: b"x"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("name", list(FORGERIES))
async def test_forged_or_stale_tokens_are_401(client: httpx.AsyncClient, app: FastAPI, name: str) -> None:
    key = await current_signing_key(app)
    token = FORGERIES[name](key.private_pem, key.kid)
    response = await client.post("/validate", headers=bearer(token))
    assert response.status_code == 401, (name, response.text)
    assert response.headers["content-type"] == PROBLEM and response.json()["detail"]


async def test_a_token_signed_properly_by_hand_is_accepted(client: httpx.AsyncClient, app: FastAPI) -> None:
    """The control for the forgeries above: only the defect makes them fail."""
    key = await current_signing_key(app)
    response = await client.get("/validate", headers=bearer(_rs256(key.private_pem, key.kid, claims_for("user-9"))))
    assert response.status_code == 200 and response.json()["user_id"] == "user-9"


async def test_jwks_publishes_public_keys_only(client: httpx.AsyncClient, account: Account) -> None:
    plain = await client.get("/jwks")
    well_known = await client.get("/api/auth/.well-known/jwks.json")
    assert plain.status_code == well_known.status_code == 200
    assert plain.json() == well_known.json()
    keys = plain.json()["keys"]
    assert keys and unverified_kid(account.access_token) in {k["kid"] for k in keys}
    for key in keys:
        assert set(key) == {"kty", "kid", "use", "alg", "n", "e"}
        assert key["kty"] == "RSA" and key["use"] == "sig" and key["alg"] == "RS256"


async def test_rotation_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_key(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    before = await new_account(client)
    old_kid = unverified_kid(before.access_token)

    rotated = await client.post("/api/auth/keys/rotate", headers=admin_headers)
    assert rotated.status_code == 201, rotated.text
    new_kid = rotated.json()["kid"]
    assert new_kid != old_kid

    assert (await client.get("/validate", headers=before.headers)).status_code == 200
    after = await login(client, before.email)
    assert unverified_kid(after["access_token"]) == new_kid
    assert (await client.get("/validate", headers=bearer(after["access_token"]))).status_code == 200
    published = {k["kid"] for k in (await client.get("/jwks")).json()["keys"]}
    assert {old_kid, new_kid} <= published

    keys = (await client.get("/api/auth/keys", headers=admin_headers)).json()
    signing = [k["kid"] for k in keys if k["signing"]]
    assert signing == [new_kid]
    assert next(k for k in keys if k["kid"] == old_kid)["retired_at"] is not None


async def test_rotation_and_key_listing_need_admin(client: httpx.AsyncClient, account: Account) -> None:
    assert (await client.post("/api/auth/keys/rotate", headers=account.headers)).status_code == 403
    assert (await client.get("/api/auth/keys", headers=account.headers)).status_code == 403
    assert (await client.post("/api/auth/keys/rotate")).status_code == 401


async def test_a_second_instance_sees_rotation_and_revocation_of_the_first(
    client: httpx.AsyncClient, database_url: str, admin_headers: dict[str, str]
) -> None:
    async with running(auth_settings(database_url)) as (second_app, second):
        assert (await client.post("/api/auth/keys/rotate", headers=admin_headers)).status_code == 201
        account = await new_account(client)  # signed by the key the first instance just made
        assert (await second.get("/validate", headers=account.headers)).status_code == 200
        assert (await client.post("/api/auth/logout", headers=account.headers)).status_code == 204
        assert (await client.get("/validate", headers=account.headers)).status_code == 401  # at once here
        # The other instance learns it at its next poll of the table (every REVOCATION_POLL_SECS): made now.
        await second_app.state.verifier.revocations.refresh()
        assert (await second.get("/validate", headers=account.headers)).status_code == 401


async def test_validate_makes_no_database_round_trip(app: FastAPI, client: httpx.AsyncClient,
                                                     account: Account) -> None:
    """Issue 17: /validate answers from memory (keys and revocations); the database may be gone meanwhile."""
    assert (await client.get("/validate", headers=account.headers)).status_code == 200
    statements: list[str] = []
    engine = app.state.db.engine.sync_engine

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        for _ in range(5):
            assert (await client.get("/validate", headers=account.headers)).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", record)
    # Only the periodic work may run meanwhile: the revocation poll and the signing keys' reload.
    periodic = ("revoked_tokens.expires_at >", "FROM signing_keys")
    assert [sql for sql in statements if not any(mark in sql for mark in periodic)] == []


async def test_a_stale_revocation_list_refuses_rather_than_trusts(account: Account) -> None:
    """A list nobody could refresh for longer than the bound answers 503, not "not revoked" (clock moved)."""
    now = [1000.0]

    async def fetch() -> dict[str, float]:
        return {}

    revocations = Revocations(fetch, poll_secs=2, max_staleness_secs=30, clock=lambda: now[0])
    with pytest.raises(ServiceUnavailable):
        revocations.is_revoked("never-loaded")
    await revocations.refresh()
    assert not revocations.is_revoked("some-jti")
    revocations.add("some-jti", time.time() + 60)
    assert revocations.is_revoked("some-jti")
    now[0] += 31
    with pytest.raises(ServiceUnavailable):
        revocations.is_revoked("some-jti")
