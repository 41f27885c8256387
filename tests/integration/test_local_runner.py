"""The local runner as a user runs it: start, use, Ctrl-C, nothing left behind, data still there after a restart."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from customer_cli.fleet import COMPONENTS, DEFAULT_PORTS
from customer_cli.processes import ROOT

pytestmark = pytest.mark.skipif(bool(os.environ.get("GATEWAY_URL")), reason="targets a running stack")


def _free_offset() -> int:
    # Outside the kernel's ephemeral range (read, not assumed): a port there can be taken by any outgoing
    # connection (the fleet's own, to PostgreSQL) between this check and the service's bind.
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    lowest, highest = min(DEFAULT_PORTS.values()), max(DEFAULT_PORTS.values())  # the components' and NATS's
    offsets = [o for o in range(1000, 65535 - highest, 10) if highest + o < low or lowest + o > high]
    for _ in range(50):
        offset = random.choice(offsets)
        try:
            for port in DEFAULT_PORTS.values():
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port + offset))
            return offset
        except OSError:
            continue
    raise RuntimeError("no free port range")


def _children(pid: int) -> set[int]:
    """Every descendant of pid, read from /proc."""
    found: set[int] = set()
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            text = Path(f"/proc/{current}/task/{current}/children").read_text()
        except FileNotFoundError:
            continue
        for child in map(int, text.split()):
            found.add(child)
            pending.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _start(var: Path, offset: int) -> subprocess.Popen[str]:
    env = {**os.environ, "EUREKA_RENEWAL_INTERVAL_SECS": "1", "EUREKA_LEASE_DURATION_SECS": "5"}
    env.pop("DATABASE_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "customer_cli", "up", "--var", str(var), "--port-offset", str(offset)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_up(runner: subprocess.Popen[str], timeout: float = 120) -> str:
    assert runner.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = runner.stdout.readline()
        if not line and runner.poll() is not None:
            break
        seen.append(line)
        if "The fleet is up" in line:
            return line
    raise AssertionError("the runner did not come up:\n" + "".join(seen))


def _stop(runner: subprocess.Popen[str]) -> set[int]:
    children = _children(runner.pid)
    assert len(children) >= len(COMPONENTS), children
    runner.send_signal(signal.SIGINT)
    assert runner.wait(60) == 0
    return children


def test_local_runner_start_use_stop_restart(tmp_path: Path) -> None:
    var = tmp_path / "var"
    offset = _free_offset()
    gateway = f"http://127.0.0.1:{8080 + offset}"
    runner = _start(var, offset)
    try:
        assert gateway in _wait_up(runner)
        email, password = f"local-{uuid.uuid4().hex[:8]}@example.com", "local runner password"
        with httpx.Client(base_url=gateway, timeout=30) as client:
            assert client.post("/api/auth/register", json={"email": email, "password": password}).status_code == 201
            token = client.post("/api/auth/login", json={"email": email, "password": password}).json()["access_token"]
            created = client.post("/api/orders", json={"currency": "EUR"}, headers={"Authorization": f"Bearer {token}"})
            assert created.status_code == 201, created.text
            order_id = created.json()["id"]
        # Secrets made at the first run, readable by the owner only; none of them published anywhere.
        made = json.loads((var / "secrets.json").read_text())
        assert (var / "secrets.json").stat().st_mode & 0o077 == 0
        assert made["service_client_secret"] != "dev-only-service-secret-change-me"
        with httpx.Client(base_url=gateway, timeout=30) as client:
            admin = client.post("/api/auth/login", json={"email": "admin@example.com",
                                                        "password": made["admin_password"]})
            assert admin.status_code == 200, admin.text
            assert client.post("/api/auth/login", json={"email": "admin@example.com",
                                                        "password": "admin-password-dev"}).status_code == 401
        registry = f"http://127.0.0.1:{8761 + offset}/eureka/apps/"
        assert httpx.get(registry).status_code == 401
        assert httpx.get(registry, auth=("eureka", made["registry_password"])).status_code == 200
        children = _stop(runner)
    finally:
        if runner.poll() is None:
            runner.kill()
    time.sleep(0.5)
    assert not [pid for pid in children if _alive(pid)], "processes of the fleet were left running"
    assert (var / "order_service.db").exists()

    runner = _start(var, offset)
    try:
        _wait_up(runner)
        assert json.loads((var / "secrets.json").read_text()) == made  # the same secrets on the next run
        with httpx.Client(base_url=gateway, timeout=30) as client:
            token = client.post("/api/auth/login", json={"email": email, "password": password}).json()["access_token"]
            read = client.get(f"/api/orders/{order_id}", headers={"Authorization": f"Bearer {token}"})
            assert read.status_code == 200 and read.json()["id"] == order_id
        children = _stop(runner)
    finally:
        if runner.poll() is None:
            runner.kill()
    time.sleep(0.5)
    assert not [pid for pid in children if _alive(pid)]
