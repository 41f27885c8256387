"""Fixtures shared by every test: the fleet of real processes, an HTTP client through the gateway, users."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.compose import ComposeStack, running_stack
from tests.fleet import ADMIN_EMAIL, ADMIN_PASSWORD, METRICS_TOKEN, SERVICES, Fleet, start_test_fleet
from tests.inprocess import fresh_database_url
from tests.postgres import stop_embedded

# A running stack instead of the suite's own fleet (e.g. `docker compose up`: README, "Running in containers").
EXTERNAL_GATEWAY = os.environ.get("GATEWAY_URL", "")
# Its admin: the variables docker-compose.yml gives auth_service (with the same development defaults).
STACK_ADMIN_EMAIL = os.environ.get("BOOTSTRAP_ADMIN_EMAIL", "admin@example.com")
STACK_ADMIN_PASSWORD = os.environ.get("BOOTSTRAP_ADMIN_PASSWORD", "admin-password-dev")
# In-process apps read their settings from the environment: their /metrics take the fleet's scrape token too.
os.environ.setdefault("METRICS_TOKEN", METRICS_TOKEN)
# Every test's client is 127.0.0.1: auth_service's per-address bound on password hashing would stop the suite
# (tests/integration/test_attacks.py runs an instance with it on).
os.environ.setdefault("PASSWORD_HASH_RATE_PER_ADDRESS", "0")
# Tests place many concurrent sagas for one customer; the per-customer bound has its own test.
os.environ.setdefault("MAX_UNFINISHED_SAGAS_PER_CUSTOMER", "10000")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The embedded PostgreSQL (tests/postgres.py), when the run started one, stops after the last test."""
    done = stop_embedded()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if done and reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(done)


@pytest.fixture(scope="session")
def fleet() -> Iterator[Fleet]:
    """The whole fleet, started once per test session. Tests that stop a service must restart it."""
    if EXTERNAL_GATEWAY:
        pytest.skip("GATEWAY_URL is set: the suite targets a running stack and cannot manage processes")
    packages = list(SERVICES)  # a service that is gone makes its tests fail, never skip
    workdir = Path(os.environ.get("FLEET_LOG_DIR") or tempfile.mkdtemp(prefix="fleet-logs-"))
    workdir.mkdir(parents=True, exist_ok=True)
    fleet = start_test_fleet(workdir, packages)
    try:
        yield fleet
    finally:
        fleet.stop_all()


@pytest.fixture(params=["postgresql", "sqlite"])
def migrations_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind the services run on, for a test that migrates it step by step."""
    service = request.module.__name__.split(".")[-2]  # tests/<service>/test_migrations.py
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/{service}.db"
    return fresh_database_url(f"cs_unit_{service}_migrations")


@pytest.fixture(scope="session")
def gateway_url(request: pytest.FixtureRequest) -> str:
    if EXTERNAL_GATEWAY:
        return EXTERNAL_GATEWAY.rstrip("/")
    fleet: Fleet = request.getfixturevalue("fleet")
    return fleet.gateway_url


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest) -> Fleet | ComposeStack:
    """What the tests reach into (logs, faults, killing and restarting a component): the suite's own fleet, or
    with GATEWAY_URL the compose stack behind it (tests/compose.py), through Docker."""
    if not EXTERNAL_GATEWAY:
        fleet: Fleet = request.getfixturevalue("fleet")
        return fleet
    compose = running_stack()
    if compose is None:
        pytest.skip("GATEWAY_URL is not a docker compose stack of this machine: its components cannot be reached")
    return compose


def instances(stack: Fleet | ComposeStack, package: str) -> list[Any]:
    """Every running instance of a package (the fleet's processes, or a compose service's replicas)."""
    return [p for p in stack.processes.values() if p.package == package]


@pytest.fixture
def faults(stack: Fleet | ComposeStack) -> Iterator[Callable[..., None]]:
    """Inject faults into a service (by process name; every replica of it in a compose stack); every touched
    service's faults are cleared after."""
    touched: set[str] = set()

    def targets(name: str) -> list[Any]:
        if isinstance(stack, ComposeStack) and name in SERVICES:
            return list(stack.replicas(name))
        return [stack.processes[name]]

    def inject(name: str, path_regex: str, method: str = "POST", status: int = 503, count: int = 1,
               delay_ms: int = 0) -> None:
        for target in targets(name):
            target.inject_fault(path_regex, method, status, count, delay_ms)
        touched.add(name)

    yield inject
    for name in touched:
        for target in targets(name):
            target.clear_faults()


@pytest.fixture
def api(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_url, timeout=30) as client:
        yield client


@dataclass
class User:
    email: str
    password: str
    token: str
    user_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def login(client: httpx.Client, email: str, password: str) -> str:
    response = client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def register_customer(client: httpx.Client) -> User:
    email = f"customer-{uuid.uuid4().hex[:10]}@example.com"
    password = "correct horse battery"
    response = client.post("/api/auth/register", json={"email": email, "password": password})
    assert response.status_code == 201, response.text
    token = login(client, email, password)
    return User(email, password, token, str(response.json()["id"]))


@pytest.fixture
def customer(api: httpx.Client) -> User:
    return register_customer(api)


@pytest.fixture(scope="session")
def admin(gateway_url: str) -> User:
    email, password = (STACK_ADMIN_EMAIL, STACK_ADMIN_PASSWORD) if EXTERNAL_GATEWAY else (ADMIN_EMAIL, ADMIN_PASSWORD)
    with httpx.Client(base_url=gateway_url, timeout=30) as client:
        token = login(client, email, password)
        me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200, me.text
        return User(email, password, token, str(me.json()["id"]))
