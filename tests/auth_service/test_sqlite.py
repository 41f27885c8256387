"""auth_service on SQLite, as the local runner runs it."""

from __future__ import annotations

from pathlib import Path

from tests.auth_service.conftest import PASSWORD, auth_settings, running


async def test_login_and_refresh_while_the_keys_reload(tmp_path: Path) -> None:
    """Regression: a key reload inside the login's write transaction waited 30 s on SQLite's lock, then 503."""
    settings = auth_settings(f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}", signing_keys_reload_secs=0,
                             db_pool_size=5)
    async with running(settings) as (_, client):
        registered = await client.post("/api/auth/register", json={"email": "lite@example.com", "password": PASSWORD})
        assert registered.status_code == 201, registered.text
        for _ in range(3):
            login = await client.post("/api/auth/login", json={"email": "lite@example.com", "password": PASSWORD})
            assert login.status_code == 200, login.text
            pair = login.json()
            refreshed = await client.post("/api/auth/refresh", json={"refresh_token": pair["refresh_token"]})
            assert refreshed.status_code == 200, refreshed.text
            token = await client.post("/api/auth/token", data={
                "grant_type": "client_credentials", "client_id": "saga-orchestrator",
                "client_secret": settings.service_client_secret})
            assert token.status_code == 200, token.text
        validate = await client.get("/validate", headers={"Authorization": f"Bearer {pair['access_token']}"})
        assert validate.status_code == 200
