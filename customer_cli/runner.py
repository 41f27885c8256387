"""The local runner: every component of the fleet as its own process, SQLite under var/, the local registry."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx

from customer_cli import local_secrets

# Component → (default port, needs a database). Started in this order; the gateway last.
COMPONENTS: dict[str, tuple[int, bool]] = {
    "registry": (8761, False),
    "auth_service": (8001, True),
    "order_service": (8002, True),
    "inventory_service": (8003, True),
    "payment_service": (8004, True),
    "carrier_service": (8005, True),
    "shipment_service": (8006, True),
    "saga_orchestrator": (8007, True),
    "gateway": (8080, False),
}
SEEDS = ["inventory_service.seed", "carrier_service.seed"]
# The demo admin of local mode; its password is generated at the first run (var/secrets.json).
DEMO_ADMIN_EMAIL = "admin@example.com"
REGISTRY_USER = "eureka"

def _as_list(value: object) -> list[dict[str, str]]:
    """Eureka's JSON gives a single instance as an object and several as a list."""
    if isinstance(value, dict):
        return [value]
    return value if isinstance(value, list) else []


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM it when the runner dies, even by SIGKILL (no orphans)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    os.setsid()


@dataclass
class Component:
    name: str
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class LocalFleet:
    def __init__(self, root: Path, var: Path, port_offset: int = 0, log: Callable[[str], None] = print) -> None:
        self.root = root
        self.var = var
        self.port_offset = port_offset
        self.log = log
        self.components = [Component(name, port + port_offset) for name, (port, _) in COMPONENTS.items()]
        self.stopping = False
        self._secrets: local_secrets.LocalSecrets | None = None

    @property
    def secrets(self) -> local_secrets.LocalSecrets:
        """Generated at the first run under var/ (the environment's SERVICE_CLIENT_SECRET, EUREKA_PASSWORD and
        BOOTSTRAP_ADMIN_PASSWORD win when set)."""
        if self._secrets is None:
            made = local_secrets.load_or_create(self.var)
            self._secrets = local_secrets.LocalSecrets(
                service_client_secret=os.environ.get("SERVICE_CLIENT_SECRET") or made.service_client_secret,
                registry_password=os.environ.get("EUREKA_PASSWORD") or made.registry_password,
                admin_password=os.environ.get("BOOTSTRAP_ADMIN_PASSWORD") or made.admin_password,
            )
        return self._secrets

    @property
    def registry_url(self) -> str:
        """The registry's API with its credentials in the URL, as py-eureka-client takes them."""
        registry = self.components[0]
        return f"http://{REGISTRY_USER}:{self.secrets.registry_password}@127.0.0.1:{registry.port}/eureka"

    @property
    def auth_url(self) -> str:
        return next(c.url for c in self.components if c.name == "auth_service")

    @property
    def gateway_url(self) -> str:
        return self.components[-1].url

    def env_for(self, name: str, port: int) -> dict[str, str]:
        env = {
            **os.environ,
            "PORT": str(port),
            "PYTHONUNBUFFERED": "1",
            "EUREKA_SERVER_URL": self.registry_url,
            "EUREKA_USERNAME": REGISTRY_USER,
            "EUREKA_PASSWORD": self.secrets.registry_password,
            "AUTH_URLS": self.auth_url,
            "SERVICE_CLIENT_SECRET": self.secrets.service_client_secret,
            "EUREKA_RENEWAL_INTERVAL_SECS": os.environ.get("EUREKA_RENEWAL_INTERVAL_SECS", "2"),
            "EUREKA_LEASE_DURATION_SECS": os.environ.get("EUREKA_LEASE_DURATION_SECS", "10"),
            "BOOTSTRAP_ADMIN_EMAIL": os.environ.get("BOOTSTRAP_ADMIN_EMAIL", DEMO_ADMIN_EMAIL),
            "BOOTSTRAP_ADMIN_PASSWORD": self.secrets.admin_password,
            # `customer-service load` places all its orders as one customer, C at a time (the default is 3).
            "MAX_UNFINISHED_SAGAS_PER_CUSTOMER": os.environ.get("MAX_UNFINISHED_SAGAS_PER_CUSTOMER", "1000"),
        }
        if COMPONENTS[name][1]:
            env["DATABASE_URL"] = f"sqlite+aiosqlite:///{self.var / f'{name}.db'}"
        return env

    def _spawn(self, module: str, env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
        log_file = (self.var / "logs" / f"{log_name}.log").open("ab")
        try:
            return subprocess.Popen(
                [sys.executable, "-m", module], cwd=self.root, env=env, stdout=log_file,
                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )
        finally:
            log_file.close()

    def seed(self) -> None:
        for module in SEEDS:
            service = module.split(".")[0]
            port = COMPONENTS[service][0] + self.port_offset
            process = self._spawn(module, self.env_for(service, port), f"{service}-seed")
            if process.wait(120) != 0:
                raise RuntimeError(f"{module} failed; see {self.var / 'logs' / f'{service}-seed.log'}")

    def start(self, timeout: float = 90) -> None:
        (self.var / "logs").mkdir(parents=True, exist_ok=True)
        self.seed()
        for component in self.components:
            component.process = self._spawn(component.name, self.env_for(component.name, component.port),
                                            component.name)
            if component.name in ("registry", "auth_service"):
                self._wait_healthy(component, timeout)
        for component in self.components:
            self._wait_healthy(component, timeout)
        self._wait_routable(timeout)

    def _wait_healthy(self, component: Component, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if component.process is not None and component.process.poll() is not None:
                raise RuntimeError(f"{component.name} exited; see {self.var / 'logs' / f'{component.name}.log'}")
            try:
                if httpx.get(f"{component.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{component.name} did not become healthy in {timeout}s")

    def _wait_routable(self, timeout: float) -> None:
        """Ready when every service is UP in the registry and the gateway has had time to see it."""
        apps = {name.upper().replace("_", "-") for name in COMPONENTS if name != "registry"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"{self.registry_url}/apps", headers={"Accept": "application/json"}, timeout=2)
                listed = _as_list(response.json()["applications"].get("application", []))
                up = {app["name"] for app in listed
                      if any(i["status"] == "UP" for i in _as_list(app.get("instance", [])))}
                if apps <= up:
                    # The gateway refreshes its copy of the registry once per renewal interval.
                    time.sleep(float(os.environ.get("EUREKA_RENEWAL_INTERVAL_SECS", "2")) + 1)
                    return
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.3)
        raise TimeoutError(f"not every service registered within {timeout}s")

    def stop(self, timeout: float = 15) -> None:
        self.stopping = True
        running = [c for c in reversed(self.components) if c.process is not None and c.process.poll() is None]
        for component in running:
            assert component.process is not None
            try:
                os.killpg(component.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        for component in running:
            assert component.process is not None
            try:
                component.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(component.process.pid, signal.SIGKILL)
                component.process.wait(5)

    def run_until_interrupted(self) -> int:
        """Block until SIGINT/SIGTERM or a component dies; then stop everything."""
        exit_code = 0

        def _interrupt(_signum: int, _frame: FrameType | None) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _interrupt)
        try:
            self.start()
            self.log(f"The fleet is up. Gateway: {self.gateway_url}  (registry: {self.components[0].url}, "
                     f"logs: {self.var / 'logs'}). Press Ctrl-C to stop.")
            self.log(f"Demo admin: {DEMO_ADMIN_EMAIL} with the password in {self.var / local_secrets.FILE_NAME} "
                     "(made at the first run; the CLI's commands read it from there).")
            while True:
                dead = [c for c in self.components if c.process is not None and c.process.poll() is not None]
                if dead:
                    self.log(f"{dead[0].name} exited unexpectedly; stopping the fleet.")
                    exit_code = 1
                    break
                time.sleep(0.5)
        except KeyboardInterrupt:
            self.log("Stopping the fleet…")
        except (RuntimeError, TimeoutError) as exc:
            self.log(f"The fleet could not start: {exc}")
            exit_code = 1
        finally:
            self.stop()
            self.log("Stopped.")
        return exit_code
