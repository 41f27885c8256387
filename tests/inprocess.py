"""Service-level tests: one service's app in this process, on a fresh PostgreSQL database, with test tokens."""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from jose import jwk, jwt
from sqlalchemy import func, select

from shared.bus import outbox
from shared.db import Database
from shared.errors import PROBLEM_JSON
from shared.events import CATALOGUE, CloudEvent
from shared.settings import ServiceSettings
from tests.postgres import suite_server

_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PRIVATE_PEM = _KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()
PUBLIC_PEM = _KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
).decode()
KID = "test-key"
JWKS = {"keys": [{**jwk.construct(PUBLIC_PEM, "RS256").to_dict(), "kid": KID, "use": "sig"}]}


# Module-level headers (ADMIN, SERVICE, …) are minted at import: they must outlive the longest test session
# on the slowest machine, not the ten minutes of a real access token.
TEST_TOKEN_SECS = 12 * 3600


def mint(subject: str = "customer-1", roles: tuple[str, ...] = ("customer",), **claims: Any) -> str:
    now = int(time.time())
    body = {
        "sub": subject, "roles": list(roles), "email": f"{subject}@example.com", "typ": "access",
        "iss": "customer-service-auth", "aud": "customer-service", "iat": now, "exp": now + TEST_TOKEN_SECS,
        "jti": uuid.uuid4().hex, **claims,
    }
    return str(jwt.encode(body, PRIVATE_PEM, algorithm="RS256", headers={"kid": KID}))


def bearer(subject: str = "customer-1", roles: tuple[str, ...] = ("customer",)) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(subject, roles)}"}


PROBLEM = PROBLEM_JSON  # the content type of every refusal


def changed(body: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """A copy of a valid request body with fields changed, or dropped where the change says None."""
    result = {**body, **change}
    return {key: value for key, value in result.items() if change.get(key, ...) is not None}
ADMIN = bearer("admin-1", ("admin",))
SERVICE = bearer("service:saga-orchestrator", ("service",))


def fresh_database_url(name: str) -> str:
    server = suite_server()  # looked up here, not at import: the embedded server starts only when needed
    server.recreate_databases([name])
    return server.url(name)


# The two databases of the data path (shared.db): every service's tests run on both, PostgreSQL (asyncpg
# directly) as in production and SQLite (SQLAlchemy Core) as the local runner runs.
BACKENDS = ["postgresql", "sqlite"]


def backend_database_url(backend: str, name: str) -> str:
    """A fresh, empty database of the backend."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp(prefix=f'{name}-')) / f'{name}.db'}"
    return fresh_database_url(name)


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


Served = tuple[FastAPI, httpx.AsyncClient]


def service_fixtures(create_app: Callable[[Any], FastAPI], settings_class: type[ServiceSettings], database: str,
                     **settings: Any) -> tuple[Any, Any]:
    """A test module's `served` (the service's app and a client, once per module and database backend, on a
    fresh database) and `client` fixtures: `served, client = service_fixtures(create_app, Settings,
    "cs_unit_payment")`. Every test of the module runs on PostgreSQL and on SQLite (BACKENDS)."""

    @pytest.fixture(scope="module", params=BACKENDS)
    async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
        configured = settings_class(database_url=backend_database_url(request.param, database), eureka_server_url="",
                                    **settings)
        async with running_app(create_app, configured) as app_and_client:
            yield app_and_client

    @pytest.fixture(scope="module")
    def client(served: Served) -> httpx.AsyncClient:
        return served[1]

    return served, client


# What an event says, as a test compares it: (type, subject, orderid, data).
Said = tuple[str, str, str | None, dict[str, Any]]


class OutboxWatch:
    """The events a service wrote into its outbox since the watch began: `await OutboxWatch.of(app)`, act, then
    `await watch.new()`. With NATS_URL empty nothing is relayed, so every event the service emits stays there."""

    def __init__(self, db: Database, position: int) -> None:
        self.db = db
        self.position = position

    @classmethod
    async def of(cls, app: FastAPI) -> OutboxWatch:
        async with app.state.db.autocommit() as tx:
            return cls(app.state.db, int(await tx.fetchval(select(func.max(outbox.c.position))) or 0))

    async def new(self) -> list[Said]:
        """The events written since the last look, in commit order, each checked against its catalogue model."""
        async with self.db.autocommit() as tx:
            rows = await tx.fetch(select(outbox.c.position, outbox.c.envelope)
                                  .where(outbox.c.position > self.position).order_by(outbox.c.position))
        if rows:
            self.position = int(rows[-1]["position"])
        said: list[Said] = []
        for row in rows:
            event = CloudEvent.model_validate(row["envelope"])
            CATALOGUE[event.type].model_validate(event.data)  # the data is what its model says
            said.append((event.type, event.subject, event.orderid, event.data))
        return said
