"""The system under test: the fleet started by customer_cli.fleet against PostgreSQL (or a running stack via
GATEWAY_URL), and what the bench needs in it: customers, a catalogue with ample stock, carriers with room.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from customer_cli.fleet import (
    SERVICES,
    TEST_ADMIN_EMAIL,
    TEST_ADMIN_PASSWORD,
    Fleet,
    PostgresServer,
    postgres_fleet,
    recreate_fleet_databases,
)

DB_PREFIX = "cs_bench"
# The server the bench makes its databases on: the tests' (TEST_PG_ADMIN_DSN, TEST_PG_URL_BASE, TEST_DB_SUFFIX).
POSTGRES = PostgresServer.from_env()
# What the bench changes in the fleet's test settings, towards a deployment's: no fault-injection middleware
# (a test-only layer), the services' own database pool size instead of the suite's small one, and registry
# heartbeats every 5 s instead of every second (the suite's pace, for quick registration; 30 s by default).
BENCH_ENV = {"FAULT_INJECTION": "false", "DB_POOL_SIZE": "10", "PASSWORD_HASH_RATE_PER_ADDRESS": "0",
             "MAX_UNFINISHED_SAGAS_PER_CUSTOMER": "10000",
             "EUREKA_RENEWAL_INTERVAL_SECS": "5", "EUREKA_LEASE_DURATION_SECS": "15"}
COUNTRIES = ("DE", "FR", "NL", "BE")
CUSTOMERS = 16
SKUS = 8
SERVICE_CLIENT_ID = "saga-orchestrator"


@dataclass
class Customer:
    email: str
    password: str
    user_id: str
    token: str = ""
    order_id: str = ""  # one order of theirs, for the GET of the gateway-overhead phase

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Stack:
    gateway_url: str
    # package → base URL of one instance (the direct calls of the bare client and the overhead phase)
    services: dict[str, str]
    # process name → pid, when the bench started the fleet (memory and CPU figures)
    pids: dict[str, int]
    fleet: Fleet | None
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6].upper())
    customers: list[Customer] = field(default_factory=list)
    skus: list[dict[str, Any]] = field(default_factory=list)

    def stop(self) -> None:
        if self.fleet is not None:
            self.fleet.stop_all()


def log_dir() -> Path:
    workdir = Path(os.environ.get("BENCH_LOG_DIR") or tempfile.mkdtemp(prefix="bench-fleet-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def start_fleet(extra_env: dict[str, str] | None = None) -> Stack:
    """Every service as its own process on free ports, against fresh cs_bench_* databases."""
    workdir = log_dir()
    fleet = postgres_fleet(workdir, POSTGRES, DB_PREFIX, {**BENCH_ENV, **(extra_env or {})})
    recreate_fleet_databases(POSTGRES, DB_PREFIX)
    fleet.start_all()
    pids = {name: proc.popen.pid for name, proc in fleet.processes.items() if proc.popen is not None}
    if fleet.registry is not None and fleet.registry.popen is not None:
        pids["registry"] = fleet.registry.popen.pid
    if fleet.nats is not None and fleet.nats.popen is not None:  # the bus's server: its CPU is the bus's cost too
        pids["nats-server"] = fleet.nats.popen.pid
    services = {name: proc.url for name, proc in fleet.processes.items()}
    print(f"fleet up, logs in {workdir}", flush=True)
    return Stack(fleet.gateway_url, services, pids, fleet)


def attach(gateway_url: str) -> Stack:
    """A running stack: direct service URLs come from its registry (BENCH_REGISTRY_URL), when reachable."""
    registry = os.environ.get("BENCH_REGISTRY_URL", "http://127.0.0.1:8761/eureka")
    services: dict[str, str] = {}
    try:
        for package, app in SERVICES.items():
            answer = httpx.get(f"{registry}/apps/{app}", headers={"Accept": "application/json"}, timeout=5)
            if answer.status_code != 200:
                continue
            instances = answer.json()["application"]["instance"]
            instances = [instances] if isinstance(instances, dict) else instances
            up = [i for i in instances if i["status"] == "UP"]
            if up:
                services[package] = f"http://{up[0]['ipAddr']}:{up[0]['port']['$']}"
    except httpx.HTTPError:
        print(f"registry {registry} unreachable: the direct and nginx phases are skipped", flush=True)
    return Stack(gateway_url.rstrip("/"), services, {}, None)


def _check(response: httpx.Response, *expected: int) -> dict[str, Any]:
    if response.status_code not in expected:
        raise RuntimeError(f"{response.request.method} {response.request.url} → {response.status_code}: "
                           f"{response.text[:500]}")
    body: dict[str, Any] = response.json() if response.content else {}
    return body


def login(api: httpx.Client, email: str, password: str) -> str:
    body = _check(api.post("/api/auth/login", json={"email": email, "password": password}), 200)
    return str(body["access_token"])


def service_secret(stack: Stack) -> str:
    """The orchestrator's client secret (the bare client and the DBOS peer make the orchestrator's calls): the
    fleet's generated one, or BENCH_SERVICE_SECRET for a running stack (there is no default secret)."""
    if stack.fleet is not None:
        return stack.fleet.service_secret
    secret = os.environ.get("BENCH_SERVICE_SECRET", "")
    if not secret:
        raise RuntimeError("a running stack's service token needs BENCH_SERVICE_SECRET")
    return secret


def service_token(stack: Stack) -> str:
    """The orchestrator's own credentials, from auth_service's own port (the gateway routes no service tokens):
    for a running stack at BENCH_AUTH_URL (default: the direct auth_service URL found in its registry)."""
    secret = service_secret(stack)
    auth_url = stack.fleet.auth_url if stack.fleet is not None else (
        os.environ.get("BENCH_AUTH_URL") or stack.services.get("auth_service", ""))
    if not auth_url:
        raise RuntimeError("a running stack's service token needs BENCH_AUTH_URL")
    with httpx.Client(base_url=auth_url, timeout=30) as api:
        body = _check(api.post("/api/auth/token", data={
            "grant_type": "client_credentials", "client_id": SERVICE_CLIENT_ID, "client_secret": secret}), 200)
    return str(body["access_token"])


def admin_token(stack: Stack) -> str:
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as api:
        return login(api, os.environ.get("BENCH_ADMIN_EMAIL", TEST_ADMIN_EMAIL),
                     os.environ.get("BENCH_ADMIN_PASSWORD", TEST_ADMIN_PASSWORD))


def refresh_tokens(stack: Stack) -> None:
    """Fresh access tokens for every customer (they live 15 minutes; each phase starts with new ones)."""
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as api:
        for customer in stack.customers:
            customer.token = login(api, customer.email, customer.password)


def prepare(stack: Stack) -> None:
    """Customers, SKUs with a billion units each and one carrier per country with the largest daily capacity."""
    admin_email = os.environ.get("BENCH_ADMIN_EMAIL", TEST_ADMIN_EMAIL)
    admin_password = os.environ.get("BENCH_ADMIN_PASSWORD", TEST_ADMIN_PASSWORD)
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as api:
        admin = {"Authorization": f"Bearer {login(api, admin_email, admin_password)}"}
        for i in range(SKUS):
            sku = {"sku": f"BENCH-{stack.tag}-{i}", "name": f"Bench widget {i}", "unit_price_minor": 1000 + 10 * i,
                   "currency": "EUR", "weight_grams": 200 + 50 * i, "on_hand": 1_000_000_000}
            _check(api.post("/api/inventory/products", headers=admin, json=sku), 201)
            stack.skus.append(sku)
        for country in COUNTRIES:
            _check(api.post("/api/carriers", headers=admin, json={
                "code": f"B{stack.tag}{country}", "name": f"Bench Parcel {country}", "countries": [country],
                # Free, so it is the cheapest and wins over any carrier a running stack already has.
                "max_weight_grams": 100_000_000, "daily_capacity": 1_000_000, "base_price_minor": 0,
                "price_per_kg_minor": 0, "currency": "EUR"}), 201)
        for i in range(CUSTOMERS):
            email = f"bench-{stack.tag.lower()}-{i}@example.com"
            password = "bench password long enough"
            user = _check(api.post("/api/auth/register", json={"email": email, "password": password}), 201)
            customer = Customer(email, password, str(user["id"]), login(api, email, password))
            order = _check(api.post("/api/orders", headers=customer.headers, json={"currency": "EUR"}), 201)
            customer.order_id = str(order["id"])
            stack.customers.append(customer)


def address(number: int) -> dict[str, str]:
    return {"name": f"Bench customer {number}", "line1": f"{number} Bench Street", "city": "Benchtown",
            "postal_code": f"{10000 + number}", "country": COUNTRIES[number % len(COUNTRIES)]}
