"""auth_service accounts: register, login, me, refresh rotation, logout, brute-force protection, service tokens."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from fastapi import FastAPI

from tests.auth_service.conftest import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    PASSWORD,
    Account,
    bearer,
    login,
    new_account,
)
from tests.inprocess import PROBLEM, OutboxWatch


async def test_register_login_me(client: httpx.AsyncClient) -> None:
    email = f"Ada.{uuid.uuid4().hex[:8]}@Example.COM"
    registered = await client.post("/api/auth/register",
                                   json={"email": email, "password": PASSWORD, "full_name": "Ada Lovelace"})
    assert registered.status_code == 201, registered.text
    user = registered.json()
    assert user["email"] == email.lower() and user["roles"] == ["customer"] and "password" not in str(user)

    tokens = await login(client, email.upper())  # addresses are case-insensitive
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 900
    assert tokens["access_token"].count(".") == 2 and "." not in tokens["refresh_token"]

    me = await client.get("/api/auth/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 200, me.text
    assert me.json()["id"] == user["id"] and me.json()["full_name"] == "Ada Lovelace"


async def test_duplicate_email_is_conflict_case_insensitively(client: httpx.AsyncClient, account: Account) -> None:
    again = await client.post("/api/auth/register", json={"email": account.email.upper(), "password": PASSWORD})
    assert again.status_code == 409
    assert again.headers["content-type"] == PROBLEM


@pytest.mark.parametrize("body", [
    {"email": "not-an-address", "password": PASSWORD},
    {"email": "short@example.com", "password": "1234567"},
    {"email": "missing-password@example.com"},
    {"password": PASSWORD},
    {"email": "extra@example.com", "password": PASSWORD, "roles": ["admin"]},
    {"email": 42, "password": PASSWORD},
    {"email": "ünïcode@example.com", "password": PASSWORD},
    {"email": "long@example.com", "password": "x" * 2000},
    [],
])
async def test_bad_registration_is_422(client: httpx.AsyncClient, body: object) -> None:
    response = await client.post("/api/auth/register", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert PASSWORD not in response.text  # field errors do not echo the input


async def test_malformed_bodies_are_4xx_not_500(client: httpx.AsyncClient) -> None:
    for path in ("/api/auth/register", "/api/auth/login", "/api/auth/refresh"):
        response = await client.post(path, content=b"{not json", headers={"content-type": "application/json"})
        assert response.status_code == 422, (path, response.text)
    login_422 = await client.post("/api/auth/login", json={"email": "", "password": ""})
    assert login_422.status_code == 422


async def test_wrong_credentials_are_401_with_one_message(client: httpx.AsyncClient, account: Account) -> None:
    wrong_password = await client.post("/api/auth/login", json={"email": account.email, "password": "wrong-password"})
    unknown = await client.post("/api/auth/login",
                                json={"email": f"nobody-{uuid.uuid4().hex}@example.com", "password": PASSWORD})
    assert wrong_password.status_code == unknown.status_code == 401
    assert wrong_password.headers["content-type"] == PROBLEM
    assert wrong_password.json()["detail"] == unknown.json()["detail"]


async def test_refresh_rotates_the_pair(client: httpx.AsyncClient, account: Account) -> None:
    first = await client.post("/api/auth/refresh", json={"refresh_token": account.refresh_token})
    assert first.status_code == 200, first.text
    pair = first.json()
    assert pair["refresh_token"] != account.refresh_token and pair["access_token"] != account.access_token
    assert (await client.get("/api/auth/me", headers=bearer(pair["access_token"]))).status_code == 200
    second = await client.post("/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert second.status_code == 200, second.text


async def test_reusing_a_spent_refresh_token_revokes_the_family(client: httpx.AsyncClient, account: Account) -> None:
    rotated = (await client.post("/api/auth/refresh", json={"refresh_token": account.refresh_token})).json()
    reuse = await client.post("/api/auth/refresh", json={"refresh_token": account.refresh_token})
    assert reuse.status_code == 401 and reuse.headers["content-type"] == PROBLEM
    # The legitimate holder's newer token dies with the family...
    newer = await client.post("/api/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert newer.status_code == 401
    # ...while other sessions of the same user are untouched.
    other_session = await login(client, account.email)
    assert (await client.post("/api/auth/refresh",
                              json={"refresh_token": other_session["refresh_token"]})).status_code == 200


async def test_concurrent_use_of_one_refresh_token_wins_at_most_once(
    client: httpx.AsyncClient, account: Account
) -> None:
    responses = await asyncio.gather(*[
        client.post("/api/auth/refresh", json={"refresh_token": account.refresh_token}) for _ in range(5)])
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) <= 1 and set(statuses) <= {200, 401}
    # The losers count as reuse: whatever the winner got is revoked with its family.
    for response in responses:
        if response.status_code == 200:
            again = await client.post("/api/auth/refresh", json={"refresh_token": response.json()["refresh_token"]})
            assert again.status_code == 401


async def test_unknown_refresh_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/auth/refresh", json={"refresh_token": "not-a-token"})
    assert response.status_code == 401


async def test_logout_revokes_access_token_and_refresh_family(client: httpx.AsyncClient, account: Account) -> None:
    assert (await client.get("/validate", headers=account.headers)).status_code == 200
    out = await client.post("/api/auth/logout", headers=account.headers, json={"refresh_token": account.refresh_token})
    assert out.status_code == 204
    revoked = await client.get("/validate", headers=account.headers)
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]
    assert (await client.get("/api/auth/me", headers=account.headers)).status_code == 401
    refresh = await client.post("/api/auth/refresh", json={"refresh_token": account.refresh_token})
    assert refresh.status_code == 401


async def test_logout_without_body_finds_the_family_of_the_access_token(
    client: httpx.AsyncClient, account: Account
) -> None:
    assert (await client.post("/api/auth/logout", headers=account.headers)).status_code == 204
    assert (await client.post("/api/auth/refresh", json={"refresh_token": account.refresh_token})).status_code == 401


async def test_logout_does_not_touch_someone_elses_session(client: httpx.AsyncClient) -> None:
    alice, bob = await new_account(client), await new_account(client)
    out = await client.post("/api/auth/logout", headers=alice.headers, json={"refresh_token": bob.refresh_token})
    assert out.status_code == 204
    assert (await client.post("/api/auth/refresh", json={"refresh_token": bob.refresh_token})).status_code == 200


async def test_logout_needs_a_token(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/auth/logout")).status_code == 401


async def test_bootstrap_admin_exists_with_admin_role(client: httpx.AsyncClient, app: FastAPI) -> None:
    tokens = await login(client, ADMIN_EMAIL, ADMIN_PASSWORD)
    me = await client.get("/api/auth/me", headers=bearer(tokens["access_token"]))
    assert "admin" in me.json()["roles"]
    # An account like any other, registered by the start-up: a consumer counting accounts sees it too.
    admin_id = me.json()["id"]
    everything = await OutboxWatch(app.state.db, 0).new()
    assert [said for said in everything if said[1] == admin_id] == [
        ("user.registered.v1", admin_id, None, {"user_id": admin_id, "role": "admin"})]


async def test_a_registration_is_one_event_without_personal_data(client: httpx.AsyncClient, app: FastAPI) -> None:
    outbox = await OutboxWatch.of(app)
    email = f"grace.{uuid.uuid4().hex[:8]}@example.com"
    registered = await client.post("/api/auth/register",
                                   json={"email": email, "password": PASSWORD, "full_name": "Grace Hopper"})
    assert registered.status_code == 201
    user_id = registered.json()["id"]
    # The id and the role, all of it: no address, no name, no password hash.
    assert await outbox.new() == [("user.registered.v1", user_id, None, {"user_id": user_id, "role": "customer"})]
    refused = [await client.post("/api/auth/register", json={"email": email.upper(), "password": PASSWORD}),
               await client.post("/api/auth/register", json={"email": "not-an-address", "password": PASSWORD})]
    assert [response.status_code for response in refused] == [409, 422]
    # Logging in, refreshing and logging out are sessions, not changes of an account: nothing on the bus.
    tokens = await login(client, email)
    assert (await client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})).status_code == 200
    assert await outbox.new() == []


async def test_repeated_failures_per_account_are_refused_with_retry_after(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app, client=("10.0.0.5", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://auth.test") as client:
        victim = await new_account(client)
        for _ in range(5):
            wrong = await client.post("/api/auth/login", json={"email": victim.email, "password": "guess-guess"})
            assert wrong.status_code == 401
        refused = await client.post("/api/auth/login", json={"email": victim.email, "password": PASSWORD})
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"] == PROBLEM
        assert 1 <= int(refused.headers["retry-after"]) <= 900
        # The lock is per account: another account from the same address still logs in.
        other = await new_account(client)
        assert (await client.post("/api/auth/login",
                                  json={"email": other.email, "password": PASSWORD})).status_code == 200


async def test_repeated_failures_per_address_are_refused(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app, client=("10.0.0.6", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://auth.test") as client:
        account = await new_account(client)
        for n in range(20):  # many accounts, a few guesses each: the address limit catches it
            wrong = await client.post("/api/auth/login",
                                      json={"email": f"spray-{n}@example.com", "password": "guess-guess"})
            assert wrong.status_code == 401
        refused = await client.post("/api/auth/login", json={"email": account.email, "password": PASSWORD})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    transport = httpx.ASGITransport(app=app, client=("10.0.0.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://auth.test") as elsewhere:
        assert (await elsewhere.post("/api/auth/login",
                                     json={"email": account.email, "password": PASSWORD})).status_code == 200


async def test_client_credentials_issue_a_service_token(client: httpx.AsyncClient, app: FastAPI) -> None:
    secret = app.state.settings.service_client_secret
    response = await client.post("/api/auth/token", data={
        "grant_type": "client_credentials", "client_id": "saga-orchestrator", "client_secret": secret})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900 and "refresh_token" not in body
    validated = await client.post("/validate", headers=bearer(body["access_token"]))
    assert validated.status_code == 200
    assert validated.json()["user_id"] == "service:saga-orchestrator" and validated.json()["roles"] == ["service"]
    assert validated.headers["x-user-roles"] == "service"


@pytest.mark.parametrize("form", [
    {"grant_type": "client_credentials", "client_id": "saga-orchestrator", "client_secret": "wrong"},
    {"grant_type": "client_credentials", "client_id": "intruder", "client_secret": "__SECRET__"},
])
async def test_bad_client_credentials_are_401(client: httpx.AsyncClient, app: FastAPI, form: dict[str, str]) -> None:
    secret = app.state.settings.service_client_secret
    form = {k: v.replace("__SECRET__", secret) for k, v in form.items()}
    response = await client.post("/api/auth/token", data=form)
    assert response.status_code == 401 and response.headers["content-type"] == PROBLEM


async def test_malformed_token_requests_are_422(client: httpx.AsyncClient, app: FastAPI) -> None:
    secret = app.state.settings.service_client_secret
    wrong_grant = await client.post("/api/auth/token", data={
        "grant_type": "password", "client_id": "gateway", "client_secret": secret})
    assert wrong_grant.status_code == 422
    missing = await client.post("/api/auth/token", data={"grant_type": "client_credentials"})
    assert missing.status_code == 422
    as_json = await client.post("/api/auth/token", json={
        "grant_type": "client_credentials", "client_id": "gateway", "client_secret": secret})
    assert as_json.status_code == 422
    not_utf8 = await client.post("/api/auth/token", content=b"\xff\xfe",
                                 headers={"content-type": "application/x-www-form-urlencoded"})
    assert not_utf8.status_code == 422


async def test_openapi_documents_every_route(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in ("/api/auth/register", "/api/auth/login", "/api/auth/refresh", "/api/auth/logout", "/api/auth/me",
                 "/api/auth/token", "/api/auth/keys/rotate", "/jwks", "/validate"):
        assert path in paths, path
    assert "application/x-www-form-urlencoded" in paths["/api/auth/token"]["post"]["requestBody"]["content"]
