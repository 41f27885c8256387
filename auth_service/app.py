"""auth_service app factory: on start, a signing key (and the bootstrap admin) must exist."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from auth_service.api import public_router, router
from auth_service.keys import KeyRing, ensure_signing_key
from auth_service.service import AuthService
from auth_service.settings import Settings
from shared.auth import Revocations
from shared.forwarded import TrustedProxies
from shared.service_app import create_service_app


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    async def on_startup(app: FastAPI) -> None:
        db = app.state.db
        async with db.transaction() as tx:
            await ensure_signing_key(tx, settings)
        # auth_service verifies tokens with its own keys, straight from its database, never over HTTP.
        keyring = KeyRing(db, settings, app.state.verifier)
        await keyring.load()
        auth = AuthService(db, settings, keyring, app.state.verifier)
        # The revocation list straight from the table (not over HTTP): /validate answers from memory, and a
        # logout at another replica arrives with the next poll (shared.auth.Revocations).
        revocations = Revocations(auth.revoked_tokens, settings.revocation_poll_secs,
                                  settings.revocation_max_staleness_secs)
        await revocations.refresh()
        app.state.verifier.revocations = revocations
        await auth.ensure_bootstrap_admin()
        app.state.auth = auth

    app = create_service_app(
        settings,
        title="auth_service",
        routers=[router, public_router],
        package_dir=Path(__file__).parent,
        on_startup=on_startup,
        discover=False,
    )
    # Whose X-Forwarded-For names the client of a login (api._client_address): the gateway's, where deployed.
    app.state.trusted_proxies = TrustedProxies(settings.trusted_proxies)
    return app
