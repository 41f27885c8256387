"""The CLI's pure parts: percentiles, choosing lines, the timeline and narration from events, --since, the
saga list's created-time window as the CLI and the invariant checker ask for it (a fake gateway), and the
fleet supervisor's environment for each component."""

from __future__ import annotations

import importlib
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer

from customer_cli import invariants, local_secrets
from customer_cli.fleet import COMPONENTS, SERVICES, PostgresServer, ServiceProcess, local_fleet, postgres_fleet
from customer_cli.gateway_client import GatewayClient, GatewayError
from customer_cli.load import ERROR, LoadReport, OrderResult, percentile
from customer_cli.main import parse_since
from customer_cli.orders import EventNarrator, OrderLine, choose_lines, timeline


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0], 99) == 1.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 100) == 100.0


def test_a_report_counts_outcomes_and_leaves_errors_out_of_latency() -> None:
    report = LoadReport([OrderResult("COMPLETED", 1.0), OrderResult("COMPENSATED", 3.0),
                         OrderResult(ERROR, 50.0, error="boom")], wall_secs=2.0)
    assert report.counts["COMPLETED"] == report.counts["COMPENSATED"] == report.counts[ERROR] == 1
    assert report.latencies() == [1.0, 3.0]
    assert report.throughput == 1.0
    assert report.errors() == ["boom"]


def _catalogue() -> list[dict[str, Any]]:
    return [{"sku": "FEW", "available": 3}, {"sku": "MANY", "available": 500}]


def test_lines_from_options_or_the_best_stocked_product() -> None:
    assert choose_lines(["A", "B"], [2], _catalogue) == [OrderLine("A", 2), OrderLine("B", 2)]
    assert choose_lines(["A", "B"], [2, 5], _catalogue) == [OrderLine("A", 2), OrderLine("B", 5)]
    assert choose_lines([], [], _catalogue) == [OrderLine("MANY", 1)]
    with pytest.raises(GatewayError, match="one --qty per --sku"):
        choose_lines(["A", "B", "C"], [1, 2], _catalogue)
    with pytest.raises(GatewayError, match="501 units"):
        choose_lines([], [1], _catalogue, orders=501)
    with pytest.raises(GatewayError, match="at least 1"):
        choose_lines(["A"], [0], _catalogue)


T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _events(*items: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"version": i + 1, "type": kind, "timestamp": (T0 + timedelta(milliseconds=100 * i)).isoformat(),
             "data": data} for i, (kind, data) in enumerate(items)]


DECLINED_THEN_RETRIED = _events(
    ("SagaStarted", {}),
    ("StepStarted", {"step": "create_order"}),
    ("StepSucceeded", {"step": "create_order", "attempts": 1, "last_error": None}),
    ("StepStarted", {"step": "make_payment"}),
    ("StepFailed", {"step": "make_payment", "error": "402 declined", "final": True, "attempts": 1}),
    ("CompensationStarted", {"reason": "make_payment failed", "plan": ["create_order"]}),
    ("CompensationFailed", {"step": "create_order", "error": "409 no", "attempts": 1}),
    ("SagaCompensationFailed", {"step": "create_order"}),
    ("CompensationRetried", {"requested_by": "admin"}),
    ("CompensationSucceeded", {"step": "create_order", "attempts": 1, "learned": {}}),
    ("SagaCompensated", {}),
)


def test_the_timeline_is_built_from_the_events() -> None:
    rows = timeline(DECLINED_THEN_RETRIED)
    assert [(r.kind, r.step, r.status) for r in rows] == [
        ("step", "create_order", "SUCCEEDED"), ("step", "make_payment", "FAILED"),
        ("compensation", "create_order", "SUCCEEDED")]
    payment, undo = rows[1], rows[2]
    assert payment.error == "402 declined" and payment.ended == T0 + timedelta(milliseconds=400)
    assert undo.retried and undo.attempts == 2
    assert undo.started == T0 + timedelta(milliseconds=800)  # from the operator's retry
    assert undo.ended == T0 + timedelta(milliseconds=900)


def test_a_compensation_under_way_is_running() -> None:
    rows = timeline(DECLINED_THEN_RETRIED[:6])
    assert (rows[-1].kind, rows[-1].status) == ("compensation", "RUNNING")


def test_the_narrator_says_each_step_as_it_ends() -> None:
    narrator = EventNarrator()
    said = [line for event in DECLINED_THEN_RETRIED if (line := narrator.line(event))]
    texts = [text for _, text in said]
    assert texts[0].startswith("✓ create_order") and "100 ms" in texts[0]
    assert texts[1].startswith("✗ make_payment") and "402 declined" in texts[1]
    assert texts[2] == "↩ compensating (create_order)"
    assert "could not undo create_order: 409 no" in texts[3]
    assert texts[4] == "= COMPENSATION_FAILED (an operator must retry it)"
    assert texts[5] == "↻ compensation retried by admin"
    assert texts[6].startswith("↩ undid create_order")
    assert texts[7] == "= COMPENSATED"


def test_since_takes_a_time_or_a_span() -> None:
    assert parse_since(None) is None
    assert parse_since("2026-01-01T12:00:00") == T0
    assert parse_since("2026-01-01T13:00:00+01:00") == T0
    ago = datetime.now(UTC) - parse_since("15m")  # type: ignore[operator]
    assert timedelta(minutes=14) < ago < timedelta(minutes=16)
    with pytest.raises(typer.BadParameter):
        parse_since("yesterday")


class FakeSagaList:
    """`GET /api/customer-orders` newest first, honouring `created_after` (unless told to ignore it), paged."""

    def __init__(self, created: list[datetime], honour_window: bool = True) -> None:
        self.sagas = [{"saga_id": f"saga-{i}", "status": "COMPLETED", "created_at": at.isoformat()}
                      for i, at in sorted(enumerate(created), key=lambda pair: pair[1], reverse=True)]
        self.honour_window = honour_window
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        params = request.url.params
        items = self.sagas
        if self.honour_window and "created_after" in params:
            after = datetime.fromisoformat(params["created_after"])  # a "+" sent unencoded would be a space here
            items = [s for s in items if datetime.fromisoformat(s["created_at"]) >= after]
        limit, offset = int(params.get("limit", 50)), int(params.get("offset", 0))
        return httpx.Response(200, json={"items": items[offset:offset + limit], "total": len(items), "limit": limit,
                                         "offset": offset})


def _read_sagas(fake: FakeSagaList, since: datetime) -> list[str]:
    with httpx.Client(base_url="http://gateway.test", transport=httpx.MockTransport(fake.handle)) as client:
        return [s["saga_id"] for s in invariants._Reader(client).pages(invariants.SAGAS, since, window=True)]


def test_the_checker_asks_the_saga_list_for_its_window_and_finds_the_same_sagas(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(invariants, "PAGE", 2)
    created = [T0 + timedelta(seconds=n) for n in range(10)]
    since = (T0 + timedelta(seconds=4)).astimezone(timezone(timedelta(hours=1)))  # a "+01:00" offset
    windowed, unfiltered = FakeSagaList(created), FakeSagaList(created, honour_window=False)

    found = _read_sagas(windowed, since)
    assert found == _read_sagas(unfiltered, since)  # what the client-side stop found before
    assert found == [f"saga-{n}" for n in range(9, 3, -1)]  # created at or after `since`, newest first
    assert len(windowed.requests) == 3  # paged by 2 through the 6 in the window, never past them
    for request in windowed.requests:
        assert request.url.params["created_after"] == since.isoformat()
        assert "created_after=2026-01-01T13%3A00%3A04%2B01%3A00" in str(request.url)


def test_sagas_since_is_sent_as_created_after() -> None:
    fake = FakeSagaList([T0 + timedelta(seconds=n) for n in range(3)])
    with GatewayClient("http://gateway.test", token="admin-token") as client:
        client.http.close()
        client.http = httpx.Client(base_url=client.base_url, transport=httpx.MockTransport(fake.handle))
        page = client.sagas("COMPLETED", 20, created_after=T0 + timedelta(seconds=1))
        everything = client.sagas()
    assert [s["saga_id"] for s in page["items"]] == ["saga-2", "saga-1"] and page["total"] == 2
    assert fake.requests[0].url.params["created_after"] == "2026-01-01T12:00:01+00:00"
    assert everything["total"] == 3 and "created_after" not in fake.requests[1].url.params


def test_the_local_runner_trusts_no_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """auth_service believes the gateway's X-Forwarded-For for its service token, not for its address."""
    monkeypatch.delenv("TRUSTED_PROXIES", raising=False)
    fleet = local_fleet(tmp_path / "var")
    fleet.registry = ServiceProcess("registry", "registry", 8761, {}, tmp_path / "registry.log")  # not started
    assert all("TRUSTED_PROXIES" not in fleet.service_env(name, 8000) for name in SERVICES)


def test_the_local_and_the_postgres_fleet_differ_by_data_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One supervisor: the CLI's fleet (SQLite under var/, default ports + offset, the demo admin) and the tests' and
    the bench's (a PostgreSQL database each, free ports, fault injection) are the same class given other data."""
    for name in ("BOOTSTRAP_ADMIN_EMAIL", "DATABASE_URL", "FAULT_INJECTION", "SERVICE_CLIENT_SECRET",
                 "EUREKA_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    local = local_fleet(tmp_path / "var", port_offset=100)
    local.registry = ServiceProcess("registry", "registry", local.port("registry"), {}, tmp_path / "r.log")
    assert [local.port(name) for name in COMPONENTS] == [c.port + 100 for c in COMPONENTS.values()]
    env = local.service_env("order_service", local.port("order_service"))
    assert env["DATABASE_URL"] == f"sqlite+aiosqlite:///{tmp_path / 'var' / 'order_service.db'}"
    assert env["EUREKA_SERVER_URL"] == f"http://eureka:{local.registry_password}@127.0.0.1:8861/eureka"
    assert env["AUTH_URLS"] == "http://127.0.0.1:8101" and "SERVICE_CLIENT_SECRET" not in env
    orchestrator = local.service_env("saga_orchestrator", local.port("saga_orchestrator"))
    assert orchestrator["SERVICE_CLIENT_SECRET"] == local.service_secret
    # The runner's table says what each service's settings say: who holds a client secret.
    for package in SERVICES:
        settings = importlib.import_module(f"{package}.settings").Settings
        assert COMPONENTS[package].holds_secret == settings.holds_service_secret, package
    assert env["BOOTSTRAP_ADMIN_EMAIL"] == "admin@example.com" and "FAULT_INJECTION" not in env
    assert "DATABASE_URL" not in local.service_env("gateway", 8180)

    server = PostgresServer("postgresql://pg@127.0.0.1:1/postgres", "postgresql+asyncpg://pg@127.0.0.1:1", "_x")
    tests = postgres_fleet(tmp_path, server, "cs_t", {"DB_POOL_SIZE": "3"})
    tests.registry = local.registry
    env = tests.service_env("order_service", 1234, LOG_LEVEL="DEBUG")
    assert env["DATABASE_URL"] == "postgresql+asyncpg://pg@127.0.0.1:1/cs_t_order_service_x"
    assert (env["FAULT_INJECTION"], env["DB_POOL_SIZE"], env["LOG_LEVEL"]) == ("true", "3", "DEBUG")
    assert server.dsn("cs_t_order_service") == "postgresql://pg@127.0.0.1:1/cs_t_order_service_x"
    assert type(local) is type(tests) and tests.port_offset is None
    assert env["AUTH_URLS"] == f"http://127.0.0.1:{tests.auth_port}" and tests.service_secret != local.service_secret


def test_local_secrets_are_made_once_and_a_secret_an_older_file_lacks_is_added(tmp_path: Path) -> None:
    made = local_secrets.load_or_create(tmp_path)
    assert local_secrets.load_or_create(tmp_path) == made
    path = tmp_path / local_secrets.FILE_NAME
    older = {k: v for k, v in json.loads(path.read_text()).items() if k != "gateway_client_secret"}
    path.write_text(json.dumps(older))  # as a runner before GATEWAY_CLIENT_SECRET wrote it
    read = local_secrets.read(tmp_path)
    assert read is not None and read.service_client_secret == made.service_client_secret
    assert read.admin_password == made.admin_password and len(read.gateway_client_secret) == 48
    assert local_secrets.read(tmp_path) == read  # written back: the same on the next run
