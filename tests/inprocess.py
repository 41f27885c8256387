"""Service-level tests: one service's app in this process, on a fresh PostgreSQL database, with test tokens."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from jose import jwk, jwt

from shared.settings import ServiceSettings
from tests.fleet import DB_SUFFIX, PG_URL_BASE, recreate_databases

_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PRIVATE_PEM = _KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()
PUBLIC_PEM = _KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
).decode()
KID = "test-key"
JWKS = {"keys": [{**jwk.construct(PUBLIC_PEM, "RS256").to_dict(), "kid": KID, "use": "sig"}]}


def mint(subject: str = "customer-1", roles: tuple[str, ...] = ("customer",), **claims: Any) -> str:
    now = int(time.time())
    body = {
        "sub": subject, "roles": list(roles), "email": f"{subject}@example.com", "typ": "access",
        "iss": "customer-service-auth", "aud": "customer-service", "iat": now, "exp": now + 600,
        "jti": uuid.uuid4().hex, **claims,
    }
    return str(jwt.encode(body, PRIVATE_PEM, algorithm="RS256", headers={"kid": KID}))


def bearer(subject: str = "customer-1", roles: tuple[str, ...] = ("customer",)) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(subject, roles)}"}


ADMIN = bearer("admin-1", ("admin",))
SERVICE = bearer("service:saga-orchestrator", ("service",))


def fresh_database_url(name: str) -> str:
    recreate_databases([name])
    return f"{PG_URL_BASE}/{name}{DB_SUFFIX}"


@asynccontextmanager
async def running_app(
    create_app: Callable[[Any], FastAPI], settings: ServiceSettings
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Run the app's lifespan (migrations included) and talk to it over ASGI, with the test keys trusted."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        app.state.verifier.use_keys(JWKS)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield app, client
