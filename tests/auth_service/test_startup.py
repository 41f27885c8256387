"""auth_service startup: signing keys in production, configured keys, concurrent first starts, settings."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import auth_service
from auth_service.app import create_app
from auth_service.keys import SigningKeyMissing, public_jwk
from auth_service.settings import Settings
from shared.migrations import upgrade_to_head
from tests.auth_service.conftest import (
    ADMIN_EMAIL,
    PASSWORD,
    auth_settings,
    bearer,
    login,
    other_rsa_private_pem,
    running,
    unverified_kid,
)
from tests.inprocess import OutboxWatch, fresh_database_url

PRODUCTION: dict[str, Any] = {"env": "production", "eureka_server_url": "",
              "service_client_secret": "a-real-secret-from-the-vault-0123456789",
              "bootstrap_admin_email": "", "bootstrap_admin_password": ""}


async def test_production_without_a_signing_key_refuses_to_start() -> None:
    settings = auth_settings(fresh_database_url("cs_unit_auth_prod"), **PRODUCTION)
    app = create_app(settings)
    try:
        with pytest.raises(SigningKeyMissing, match="JWT_PRIVATE_KEY_PEM"):
            async with app.router.lifespan_context(app):
                pass
    finally:
        await app.state.db.dispose()


async def test_production_signs_with_the_configured_key() -> None:
    pem = other_rsa_private_pem()
    settings = auth_settings(fresh_database_url("cs_unit_auth_prod"), **PRODUCTION, jwt_private_key_pem=pem)
    async with running(settings) as (_, client):
        kid = public_jwk(pem)["kid"]
        assert [k["kid"] for k in (await client.get("/jwks")).json()["keys"]] == [kid]
        assert (await client.post("/api/auth/register", json={"email": "p@example.com", "password": PASSWORD})
                ).status_code == 201
        assert unverified_kid((await login(client, "p@example.com"))["access_token"]) == kid
    # A restart with the same key adds nothing.
    async with running(settings) as (_, client):
        assert [k["kid"] for k in (await client.get("/jwks")).json()["keys"]] == [kid]


async def test_instances_starting_together_create_one_key() -> None:
    url = fresh_database_url("cs_unit_auth_race")
    # Alembic's command API is not thread-safe, so migrate once; real instances are separate processes.
    await asyncio.to_thread(upgrade_to_head, Path(auth_service.__file__).parent, url)
    settings = auth_settings(url, run_migrations=False)
    kids: list[set[str]] = []

    async def start_and_read_jwks() -> None:
        async with running(settings) as (_, client):
            kids.append({k["kid"] for k in (await client.get("/jwks")).json()["keys"]})

    await asyncio.gather(start_and_read_jwks(), start_and_read_jwks(), start_and_read_jwks())
    assert len(kids) == 3 and all(k == kids[0] for k in kids) and len(kids[0]) == 1


async def test_bootstrap_promotes_an_existing_account() -> None:
    url = fresh_database_url("cs_unit_auth_race")
    async with running(auth_settings(url, bootstrap_admin_email="", bootstrap_admin_password="")) as (_, client):
        assert (await client.post("/api/auth/register", json={"email": ADMIN_EMAIL, "password": PASSWORD})
                ).status_code == 201
    async with running(auth_settings(url)) as (app, client):
        # Promoted, and the password stays the account's own: bootstrapping never resets it.
        me = await client.get("/api/auth/me", headers=bearer((await login(client, ADMIN_EMAIL))["access_token"]))
        assert sorted(me.json()["roles"]) == ["admin", "customer"]
        # Registered once (as a customer); the promotion registers no one.
        assert [kind for kind, *_ in await OutboxWatch(app.state.db, 0).new()] == ["user.registered.v1"]


def test_production_refuses_the_demo_admin_password() -> None:
    with pytest.raises(ValidationError, match="BOOTSTRAP_ADMIN_PASSWORD"):
        Settings(**{**PRODUCTION, "database_url": "postgresql+asyncpg://db/auth",
                    "bootstrap_admin_email": "admin@example.com", "bootstrap_admin_password": "admin-password-dev"})


def test_service_client_ids_from_a_comma_separated_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_CLIENT_IDS", "gateway, saga-orchestrator")
    assert Settings().service_client_ids == ["gateway", "saga-orchestrator"]
    monkeypatch.delenv("SERVICE_CLIENT_IDS")
    assert "saga-orchestrator" in Settings().service_client_ids
