"""The suite's handle on a running `docker compose` stack (GATEWAY_URL set): its containers, driven through Docker.

Everything goes through the docker CLI (`docker compose ps`, `docker exec`, `docker logs`, `docker kill`), never
to a container's address, so it works wherever `docker compose` does. Which stack: docker compose's own
variables (COMPOSE_PROJECT_NAME, COMPOSE_FILE), from the repository's root. A container is shaped like the local
fleet's ServiceProcess where the tests need it (name, package, logs, faults, kill), so a test takes either.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from tests.fleet import ROOT, SERVICES

# Run inside a service's container (its image has Python, no curl): one request to the service on loopback.
_REQUEST = """
import base64, json, sys, urllib.error, urllib.parse, urllib.request
method, url, body = sys.argv[1], sys.argv[2], sys.argv[3]
headers = {"Content-Type": "application/json", "Accept": "application/json", **json.loads(sys.argv[4])}
parts = urllib.parse.urlsplit(url)
if "@" in parts.netloc:  # user:password@ in the URL: sent as basic credentials, as py-eureka-client does
    userinfo, host = parts.netloc.rsplit("@", 1)
    headers["Authorization"] = "Basic " + base64.b64encode(urllib.parse.unquote(userinfo).encode()).decode()
    url = parts._replace(netloc=host).geturl()
request = urllib.request.Request(url, method=method, data=body.encode() or None, headers=headers)
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        status, text = response.status, response.read().decode()
except urllib.error.HTTPError as error:
    status, text = error.code, error.read().decode()
print(json.dumps({"status": status, "text": text}))
"""


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    result = subprocess.run(["docker", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout


@dataclass
class Container:
    """One container of a service (a replica), addressed by its id."""

    name: str  # the service for the first replica, service_N for the N-th (as the local fleet names them)
    package: str
    container_id: str
    port: int

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, str]:
        """One HTTP request to the service from inside its own container; (status, body)."""
        return self.request_from_here(method, f"http://127.0.0.1:{self.port}{path}", body, headers)

    def request_from_here(self, method: str, url: str, body: Any = None,
                          headers: dict[str, str] | None = None) -> tuple[int, str]:
        """One HTTP request from inside this container to any URL (a neighbour on the stack's network)."""
        out = docker("exec", self.container_id, "python", "-c", _REQUEST, method, url,
                     "" if body is None else json.dumps(body), json.dumps(headers or {}), timeout=30)
        answer = json.loads(out)
        return int(answer["status"]), str(answer["text"])

    def inject_fault(self, path_regex: str, method: str = "POST", status: int = 503, count: int = 1,
                     delay_ms: int = 0) -> None:
        """Make the service fail (status 0: only delay) the matching requests, through its test-only /_faults."""
        code, text = self.request("POST", "/_faults", {
            "method": method, "path_regex": path_regex, "status": status, "count": count, "delay_ms": delay_ms})
        assert code == 201, text

    def clear_faults(self) -> None:
        if self.alive():
            self.request("DELETE", "/_faults")

    def alive(self) -> bool:
        return docker("inspect", "-f", "{{.State.Running}}", self.container_id, check=False).strip() == "true"

    def health(self) -> str:
        return docker("inspect", "-f", "{{.State.Health.Status}}", self.container_id, check=False).strip()

    def kill(self) -> None:
        docker("kill", self.container_id)

    def logs(self) -> str:
        result = subprocess.run(["docker", "logs", self.container_id], capture_output=True, text=True, timeout=60)
        return result.stdout + result.stderr


@dataclass
class ComposeStack:
    """The compose project the suite runs against; every call asks Docker afresh (replicas come and go)."""

    compose_args: list[str] = field(default_factory=list)

    def compose(self, *args: str, timeout: float = 300) -> str:
        return docker("compose", *self.compose_args, *args, timeout=timeout)

    @cached_property
    def ports(self) -> dict[str, int]:
        config = json.loads(self.compose("config", "--format", "json"))
        return {name: int(service["environment"]["PORT"]) for name, service in config["services"].items()
                if name in SERVICES}

    def replicas(self, service: str) -> list[Container]:
        """The running containers of a service, by their replica number."""
        ids = self.compose("ps", "-q", service).split()
        if not ids:
            return []
        found = []
        for info in json.loads(docker("inspect", *ids)):
            if not info["State"]["Running"]:
                continue
            number = int(info["Config"]["Labels"]["com.docker.compose.container-number"])
            found.append((number, info["Id"]))
        return [Container(service if n == 1 else f"{service}_{n}", service, cid, self.ports[service])
                for n, cid in sorted(found)]

    @property
    def processes(self) -> dict[str, Container]:
        return {c.name: c for service in self.ports for c in self.replicas(service)}

    def logs(self, package: str) -> str:
        return "\n".join(c.logs() for c in self.replicas(package))

    def registered(self, app: str) -> list[dict[str, Any]]:
        """The instances the registry lists as UP for `app`, asked inside the registry's container (busybox wget
        in the real Eureka image, Debian's in the stand-in)."""
        (eureka,) = self.compose("ps", "-q", "eureka").split()
        # The registry's credentials: the EUREKA_PASSWORD compose gave it (user `eureka`, docker-compose.yml).
        credentials = f"eureka:{os.environ.get('EUREKA_PASSWORD', '')}@"
        out = docker("exec", eureka, "wget", "-q", "-O", "-", "--header", "Accept: application/json",
                     f"http://{credentials}127.0.0.1:8761/eureka/apps/{app}", check=False)
        if not out.strip():
            return []
        instances = json.loads(out)["application"]["instance"]
        if isinstance(instances, dict):
            instances = [instances]
        return [i for i in instances if i["status"] == "UP"]

    def scale(self, service: str, replicas: int, timeout: float = 180) -> list[Container]:
        """`--scale service=N` (new replicas healthy, old ones kept), then until the registry lists N instances."""
        self.compose("up", "-d", "--no-recreate", "--no-build", "--wait", "--wait-timeout", str(int(timeout)),
                     "--scale", f"{service}={replicas}", service, timeout=timeout + 30)
        self.wait_registered(service, replicas)
        return self.replicas(service)

    @contextmanager
    def scaled(self, service: str, replicas: int) -> Iterator[list[Container]]:
        """`replicas` of the service while the block runs (see `scale`), one again after it."""
        try:
            yield self.scale(service, replicas)
        finally:
            self.scale(service, 1)

    def wait_registered(self, service: str, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.registered(SERVICES[service])) != count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{SERVICES[service]}: {len(self.registered(SERVICES[service]))} instances "
                                   f"registered, not {count}, after {timeout}s")
            time.sleep(0.5)

    def restart(self, name: str, timeout: float = 90) -> Container:
        """Start a stopped (or killed) replica again and wait until it is healthy and registered."""
        service = name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name
        number = int(name.rsplit("_", 1)[1]) if name != service else 1
        ids = self.compose("ps", "-aq", service).split()
        (info,) = [i for i in json.loads(docker("inspect", *ids))
                   if int(i["Config"]["Labels"]["com.docker.compose.container-number"]) == number]
        container = Container(name, service, info["Id"], self.ports[service])
        if not container.alive():
            docker("start", container.container_id)
        deadline = time.monotonic() + timeout
        while container.health() != "healthy":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} is not healthy after {timeout}s:\n{container.logs()[-4000:]}")
            time.sleep(0.5)
        self.wait_registered(service, len(self.replicas(service)), timeout)
        return container


def running_stack() -> ComposeStack | None:
    """The compose stack the suite targets, when GATEWAY_URL is a compose project's gateway this machine runs."""
    if shutil.which("docker") is None:
        return None
    stack = ComposeStack()
    try:
        return stack if stack.replicas("gateway") else None
    except (RuntimeError, KeyError, subprocess.TimeoutExpired):
        return None
