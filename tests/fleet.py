"""Start the fleet as real uvicorn processes on free ports, against real PostgreSQL databases."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_DSN = os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_URL_BASE = os.environ.get("TEST_PG_URL_BASE", "postgresql+asyncpg://postgres@127.0.0.1:5432")

# package → Eureka app name; the order the fleet starts in.
SERVICES = {
    "auth_service": "AUTH-SERVICE",
    "order_service": "ORDER-SERVICE",
    "inventory_service": "INVENTORY-SERVICE",
    "payment_service": "PAYMENT-SERVICE",
    "carrier_service": "CARRIER-SERVICE",
    "shipment_service": "SHIPMENT-SERVICE",
    "saga_orchestrator": "SAGA-ORCHESTRATOR",
    "gateway": "GATEWAY",
}
NO_DATABASE = {"gateway"}
# Appended to every test database's name, so that several checkouts can run the suite on one server at once.
DB_SUFFIX = os.environ.get("TEST_DB_SUFFIX", "")
ADMIN_EMAIL = "admin@fleet.test"
ADMIN_PASSWORD = "fleet-admin-password"
REGISTRY_USER = "eureka"
# The scrape credential every /metrics of the test fleet takes (METRICS_TOKEN); an admin token works too.
METRICS_TOKEN = "fleet-metrics-token"
METRICS_HEADERS = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def recreate_databases(names: list[str]) -> None:
    """Drop and create each database (names are given without DB_SUFFIX; it is appended here)."""
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        for name in (f"{n}{DB_SUFFIX}" for n in names):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')


@dataclass
class ServiceProcess:
    name: str
    package: str
    port: int
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", self.package],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def inject_fault(self, path_regex: str, method: str = "POST", status: int = 503, count: int = 1,
                     delay_ms: int = 0) -> None:
        """Make the service fail (status 0: only delay) the matching requests, through its test-only /_faults."""
        response = httpx.post(f"{self.url}/_faults", json={
            "method": method, "path_regex": path_regex, "status": status, "count": count, "delay_ms": delay_ms})
        assert response.status_code == 201, response.text

    def clear_faults(self) -> None:
        if self.alive():
            httpx.delete(f"{self.url}/_faults")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if not self.alive():
            return
        assert self.popen is not None
        os.killpg(self.popen.pid, sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Fleet:
    workdir: Path
    db_prefix: str = os.environ.get("FLEET_DB_PREFIX", "cs_test")
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    registry: ServiceProcess | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # Secrets made for this fleet alone (no published default works anywhere): the registry's password and
    # the services' client secret. auth_service keeps one port, the address every service is configured with.
    registry_password: str = field(default_factory=lambda: secrets.token_hex(16))
    service_secret: str = field(default_factory=lambda: secrets.token_hex(24))
    auth_port: int = field(default_factory=lambda: free_port())

    @property
    def registry_url(self) -> str:
        """The registry's API with its credentials, as the services are configured with it."""
        assert self.registry is not None
        return f"http://{REGISTRY_USER}:{self.registry_password}@127.0.0.1:{self.registry.port}/eureka"

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.auth_port}"

    @property
    def gateway_url(self) -> str:
        return self.processes["gateway"].url

    def database_url(self, package: str) -> str:
        return f"{PG_URL_BASE}/{self.db_prefix}_{package}{DB_SUFFIX}"

    def start_registry(self) -> None:
        env = {**os.environ, "PORT": str(free_port()), "EVICTION_INTERVAL_SECS": "1", "PYTHONUNBUFFERED": "1",
               "EUREKA_USERNAME": REGISTRY_USER, "EUREKA_PASSWORD": self.registry_password}
        self.registry = ServiceProcess("registry", "registry", int(env["PORT"]), env, self.workdir / "registry.log")
        self.registry.start()
        wait_http(f"{self.registry.url}/health", self.registry)

    def service_env(self, package: str, port: int, **overrides: str) -> dict[str, str]:
        env = {
            **os.environ,
            "ENV": "test",
            "PORT": str(port),
            "EUREKA_SERVER_URL": self.registry_url,
            "AUTH_URLS": self.auth_url,
            "SERVICE_CLIENT_SECRET": self.service_secret,
            "EUREKA_RENEWAL_INTERVAL_SECS": "1",
            "EUREKA_LEASE_DURATION_SECS": "3",
            "FAULT_INJECTION": "true",
            # Eight services and their replicas share one PostgreSQL (.ci/run raises max_connections to 300);
            # every pooled connection is kept open, none beyond the pool.
            "DB_POOL_SIZE": "8",
            "BOOTSTRAP_ADMIN_EMAIL": ADMIN_EMAIL,
            "BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            "METRICS_TOKEN": METRICS_TOKEN,
            **self.extra_env,
        }
        if package not in NO_DATABASE:
            env["DATABASE_URL"] = self.database_url(package)
        if package == "auth_service":
            # The load balancers in front of a gateway (tests/integration/test_login_throttling.py plays one on
            # 127.0.0.1). auth_service believes X-Forwarded-For only from the gateway's own service token.
            env["TRUSTED_PROXIES"] = "127.0.0.1"
        env.update(overrides)
        return env

    def start(self, package: str, name: str | None = None, wait: bool = True,
              env: dict[str, str] | None = None) -> ServiceProcess:
        """Start one instance (name defaults to the package; use another name for a second instance)."""
        name = name or package
        port = self.auth_port if name == "auth_service" else free_port()
        proc = ServiceProcess(name, package, port, self.service_env(package, port, **(env or {})),
                              self.workdir / f"{name}.log")
        self.processes[name] = proc
        proc.start()
        if wait:
            self.wait_up(proc)
        return proc

    def restart(self, name: str, wait: bool = True) -> ServiceProcess:
        proc = self.processes[name]
        proc.stop()
        proc.start()
        if wait:
            self.wait_up(proc)
        return proc

    def wait_up(self, proc: ServiceProcess, timeout: float = 60) -> None:
        wait_http(f"{proc.url}/health", proc, timeout)
        self.wait_registered(SERVICES[proc.package], proc.port, timeout)

    def wait_registered(self, app: str, port: int | None = None, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port in self.registered_ports(app) or (port is None and self.registered_ports(app)):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{app} (port {port}) did not register within {timeout}s")

    def replace(self, package: str, **env: str) -> ServiceProcess:
        """Stop the package's process, wait until the registry has dropped it, start it again with `env`."""
        old = self.processes[package]
        old.stop()
        self.wait_deregistered(SERVICES[package], old.port)
        return self.start(package, env=env)

    def wait_deregistered(self, app: str, port: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port not in self.registered_ports(app):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{app} (port {port}) is still registered after {timeout}s")

    def service_token(self, client_id: str = "saga-orchestrator") -> str:
        """A service token from auth_service's own port, as the services get theirs (the gateway routes none)."""
        response = httpx.post(f"{self.auth_url}/api/auth/token", data={
            "grant_type": "client_credentials", "client_id": client_id, "client_secret": self.service_secret})
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def registered_ports(self, app: str) -> set[int]:
        response = httpx.get(f"{self.registry_url}/apps/{app}", headers={"Accept": "application/json"}, timeout=5)
        if response.status_code != 200:
            return set()
        instances = response.json()["application"]["instance"]
        if isinstance(instances, dict):
            instances = [instances]
        return {int(i["port"]["$"]) for i in instances if i["status"] == "UP"}

    def stop_all(self) -> None:
        for proc in reversed(list(self.processes.values())):
            proc.stop()
        if self.registry is not None:
            self.registry.stop()


def wait_http(url: str, proc: ServiceProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited during start-up:\n{proc.logs()[-4000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{proc.name} did not answer {url} within {timeout}s:\n{proc.logs()[-4000:]}")
