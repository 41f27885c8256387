"""The fleet supervisor: every component as its own process, started, watched, faulted and stopped in one place.

The CLI's `up` (SQLite under var/, the default ports, demo data), the tests (PostgreSQL, free ports, fault
injection) and the bench (PostgreSQL, its own settings) all use it; they differ by the data they pass in, never by
copies of the code: `local_fleet()` and `postgres_fleet()` below are the two configurations.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from customer_cli import local_secrets
from customer_cli.nats import NatsServer, generate_passwords
from customer_cli.processes import free_port, spawn
from shared.bus import BusConfig


@dataclass(frozen=True)
class Component:
    package: str
    app: str  # its Eureka application name ("" for the registry itself)
    port: int  # its default port (the CLI's `up`; the tests and the bench take free ports)
    database: bool
    # Given SERVICE_CLIENT_SECRET (its settings' holds_service_secret): the orchestrator's, which auth_service checks,
    # and the gateway's own. The saga's participants get none, whatever the shell exports.
    holds_secret: bool = False


# The fleet, in the order it starts: the registry first, auth_service next (the others fetch its keys), the gateway
# last.
COMPONENTS: dict[str, Component] = {c.package: c for c in (
    Component("registry", "", 8761, False),
    Component("auth_service", "AUTH-SERVICE", 8001, True, holds_secret=True),
    Component("order_service", "ORDER-SERVICE", 8002, True),
    Component("inventory_service", "INVENTORY-SERVICE", 8003, True),
    Component("payment_service", "PAYMENT-SERVICE", 8004, True),
    Component("carrier_service", "CARRIER-SERVICE", 8005, True),
    Component("shipment_service", "SHIPMENT-SERVICE", 8006, True),
    Component("saga_orchestrator", "SAGA-ORCHESTRATOR", 8007, True, holds_secret=True),
    Component("gateway", "GATEWAY", 8080, False, holds_secret=True),
)}
# The services (every component but the registry): package → Eureka application name.
SERVICES: dict[str, str] = {c.package: c.app for c in COMPONENTS.values() if c.app}
NO_DATABASE: set[str] = {package for package in SERVICES if not COMPONENTS[package].database}
SEEDS = ("inventory_service.seed", "carrier_service.seed")
# Every default port (+ the local fleet's offset): the components' and the bus's (its clients', its monitoring).
DEFAULT_PORTS: dict[str, int] = {**{c.package: c.port for c in COMPONENTS.values()}, "nats": 4222,
                                 "nats_monitor": 8222}

# The demo admin of the CLI's local fleet; its password is generated at the first run (var/secrets.json).
DEMO_ADMIN_EMAIL = "admin@example.com"
# The registry's user; its password is the fleet's own (generated, never published).
REGISTRY_USER = "eureka"
# The admin of a fleet on PostgreSQL (the tests', the bench's): it never leaves this machine.
TEST_ADMIN_EMAIL = "admin@fleet.test"
TEST_ADMIN_PASSWORD = "fleet-admin-password"
# The scrape credential every /metrics of a fleet on PostgreSQL takes (METRICS_TOKEN); an admin token works too.
METRICS_TOKEN = "fleet-metrics-token"
METRICS_HEADERS = {"Authorization": f"Bearer {METRICS_TOKEN}"}




def _as_list(value: object) -> list[dict[str, object]]:
    """Eureka's JSON gives a single instance as an object and several as a list."""
    if isinstance(value, dict):
        return [value]
    return value if isinstance(value, list) else []


@dataclass
class ServiceProcess:
    """One component's process: `python -m PACKAGE` with its environment, its output in its log file."""

    name: str
    package: str
    port: int
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, module: str | None = None) -> None:
        self.popen = spawn(module or self.package, self.env, self.log_path)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_healthy(self, timeout: float = 60) -> None:
        """Until /health answers 200; fails at once with the log's tail when the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited during start-up (log {self.log_path}):\n{self.logs()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not answer {self.url}/health within {timeout}s "
                           f"(log {self.log_path}):\n{self.logs()[-4000:]}")

    def inject_fault(self, path_regex: str, method: str = "POST", status: int = 503, count: int = 1,
                     delay_ms: int = 0) -> None:
        """Make the service fail (status 0: only delay) the matching requests, through its test-only /_faults."""
        response = httpx.post(f"{self.url}/_faults", json={
            "method": method, "path_regex": path_regex, "status": status, "count": count, "delay_ms": delay_ms})
        if response.status_code != 201:
            raise RuntimeError(f"{self.name} refused the fault: {response.status_code} {response.text}")

    def clear_faults(self) -> None:
        if self.alive():
            httpx.delete(f"{self.url}/_faults")

    def send(self, sig: int) -> None:
        if self.alive():
            assert self.popen is not None
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def wait_stopped(self, timeout: float) -> None:
        """Until the process has exited; SIGKILL when it has not within `timeout` seconds."""
        if self.popen is None:
            return
        try:
            self.popen.wait(max(0.1, timeout))
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.popen.wait(5)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if not self.alive():
            return
        self.send(sig)
        self.wait_stopped(timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Fleet:
    """The components of one fleet. What differs between fleets is data: where each package's database is, which
    ports (default + offset, or free ones), the environment of every service and of some packages, its secrets."""

    workdir: Path  # the log files (and, for the local fleet, the SQLite databases)
    database_url: Callable[[str], str]  # package → its DATABASE_URL
    db_prefix: str = ""  # a fleet on PostgreSQL: its databases are <db_prefix>_<package>
    env: dict[str, str] = field(default_factory=dict)  # every service's settings, over the supervisor's own
    package_env: dict[str, dict[str, str]] = field(default_factory=dict)  # package → settings of it alone
    registry_env: dict[str, str] = field(default_factory=dict)
    port_offset: int | None = None  # None: a free port for every process; else default port + offset
    # Secrets made for this fleet alone (no published default works anywhere): the services' client secret, the
    # gateway's own one and the registry's password. auth_service keeps one port: every service is configured
    # with its address.
    service_secret: str = field(default_factory=lambda: secrets.token_hex(24))
    gateway_secret: str = field(default_factory=lambda: secrets.token_hex(24))
    registry_password: str = field(default_factory=lambda: secrets.token_hex(16))
    # The bus: a nats-server of the fleet's own with its store under nats_dir, every service connecting as its
    # own user (customer_cli/nats.py) with a password made for this fleet. nats_dir None: no server of its own;
    # the environment's NATS_URL (and NATS_USER, NATS_PASSWORD) reach every service as they are.
    nats_dir: Path | None = None
    nats_passwords: dict[str, str] = field(default_factory=generate_passwords)
    auth_port: int = 0  # 0: its default port (+ offset), or a free one
    welcome: str = ""  # said once the fleet is up (run_until_interrupted)
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    registry: ServiceProcess | None = None
    nats: NatsServer | None = None  # made (not started) when the fleet is, from nats_dir

    def __post_init__(self) -> None:
        if not self.auth_port:
            self.auth_port = self.port("auth_service")
        if self.nats is None and self.nats_dir is not None:
            self.nats = NatsServer(self.nats_dir, self.port("nats"), self.port("nats_monitor"), self.nats_passwords,
                                   log_path=self.log_path("nats"))

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

    def port(self, name: str) -> int:
        """A component's port, or the bus's ("nats", "nats_monitor")."""
        return free_port() if self.port_offset is None else DEFAULT_PORTS[name] + self.port_offset

    def log_path(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def service_env(self, package: str, port: int, **overrides: str) -> dict[str, str]:
        env = {
            **os.environ,
            "PORT": str(port),
            "PYTHONUNBUFFERED": "1",
            "EUREKA_SERVER_URL": self.registry_url,
            "AUTH_URLS": self.auth_url,
            **({"GATEWAY_CLIENT_SECRET": self.gateway_secret} if package == "auth_service" else {}),
            **self.env,
            **self.package_env.get(package, {}),
        }
        if COMPONENTS[package].holds_secret:
            env["SERVICE_CLIENT_SECRET"] = self.gateway_secret if package == "gateway" else self.service_secret
        else:
            env.pop("SERVICE_CLIENT_SECRET", None)
        if COMPONENTS[package].database:
            env["DATABASE_URL"] = self.database_url(package)
        if self.nats is not None:  # the package's own NATS user (the gateway's is "gateway")
            env.update(NATS_URL=self.nats.url, NATS_USER=package, NATS_PASSWORD=self.nats_passwords[package])
        env.update(overrides)
        return env

    def bus_config(self, user: str) -> BusConfig:
        """How to connect to the fleet's bus as `user` (one of customer_cli.nats.NATS_USERS; the CLI's is
        "operator"). On the environment's bus: the environment's NATS_URL, NATS_USER and NATS_PASSWORD."""
        if self.nats is None:
            return BusConfig(os.environ.get("NATS_URL", ""), os.environ.get("NATS_USER", ""),
                             os.environ.get("NATS_PASSWORD", ""), name=f"customer-service-{user}")
        return self.nats.bus_config(user)

    def start_registry(self) -> ServiceProcess:
        port = self.port("registry")
        env = {**os.environ, "PORT": str(port), "PYTHONUNBUFFERED": "1", **self.registry_env,
               "EUREKA_USERNAME": REGISTRY_USER, "EUREKA_PASSWORD": self.registry_password}
        self.registry = ServiceProcess("registry", "registry", port, env, self.log_path("registry"))
        self.registry.start()
        self.registry.wait_healthy()
        return self.registry

    def start(self, package: str, name: str | None = None, wait: bool = True,
              env: dict[str, str] | None = None) -> ServiceProcess:
        """Start one instance (name defaults to the package; use another name for a second instance)."""
        name = name or package
        port = self.auth_port if name == "auth_service" else self.port(package)
        proc = ServiceProcess(name, package, port, self.service_env(package, port, **(env or {})),
                              self.log_path(name))
        self.processes[name] = proc
        proc.start()
        if wait:
            self.wait_up(proc)
        return proc

    @contextmanager
    def extra(self, package: str, name: str, wait: bool = True,
              env: dict[str, str] | None = None) -> Iterator[ServiceProcess]:
        """A further instance under its own name (a test's second gateway, a replica): stopped and forgotten
        when the block ends."""
        proc = self.start(package, name=name, wait=wait, env=env)
        try:
            yield proc
        finally:
            proc.stop()
            self.processes.pop(name, None)

    def start_all(self, packages: list[str] | None = None) -> None:
        """The registry, auth_service (the others fetch its keys), the rest together, the gateway last."""
        wanted = list(SERVICES) if packages is None else packages
        try:
            self.start_registry()
            if self.nats is not None:
                self.nats.start()
                self.nats.wait_ready()
            if "auth_service" in wanted:
                self.start("auth_service")
            others = [self.start(p, wait=False) for p in wanted if p not in ("auth_service", "gateway")]
            for proc in others:
                self.wait_up(proc)
            if "gateway" in wanted:
                self.start("gateway")
        except BaseException:
            self.stop_all()
            raise

    def restart(self, name: str, wait: bool = True) -> ServiceProcess:
        proc = self.processes[name]
        proc.stop()
        proc.start()
        if wait:
            self.wait_up(proc)
        return proc

    def replace(self, package: str, **env: str) -> ServiceProcess:
        """Stop the package's process, wait until the registry has dropped it, start it again with `env`."""
        old = self.processes[package]
        old.stop()
        self.wait_deregistered(SERVICES[package], old.port)
        return self.start(package, env=env)

    def wait_up(self, proc: ServiceProcess, timeout: float = 60) -> None:
        proc.wait_healthy(timeout)
        self.wait_registered(SERVICES[proc.package], proc.port, timeout)

    def wait_registered(self, app: str, port: int | None = None, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port in self.registered_ports(app) or (port is None and self.registered_ports(app)):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{app} (port {port}) did not register within {timeout}s")

    def wait_deregistered(self, app: str, port: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port not in self.registered_ports(app):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{app} (port {port}) is still registered after {timeout}s")

    def service_token(self, client_id: str = "saga-orchestrator") -> str:
        """A service token from auth_service's own port, as the services get theirs (the gateway routes none)."""
        secret = self.gateway_secret if client_id == "gateway" else self.service_secret
        response = httpx.post(f"{self.auth_url}/api/auth/token", data={
            "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret})
        if response.status_code != 200:
            raise RuntimeError(f"no service token for {client_id}: {response.status_code} {response.text}")
        return str(response.json()["access_token"])

    def registered_ports(self, app: str) -> set[int]:
        """The ports of the app's instances the registry lists as UP."""
        try:
            response = httpx.get(f"{self.registry_url}/apps/{app}", headers={"Accept": "application/json"},
                                 timeout=5)
        except httpx.HTTPError:
            return set()
        if response.status_code != 200:
            return set()
        instances = _as_list(response.json()["application"].get("instance"))
        return {int(i["port"]["$"]) for i in instances if i["status"] == "UP"}  # type: ignore[index]

    def wait_routable(self, timeout: float = 60) -> None:
        """Until every running service is UP in the registry and the gateway has had time to see it."""
        for proc in self.processes.values():
            self.wait_registered(SERVICES[proc.package], proc.port, timeout)
        # The gateway refreshes its copy of the registry once per renewal interval.
        time.sleep(float(self.service_env("gateway", 0).get("EUREKA_RENEWAL_INTERVAL_SECS", "30")) + 1)

    def seed(self) -> None:
        """Load the demo catalogue and carriers into the services' databases (each seed module in its own process)."""
        for module in SEEDS:
            package = module.split(".")[0]
            env = {**os.environ, **self.env, **self.package_env.get(package, {}),
                   "DATABASE_URL": self.database_url(package)}
            log_path = self.log_path(f"{package}-seed")
            if spawn(module, env, log_path).wait(120) != 0:
                raise RuntimeError(f"{module} failed; see {log_path}")

    def dead(self) -> list[ServiceProcess]:
        every = [*([self.registry] if self.registry else []), *self.processes.values()]
        return [proc for proc in every if proc.popen is not None and not proc.alive()]

    def stop_all(self, timeout: float = 15) -> None:
        """SIGTERM to every process at once, SIGKILL to those still running after `timeout` seconds; then the bus's
        server (the services' last events reach it)."""
        every = [*reversed(self.processes.values()), *([self.registry] if self.registry else [])]
        running = [proc for proc in every if proc.alive()]
        for proc in running:
            proc.send(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running:
            proc.wait_stopped(deadline - time.monotonic())
        if self.nats is not None:
            self.nats.stop(timeout=max(1.0, deadline - time.monotonic()))

    def run_until_interrupted(self, log: Callable[[str], None] = print) -> int:
        """The CLI's `up`: seed, start everything, block until SIGINT/SIGTERM or a component dies; then stop."""
        exit_code = 0

        def _interrupt(_signum: int, _frame: FrameType | None) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _interrupt)
        try:
            self.seed()
            self.start_all()
            self.wait_routable()
            assert self.registry is not None
            bus = f"NATS: {self.nats.url}, its monitoring: {self.nats.monitor_url}" if self.nats else (
                f"NATS: {self.bus_config('operator').url}")
            log(f"The fleet is up. Gateway: {self.gateway_url}  (registry: {self.registry.url}, {bus}, "
                f"logs: {self.workdir / 'logs'}). Press Ctrl-C to stop.")
            if self.welcome:
                log(self.welcome)
            while not (dead := self.dead()):
                time.sleep(0.5)
            log(f"{dead[0].name} exited unexpectedly; stopping the fleet.")
            exit_code = 1
        except KeyboardInterrupt:
            log("Stopping the fleet…")
        except (RuntimeError, TimeoutError) as exc:
            log(f"The fleet could not start: {exc}")
            exit_code = 1
        finally:
            self.stop_all()
            log("Stopped.")
        return exit_code


def local_fleet(var: Path, port_offset: int = 0) -> Fleet:
    """The CLI's fleet: SQLite under `var`, the default ports (+ offset), the demo admin, the secrets generated at the
    first run under `var` (local_secrets); the environment's settings win where it has them."""
    made = local_secrets.load_or_create(var)
    defaults = {
        "EUREKA_RENEWAL_INTERVAL_SECS": "2",
        "EUREKA_LEASE_DURATION_SECS": "10",
        "BOOTSTRAP_ADMIN_EMAIL": DEMO_ADMIN_EMAIL,
        "BOOTSTRAP_ADMIN_PASSWORD": made.admin_password,
        # `customer-service load` places all its orders as one customer, C at a time (the default is 3).
        "MAX_UNFINISHED_SAGAS_PER_CUSTOMER": "1000",
    }
    return Fleet(
        workdir=var,
        database_url=lambda package: f"sqlite+aiosqlite:///{var / f'{package}.db'}",
        env={name: os.environ.get(name, value) for name, value in defaults.items()},
        port_offset=port_offset,
        service_secret=os.environ.get("SERVICE_CLIENT_SECRET") or made.service_client_secret,
        gateway_secret=os.environ.get("GATEWAY_CLIENT_SECRET") or made.gateway_client_secret,
        registry_password=os.environ.get("EUREKA_PASSWORD") or made.registry_password,
        # JetStream's store under var/ beside the databases, unless the environment names a bus of its own.
        nats_dir=None if os.environ.get("NATS_URL") else var / "nats",
        nats_passwords=made.nats_passwords,
        welcome=f"Demo admin: {DEMO_ADMIN_EMAIL} with the password in {var / local_secrets.FILE_NAME} "
                "(made at the first run; the CLI's commands read it from there).",
    )


@dataclass(frozen=True)
class PostgresServer:
    """A PostgreSQL server where the tests and the bench create their databases (every name gets `suffix`)."""

    admin_dsn: str  # libpq DSN of a maintenance database, for CREATE/DROP DATABASE
    url_base: str  # SQLAlchemy URL without the database name
    suffix: str = ""  # appended to every database's name, so that several checkouts share one server

    @classmethod
    def from_env(cls) -> PostgresServer:
        """TEST_PG_ADMIN_DSN, TEST_PG_URL_BASE and TEST_DB_SUFFIX; by default the server on 127.0.0.1:5432."""
        return cls(os.environ.get("TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
                   os.environ.get("TEST_PG_URL_BASE", "postgresql+asyncpg://postgres@127.0.0.1:5432"),
                   os.environ.get("TEST_DB_SUFFIX", ""))

    def name(self, name: str) -> str:
        return f"{name}{self.suffix}"

    def url(self, name: str) -> str:
        return f"{self.url_base}/{self.name(name)}"

    def dsn(self, name: str) -> str:
        """The libpq DSN of one database (psycopg), on the admin DSN's server and user."""
        return f"{self.admin_dsn.rsplit('/', 1)[0]}/{self.name(name)}"

    def recreate_databases(self, names: list[str]) -> None:
        """Drop and create each database (names are given without the suffix; it is appended here)."""
        import psycopg  # only the tests and the bench make databases

        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            for name in map(self.name, names):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{name}"')


# What a fleet on PostgreSQL runs with: fault injection on (test-only /_faults), quick registry heartbeats, small
# pools (eight services and their replicas share one server), the test admin.
POSTGRES_FLEET_ENV = {
    "ENV": "test",
    "EUREKA_RENEWAL_INTERVAL_SECS": "1",
    "EUREKA_LEASE_DURATION_SECS": "3",
    "FAULT_INJECTION": "true",
    "DB_POOL_SIZE": "8",
    "BOOTSTRAP_ADMIN_EMAIL": TEST_ADMIN_EMAIL,
    "BOOTSTRAP_ADMIN_PASSWORD": TEST_ADMIN_PASSWORD,
    "LOG_LEVEL": "INFO",
    "METRICS_TOKEN": METRICS_TOKEN,
    # A consumer's failing event dead-lettered after 3 deliveries, an unacked one delivered again after 3 s.
    "BUS_MAX_DELIVER": "3",
    "BUS_ACK_WAIT_SECS": "3",
}


def postgres_fleet(workdir: Path, server: PostgresServer, db_prefix: str,
                   env: dict[str, str] | None = None) -> Fleet:
    """The tests' and the bench's fleet: free ports, a database `<db_prefix>_<package>` each on `server`, a
    nats-server of its own with an empty store (its databases are new too), whatever NATS_URL says."""
    workdir.mkdir(parents=True, exist_ok=True)
    return Fleet(
        workdir=workdir,
        nats_dir=Path(tempfile.mkdtemp(prefix="nats-", dir=workdir)),
        database_url=lambda package: server.url(f"{db_prefix}_{package}"),
        db_prefix=db_prefix,
        env={**POSTGRES_FLEET_ENV, **(env or {})},
        # The load balancers in front of a gateway (tests/integration/test_attacks.py plays one on
        # 127.0.0.1). auth_service believes X-Forwarded-For only from the gateway's own service token.
        package_env={"auth_service": {"TRUSTED_PROXIES": "127.0.0.1"}},
        registry_env={"EVICTION_INTERVAL_SECS": "1"},
    )


def recreate_fleet_databases(server: PostgresServer, db_prefix: str, packages: list[str] | None = None) -> None:
    packages = list(SERVICES) if packages is None else packages
    server.recreate_databases([f"{db_prefix}_{p}" for p in packages if COMPONENTS[p].database])
