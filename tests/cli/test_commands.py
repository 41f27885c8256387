"""The `customer-service` command through its real entry points, against the real fleet."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from customer_cli.fleet import COMPONENTS
from tests.cli.conftest import Cli, run_cli
from tests.conftest import User, register_customer
from tests.dashboard.shop import Shop
from tests.fleet import ROOT, Fleet

STEPS = ["create_order", "add_order_lines", "allocate_inventory", "make_payment", "assign_carrier",
         "create_shipment", "confirm_order"]
STARTED = datetime.now(UTC)


def saga_id_in(output: str) -> str:
    match = re.search(r"Saga ([0-9a-f-]{36})", output)
    assert match, output
    return match.group(1)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


# -- without a fleet ------------------------------------------------------------------------------

def test_the_installed_script_lists_every_command() -> None:
    script = shutil.which("customer-service") or str(Path(ROOT, ".venv", "bin", "customer-service"))
    if not Path(script).exists():
        pytest.skip("the project is not installed (pip install -e .): no customer-service script")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60,
                            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}, check=False)
    assert result.returncode == 0, result.stderr
    for command in ("up", "seed", "order", "load", "sagas", "check"):
        assert re.search(rf"│ {command}\b", result.stdout), (command, result.stdout)


def test_an_unreachable_gateway_is_a_clear_error() -> None:
    result = run_cli("order", "--gateway", "http://127.0.0.1:9", "--sku", "X", timeout=60)
    assert result.returncode == 1
    assert "cannot reach the gateway at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_gateway_comes_from_the_environment() -> None:
    result = run_cli("sagas", timeout=60, env={"CS_GATEWAY_URL": "http://127.0.0.1:9", "CS_ADMIN_PASSWORD": "x"})
    assert result.returncode == 1
    assert "http://127.0.0.1:9" in result.stderr


def test_without_a_local_runner_the_admin_password_must_be_given(tmp_path: Path) -> None:
    """The demo admin's password is the local runner's, generated at its first run: no published default."""
    # Run from an empty directory (no var/ there), this checkout's code first on the path.
    environment = {**os.environ, "COLUMNS": "200", "CS_GATEWAY_URL": "http://127.0.0.1:9", "PYTHONPATH": str(ROOT)}
    environment.pop("CS_ADMIN_PASSWORD", None)
    result = subprocess.run([sys.executable, "-m", "customer_cli", "sagas"], cwd=tmp_path, env=environment,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and "--admin-password" in result.stderr, result.stderr


# -- against the fleet ----------------------------------------------------------------------------


@pytest.mark.integration
def test_order_follows_each_step_to_completion(cli: Cli, cli_shop: Shop) -> None:
    result = cli("order", "--sku", cli_shop.sku, "--qty", "2", "--card", "tok_visa", "--country", "DE")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    positions = [out.index(f"✓ {step}") for step in STEPS]
    assert positions == sorted(positions), out  # printed in the order the steps ran
    assert "= COMPLETED" in out
    assert re.search(r"tracking number \w+", out), out
    assert "new customer cli-" in out


@pytest.mark.integration
def test_a_declined_order_prints_its_compensations_and_fails(cli: Cli, cli_shop: Shop) -> None:
    result = cli("order", "--sku", cli_shop.sku, "--card", "tok_chargeDeclined")
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "✗ make_payment" in out and "declined" in out
    undone = [re.search(rf"undid {step}", out) for step in ("allocate_inventory", "add_order_lines", "create_order")]
    assert all(undone), out
    assert [m.start() for m in undone if m] == sorted(m.start() for m in undone if m)
    assert "= COMPENSATED" in out


@pytest.mark.integration
def test_order_as_an_existing_customer_from_the_catalogue(cli: Cli, cli_shop: Shop, gateway_url: str) -> None:
    with httpx.Client(base_url=gateway_url, timeout=30) as api:
        customer = register_customer(api)
    result = cli("order", "--email", customer.email, "--password", customer.password, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    saga = as_json(result)
    assert saga["status"] == "COMPLETED"
    assert saga["customer_id"] == customer.user_id
    assert [step["status"] for step in saga["steps"]] == ["SUCCEEDED"] * len(STEPS)


@pytest.mark.integration
def test_order_with_a_token_and_an_idempotency_key_is_placed_once(cli: Cli, cli_shop: Shop,
                                                                  gateway_url: str) -> None:
    with httpx.Client(base_url=gateway_url, timeout=30) as api:
        customer = register_customer(api)
    args = ("order", "--token", customer.token, "--sku", cli_shop.sku, "--idempotency-key", "cli-test-once")
    first, second = cli(*args), cli(*args)
    assert first.returncode == second.returncode == 0, first.stdout + first.stderr + second.stdout + second.stderr
    assert saga_id_in(first.stdout) == saga_id_in(second.stdout)


@pytest.mark.integration
def test_sagas_lists_and_shows_a_timeline(cli: Cli, cli_shop: Shop) -> None:
    placed = cli("order", "--sku", cli_shop.sku, "--card", "tok_chargeDeclined")
    saga_id = saga_id_in(placed.stdout)

    listed = cli("sagas", "--status", "COMPENSATED", "--json", "--limit", "500")
    assert listed.returncode == 0, listed.stderr
    page = as_json(listed)
    assert saga_id in {item["saga_id"] for item in page["items"]}
    assert {item["status"] for item in page["items"]} == {"COMPENSATED"}

    table = cli("sagas", "list", "--status", "compensated")
    assert table.returncode == 0, table.stderr
    assert saga_id in table.stdout and "COMPENSATED" in table.stdout

    shown = cli("sagas", "show", saga_id, "--events")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "Timeline" in out and "COMPENSATED" in out
    for step in ("create_order", "add_order_lines", "allocate_inventory", "make_payment"):
        assert step in out
    assert out.index("make_payment") < out.index("↩ undo allocate_inventory") < out.index("↩ undo create_order")
    assert "not reached: assign_carrier, create_shipment, confirm_order" in out
    assert "CompensationStarted" in out  # --events

    missing = cli("sagas", "show", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr


@pytest.mark.integration
def test_sagas_and_check_since_see_only_the_sagas_created_since(cli: Cli, cli_shop: Shop) -> None:
    earlier = saga_id_in(cli("order", "--sku", cli_shop.sku, "--card", "tok_chargeDeclined").stdout)
    later = saga_id_in(cli("order", "--sku", cli_shop.sku).stdout)
    created_at = datetime.fromisoformat(as_json(cli("sagas", "show", later, "--json"))["created_at"])
    # The later saga's creation, with a "+01:00" offset: the "+" must reach the API encoded.
    since = created_at.astimezone(timezone(timedelta(hours=1))).isoformat()

    listed = cli("sagas", "--since", since, "--json", "--limit", "500")
    assert listed.returncode == 0, listed.stderr
    page = as_json(listed)
    assert [item["saga_id"] for item in page["items"]] == [later] and page["total"] == 1

    table = cli("sagas", "list", "--since", "10m", "--limit", "500")
    assert table.returncode == 0, table.stderr
    assert "Sagas created since" in table.stdout
    assert earlier in table.stdout and later in table.stdout

    checked = cli("check", "--since", since)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "sagas: COMPLETED 1\n" in checked.stdout  # the earlier, compensated saga is out of scope

    wrong = cli("sagas", "--since", "yesterday")
    assert wrong.returncode == 2 and "--since" in wrong.stderr


@pytest.mark.integration
def test_sagas_refuses_a_wrong_admin_password(gateway_url: str) -> None:
    result = run_cli("sagas", "--gateway", gateway_url, "--admin-email", "nobody@example.com",
                     "--admin-password", "wrong password")
    assert result.returncode == 1
    assert "Logging in as nobody@example.com: 401" in result.stderr


@pytest.mark.integration
def test_load_reports_outcomes_and_latency(cli: Cli, cli_shop: Shop) -> None:
    result = cli("load", "--orders", "6", "--concurrency", "3", "--sku", cli_shop.sku,
                 "--card", "tok_visa", "--card", "tok_chargeDeclined", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = as_json(result)
    assert summary["outcomes"] == {"COMPLETED": 3, "COMPENSATED": 3, "COMPENSATION_FAILED": 0, "ERROR": 0}
    latency = summary["latency_secs"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] < 60
    assert summary["throughput_per_sec"] > 0

    table = cli("load", "-n", "4", "-c", "2", "--sku", cli_shop.sku)
    assert table.returncode == 0, table.stdout + table.stderr
    assert "4/4" in table.stdout  # the progress bar's last state
    assert re.search(r"4 orders in [0-9.]+ s — [0-9.]+ orders/s", table.stdout), table.stdout
    assert re.search(r"COMPLETED\s+│\s+4\s+│", table.stdout), table.stdout
    for column in ("p50", "p95", "p99"):
        assert column in table.stdout


@pytest.mark.integration
def test_check_runs_the_invariant_checker(cli: Cli, cli_shop: Shop) -> None:
    placed = cli("order", "--sku", cli_shop.sku)
    assert placed.returncode == 0, placed.stdout + placed.stderr
    result = cli("check", "--since", STARTED.isoformat(), "--sku", cli_shop.sku)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    assert f"stock {cli_shop.sku}" in result.stdout


@pytest.mark.integration
def test_check_follows_a_delivered_parcel_and_counts_every_outbox(cli: Cli, cli_shop: Shop, fleet: Fleet,
                                                                  gateway_url: str, admin: User) -> None:
    """The bus's two promises through the real fleet: the parcel delivered by an operator moves its order to
    DELIVERED (order_service follows it), and every service's outbox is drained (`--database` for each)."""
    since = datetime.now(UTC).isoformat()
    placed = cli("order", "--sku", cli_shop.sku, "--json")
    assert placed.returncode == 0, placed.stdout + placed.stderr
    order_id = as_json(placed)["order_id"]
    with httpx.Client(base_url=gateway_url, timeout=30, headers=admin.headers) as api:
        [shipment] = api.get("/api/shipments", params={"order_id": order_id}).json()["items"]
        for status in ("DISPATCHED", "IN_TRANSIT", "DELIVERED"):
            moved = api.post(f"/api/shipments/{shipment['id']}/status", json={"status": status})
            assert moved.status_code == 200, moved.text
    databases = [f"--database={package}={fleet.database_url(package)}"
                 for package, component in COMPONENTS.items() if component.database]
    deadline = time.monotonic() + 60
    while True:  # the events are on their way: the check passes once they have arrived
        checked = cli("check", "--since", since, *databases)
        if checked.returncode == 0 or time.monotonic() > deadline:
            break
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 confirmed, 0 shipped, 1 delivered" in checked.stdout
    drained = ", ".join(f"{package} 0" for package in sorted(p for p, c in COMPONENTS.items() if c.database))
    assert f"outboxes (events not yet on the bus): {drained}" in checked.stdout
