"""auth_service in this process on a fresh PostgreSQL database: app, client, users, and token forgery kit."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI
from jose import jwt

from auth_service.app import create_app
from auth_service.keys import generate_private_pem, list_signing_keys
from auth_service.models import KeyRecord
from auth_service.settings import Settings
from tests.inprocess import fresh_database_url

AppAndClient = tuple[FastAPI, httpx.AsyncClient]
ADMIN_EMAIL = "admin@auth.test"
ADMIN_PASSWORD = "auth-admin-password"
PASSWORD = "correct horse battery"
SERVICE_SECRET = "auth-test-service-secret-0123456789abcdef"
GATEWAY_SECRET = "auth-test-gateway-secret-0123456789abcdef"


def auth_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "database_url": database_url,
        "eureka_server_url": "",
        "bootstrap_admin_email": ADMIN_EMAIL,
        "bootstrap_admin_password": ADMIN_PASSWORD,
        "service_client_secret": SERVICE_SECRET,
        "gateway_client_secret": GATEWAY_SECRET,
        "login_failure_delay_secs": 0,
        "log_json": False,
        "log_level": "WARNING",
        **overrides,
    }
    return Settings(**values)


@asynccontextmanager
async def running(settings: Settings, client_address: str = "127.0.0.1") -> AsyncIterator[AppAndClient]:
    """The app with its lifespan run (migrations, signing key, bootstrap admin), reached over ASGI."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(client_address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://auth.test") as client:
            yield app, client


@pytest.fixture(scope="module")
def database_url() -> str:
    return fresh_database_url("cs_unit_auth")


@pytest.fixture(scope="module")
async def auth(database_url: str) -> AsyncIterator[AppAndClient]:
    async with running(auth_settings(database_url)) as pair:
        yield pair


@pytest.fixture(scope="module")
def app(auth: AppAndClient) -> FastAPI:
    return auth[0]


@pytest.fixture(scope="module")
def client(auth: AppAndClient) -> httpx.AsyncClient:
    return auth[1]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Account:
    id: str
    email: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.access_token)


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def new_account(client: httpx.AsyncClient) -> Account:
    email = f"user-{uuid.uuid4().hex[:12]}@example.com"
    response = await client.post("/api/auth/register", json={"email": email, "password": PASSWORD})
    assert response.status_code == 201, response.text
    tokens = await login(client, email)
    return Account(response.json()["id"], email, PASSWORD, tokens["access_token"], tokens["refresh_token"])


@pytest.fixture
async def account(client: httpx.AsyncClient) -> Account:
    return await new_account(client)


@pytest.fixture
async def admin_headers(client: httpx.AsyncClient) -> dict[str, str]:
    return bearer((await login(client, ADMIN_EMAIL, ADMIN_PASSWORD))["access_token"])


# --- forging tokens ---------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unverified_kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def claims_for(subject: str = "user-1", **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": "customer-service-auth", "aud": "customer-service", "sub": subject, "roles": ["customer"],
        "email": f"{subject}@example.com", "typ": "access", "iat": now, "exp": now + 300,
        "jti": uuid.uuid4().hex, **overrides,
    }


def hand_made_token(header: dict[str, Any], claims: dict[str, Any], sign: Any) -> str:
    """A JWT assembled by hand, for what libraries refuse to produce (alg none, HS256 keyed with a PEM)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def hs256_with(secret: bytes) -> Any:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def other_rsa_private_pem() -> str:
    """A fresh RSA key, made as auth_service makes its own: not the one the service under test signs with."""
    return generate_private_pem()


def public_pem_of(private_pem: str) -> bytes:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def current_signing_key(app: FastAPI) -> KeyRecord:
    async with app.state.db.autocommit() as tx:
        return next(key for key in await list_signing_keys(tx) if key.retired_at is None)
