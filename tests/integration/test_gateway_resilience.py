"""The gateway against the real fleet: load balancing, failover, retries, breakers, limits, traces, metrics, docs.

Some tests start extra processes (a second order_service, gateways with other settings); each stops what it
started, and the fleet is left as it was found.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import User
from tests.fleet import METRICS_HEADERS, Fleet, ServiceProcess

pytestmark = pytest.mark.integration

APP = "ORDER-SERVICE"
ADDRESS = {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}


# ---------------------------------------------------------------- helpers


def log_records(proc: ServiceProcess) -> list[dict[str, Any]]:
    """The JSON log lines of a process (ignoring anything else it printed)."""
    records = []
    for line in proc.logs().splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def requests_logged(proc: ServiceProcess, request_id_prefix: str, **fields: Any) -> int:
    return sum(
        1 for r in log_records(proc)
        if r.get("event") == "request" and str(r.get("request_id", "")).startswith(request_id_prefix)
        and all(r.get(k) == v for k, v in fields.items())
    )


def settled_counts(procs: tuple[ServiceProcess, ...], tag: str, expected_total: int, **fields: Any) -> list[int]:
    """Requests logged per process; waits briefly, as a line is written just after its response is sent."""
    deadline = time.monotonic() + 5
    while True:
        counts = [requests_logged(p, tag, **fields) for p in procs]
        if sum(counts) >= expected_total or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`, from a process's /metrics."""
    text = httpx.get(f"{url}/metrics", headers=METRICS_HEADERS, timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def metric_series(url: str, name: str, **labels: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", headers=METRICS_HEADERS, timeout=5).text
    found = {}
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            series, value = line.rsplit(" ", 1)
            found[series] = float(value)
    return found


def inject(proc: ServiceProcess, path_regex: str, method: str = "GET", status: int = 503, count: int = -1) -> None:
    proc.inject_fault(path_regex, method, status, count)


def clear_faults(*procs: ServiceProcess) -> None:
    for proc in procs:
        proc.clear_faults()


def get_orders(client: httpx.Client, user: User, request_id: str, path: str = "/api/orders") -> httpx.Response:
    return client.get(path, headers={**user.headers, "X-Request-ID": request_id})


def wait_until_served(client: httpx.Client, user: User, proc: ServiceProcess, timeout: float = 20) -> None:
    """Until the gateway has seen `proc` in the registry and sent it a request."""
    tag = f"warm-{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        n += 1
        assert get_orders(client, user, f"{tag}-{n}").status_code == 200
        if requests_logged(proc, tag):
            return
        time.sleep(0.1)
    raise TimeoutError(f"the gateway did not send a request to {proc.name} within {timeout}s")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def second_order_service(fleet: Fleet, gateway_url: str, admin: User) -> Iterator[ServiceProcess]:
    """A second ORDER-SERVICE instance for this module (same database); stopped at the end."""
    with fleet.extra("order_service", "order_service_2") as proc:
        with httpx.Client(base_url=gateway_url, timeout=30) as client:
            wait_until_served(client, admin, proc)
            wait_until_served(client, admin, fleet.processes["order_service"])
        yield proc
    fleet.wait_deregistered(APP, proc.port)


@pytest.fixture(scope="module")
def breaker_gateway(fleet: Fleet, second_order_service: ServiceProcess) -> Iterator[ServiceProcess]:
    """A gateway whose breakers open after 3 failures for 2 s, with OpenTelemetry on (console exporter)."""
    with fleet.extra("gateway", "gateway_breaker", env={
        "BREAKER_FAILURE_THRESHOLD": "3", "BREAKER_COOLDOWN_SECS": "2",
        "OTEL_ENABLED": "true", "OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "200",
    }) as proc:
        yield proc


@pytest.fixture(scope="module")
def strict_gateway(fleet: Fleet) -> Iterator[ServiceProcess]:
    """A gateway with low limits: 2 KiB bodies, 3 requests per user (0.2/s), 10 per address (2/s)."""
    with fleet.extra("gateway", "gateway_strict", env={
        "MAX_BODY_BYTES": "2048", "RATE_LIMIT_USER_RPS": "0.2", "RATE_LIMIT_USER_BURST": "3",
        "RATE_LIMIT_ADDRESS_RPS": "2", "RATE_LIMIT_ADDRESS_BURST": "10",
    }) as proc:
        yield proc


# ---------------------------------------------------------------- load balancing and failover


def test_traffic_reaches_both_instances(fleet: Fleet, api: httpx.Client, admin: User,
                                        second_order_service: ServiceProcess) -> None:
    first = fleet.processes["order_service"]
    before = {p.name: metric(p.url, "http_requests_total", route="/api/orders", method="GET", status="200")
              for p in (first, second_order_service)}
    tag = f"lb-{uuid.uuid4().hex[:8]}"
    for n in range(40):
        assert get_orders(api, admin, f"{tag}-{n}").status_code == 200
    served = dict(zip((first.name, second_order_service.name),
                      settled_counts((first, second_order_service), tag, 40), strict=True))
    assert sum(served.values()) == 40 and min(served.values()) >= 10, served
    after = {p.name: metric(p.url, "http_requests_total", route="/api/orders", method="GET", status="200")
             for p in (first, second_order_service)}
    assert all(after[name] - before[name] == served[name] for name in served), (before, after, served)


def test_post_without_idempotency_key_is_never_retried(fleet: Fleet, api: httpx.Client, customer: User,
                                                       second_order_service: ServiceProcess) -> None:
    instances = (fleet.processes["order_service"], second_order_service)
    for proc in instances:
        inject(proc, r"^/api/orders$", method="POST")
    try:
        tag = f"post-{uuid.uuid4().hex[:8]}"
        body = {"currency": "EUR", "shipping_address": ADDRESS}
        for n in range(3):
            response = api.post("/api/orders", json=body, headers={**customer.headers, "X-Request-ID": f"{tag}-{n}"})
            assert response.status_code == 503, response.text
        time.sleep(0.3)  # a fourth line, if there were one, would have been written by now
        reached = sum(settled_counts(instances, tag, 3, method="POST"))
        assert reached == 3  # one upstream attempt per request: the 503 went back to the client

        keyed = f"keyed-{uuid.uuid4().hex[:8]}"
        response = api.post("/api/orders", json=body, headers={
            **customer.headers, "X-Request-ID": keyed, "Idempotency-Key": str(uuid.uuid4())})
        assert response.status_code == 503
        # With an Idempotency-Key the gateway tried the other instance too: both refused.
        assert settled_counts(instances, keyed, 2, method="POST") == [1, 1]
    finally:
        clear_faults(*instances)
    created = api.post("/api/orders", json={"currency": "EUR", "shipping_address": ADDRESS},
                       headers={**customer.headers, "Idempotency-Key": str(uuid.uuid4())})
    assert created.status_code == 201, created.text


def test_get_answered_503_by_one_instance_is_retried_on_the_other(
    fleet: Fleet, gateway_url: str, api: httpx.Client, admin: User, second_order_service: ServiceProcess
) -> None:
    retries_before = metric(gateway_url, "gateway_upstream_retries_total", app=APP, reason="status_503")
    inject(second_order_service, r"^/api/orders$", method="GET", count=2)
    try:
        tag = f"retry-{uuid.uuid4().hex[:8]}"
        statuses = [get_orders(api, admin, f"{tag}-{n}").status_code for n in range(6)]
    finally:
        clear_faults(second_order_service)
    assert statuses == [200] * 6
    assert metric(gateway_url, "gateway_upstream_retries_total", app=APP, reason="status_503") - retries_before == 2


def test_breaker_opens_after_repeated_failures_and_closes_after_cooldown(
    fleet: Fleet, admin: User, second_order_service: ServiceProcess, breaker_gateway: ServiceProcess
) -> None:
    port = str(second_order_service.port)
    path = f"/api/orders/probe-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=breaker_gateway.url, timeout=30) as client:
        wait_until_served(client, admin, second_order_service)
        inject(second_order_service, r"^/api/orders/probe-")
        try:
            tag = f"brk-{uuid.uuid4().hex[:8]}"
            for n in range(12):
                # The other instance answers (404: no such order) whenever this one refuses.
                assert get_orders(client, admin, f"{tag}-{n}", path).status_code == 404
            time.sleep(0.3)
            assert requests_logged(second_order_service, tag) == 3  # then its breaker opened
            states = metric_series(breaker_gateway.url, "gateway_circuit_breaker_state", app=APP)
            assert [v for s, v in states.items() if port in s] == [1.0], states
            assert sum(v for s, v in metric_series(breaker_gateway.url, "gateway_circuit_breaker_opened_total",
                                                   app=APP).items() if port in s) == 1
        finally:
            clear_faults(second_order_service)
        time.sleep(2.2)  # the cool-down: then one trial request, which succeeds and closes it
        tag = f"brk-closed-{uuid.uuid4().hex[:8]}"
        for n in range(6):
            assert get_orders(client, admin, f"{tag}-{n}", path).status_code == 404
        assert requests_logged(second_order_service, tag) >= 2
        states = metric_series(breaker_gateway.url, "gateway_circuit_breaker_state", app=APP)
        assert [v for s, v in states.items() if port in s] == [0.0], states


def test_opentelemetry_console_exporter_writes_spans_of_the_same_trace(
    admin: User, breaker_gateway: ServiceProcess
) -> None:
    trace_id = uuid.uuid4().hex
    response = httpx.get(f"{breaker_gateway.url}/api/orders", headers={
        **admin.headers, "traceparent": f"00-{trace_id}-{'cd' * 8}-01"}, timeout=30)
    assert response.status_code == 200
    deadline = time.monotonic() + 15  # the batch processor exports every few seconds
    spans: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len({s["kind"] for s in spans}) < 2:
        time.sleep(0.5)
        spans = [r for r in log_records(breaker_gateway)
                 if "context" in r and r["context"].get("trace_id") == f"0x{trace_id}"]
    assert {"SpanKind.SERVER", "SpanKind.CLIENT"} <= {s["kind"] for s in spans}, spans
    request_lines = [r for r in log_records(breaker_gateway) if r.get("event") == "request"
                     and r.get("trace_id") == trace_id]
    assert request_lines  # the JSON log line names the same trace


def test_killed_instance_loses_no_get(fleet: Fleet, gateway_url: str, api: httpx.Client, admin: User,
                                      second_order_service: ServiceProcess) -> None:
    """SIGKILL one of two instances mid-traffic: retries cover the registry's lease window, then it is gone."""
    failures: list[int] = []
    tag = f"kill-{uuid.uuid4().hex[:8]}"
    n = 0

    def burst(seconds: float) -> None:
        nonlocal n
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            n += 1
            status = get_orders(api, admin, f"{tag}-{n}").status_code
            if status != 200:
                failures.append(status)

    gateway = fleet.processes["gateway"]
    port = str(second_order_service.port)

    def failed_attempts() -> int:
        return sum(1 for r in log_records(gateway)
                   if r.get("event") == "upstream attempt failed" and port in str(r.get("instance")))

    # Earlier tests' injected 503s may have opened its breaker in this gateway: wait for it to take traffic.
    wait_until_served(api, admin, second_order_service)
    burst(1)
    assert requests_logged(second_order_service, tag) > 0
    failed_before = failed_attempts()
    second_order_service.kill()
    burst(1)
    fleet.wait_deregistered(APP, second_order_service.port)  # lease 3 s, eviction every 1 s
    burst(2)  # one registry refresh (1 s) and a margin
    failed_after_refresh = failed_attempts()
    burst(1)
    assert failures == [], failures  # every GET in the window was answered, by failover to the live instance
    assert n > 20
    assert failed_after_refresh > failed_before  # the dead instance was tried (and failed over) in the window
    assert failed_attempts() == failed_after_refresh  # gone from the gateway's registry copy: no longer tried


# ---------------------------------------------------------------- limits


def test_body_over_the_limit_is_413(strict_gateway: ServiceProcess, customer: User) -> None:
    with httpx.Client(base_url=strict_gateway.url, timeout=30) as client:
        declared = client.post("/api/orders", content=b"{" + b" " * 3000 + b"}",
                               headers={**customer.headers, "Content-Type": "application/json"})

        def chunks() -> Iterator[bytes]:
            for _ in range(6):
                yield b" " * 1000

        streamed = client.post("/api/orders", content=chunks(),
                               headers={**customer.headers, "Content-Type": "application/json"})
    for response in (declared, streamed):
        assert response.status_code == 413, response.text
        assert response.json()["type"].endswith("/payload-too-large")


def test_user_over_the_rate_limit_is_429(fleet: Fleet, strict_gateway: ServiceProcess, api: httpx.Client) -> None:
    from tests.conftest import register_customer

    user = register_customer(api)  # a fresh user: a full bucket
    with httpx.Client(base_url=strict_gateway.url, timeout=30) as client:
        responses = [client.get("/api/orders", headers=user.headers) for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert [r.headers["ratelimit-remaining"] for r in responses[:3]] == ["2", "1", "0"]
    refused = responses[-1]
    assert refused.json()["limit"] == "user"
    assert 1 <= int(refused.headers["retry-after"]) <= 5 and refused.headers["ratelimit-limit"] == "3"


def test_client_address_over_the_rate_limit_is_429(strict_gateway: ServiceProcess) -> None:
    with httpx.Client(base_url=strict_gateway.url, timeout=30) as client:
        for _ in range(40):
            response = client.get("/api/inventory/products", params={"limit": 1})
            if response.status_code == 429:
                break
            assert response.status_code == 200
    assert response.status_code == 429
    assert response.json()["limit"] == "address" and response.headers["retry-after"] == "1"
    assert {"ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"} <= set(response.headers)
    assert metric(strict_gateway.url, "gateway_rate_limited_total", limit="address") >= 1


# ---------------------------------------------------------------- traces, metrics, docs


def _catalogue(api: httpx.Client, admin: User) -> str:
    tag = uuid.uuid4().hex[:6].upper()
    sku = f"TRACE-{tag}"
    product = api.post("/api/inventory/products", headers=admin.headers, json={
        "sku": sku, "name": "Traced widget", "unit_price_minor": 500, "currency": "EUR", "weight_grams": 100,
        "on_hand": 10})
    assert product.status_code == 201, product.text
    carrier = api.post("/api/carriers", headers=admin.headers, json={
        "code": f"TR{tag}", "name": "Trace Parcel", "countries": ["DE"], "max_weight_grams": 100_000,
        "daily_capacity": 1000, "base_price_minor": 0, "price_per_kg_minor": 0, "currency": "EUR"})
    assert carrier.status_code == 201, carrier.text
    return sku


def test_one_trace_and_request_id_in_the_logs_of_every_service_a_saga_touched(
    fleet: Fleet, api: httpx.Client, admin: User, customer: User
) -> None:
    sku = _catalogue(api, admin)
    request_id = f"trace-{uuid.uuid4().hex}"
    # No traceparent from the client: the gateway starts the trace, and every hop must carry that one.
    response = api.post("/api/customer-orders", json={
        "lines": [{"sku": sku, "quantity": 1}], "shipping_address": ADDRESS, "payment_token": "tok_visa"},
        headers={**customer.headers, "Idempotency-Key": str(uuid.uuid4()), "X-Request-ID": request_id,
                 "Prefer": "wait=30"})
    assert response.status_code in (200, 201, 202), response.text
    saga_id = response.json()["saga_id"]
    deadline = time.monotonic() + 40
    while api.get(f"/api/customer-orders/{saga_id}", headers=customer.headers).json()["status"] != "COMPLETED":
        assert time.monotonic() < deadline, "the saga did not complete"
        time.sleep(0.2)
    gateway_lines = [r for r in log_records(fleet.processes["gateway"])
                     if r.get("event") == "request" and r.get("request_id") == request_id]
    assert len(gateway_lines) == 1, gateway_lines
    trace_id = gateway_lines[0]["trace_id"]
    assert len(trace_id) == 32 and trace_id != "0" * 32
    touched = ["auth_service", "saga_orchestrator", "order_service", "inventory_service", "payment_service",
               "carrier_service", "shipment_service"]
    missing = []
    for package in touched:
        procs = [p for p in fleet.processes.values() if p.package == package]
        if not any(r.get("trace_id") == trace_id and r.get("request_id") == request_id
                   for p in procs for r in log_records(p)):
            missing.append(package)
    assert missing == [], f"no log line with trace_id {trace_id} and request_id {request_id} in {missing}"


def test_every_service_exposes_metrics_that_count(fleet: Fleet, api: httpx.Client, admin: User) -> None:
    assert get_orders(api, admin, f"metrics-{uuid.uuid4().hex[:8]}").status_code == 200
    gateway = fleet.processes["gateway"]
    assert metric(gateway.url, "http_requests_total", service="gateway", route="/api/orders") >= 1
    assert metric(gateway.url, "http_requests_total", service="gateway", route="/{path:path}") == 0
    assert metric(gateway.url, "gateway_validate_duration_seconds_count", outcome="pass") >= 1
    assert metric(gateway.url, "gateway_upstream_request_duration_seconds_count", app=APP) >= 1
    for proc in [p for p in fleet.processes.values() if p.alive()]:
        response = httpx.get(f"{proc.url}/metrics", headers=METRICS_HEADERS, timeout=5)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain"), proc.name
        assert "http_requests_total" in response.text, proc.name
    order_service = fleet.processes["order_service"]
    assert metric(order_service.url, "http_requests_total", route="/api/orders", method="GET") >= 1


def test_merged_openapi_document_and_docs_page(api: httpx.Client) -> None:
    document = api.get("/openapi.json")
    assert document.status_code == 200, document.text
    paths = document.json()["paths"]
    for prefix in ("/api/auth/login", "/api/orders", "/api/inventory/products", "/api/payments", "/api/carriers",
                   "/api/shipments", "/api/customer-orders"):
        assert any(p == prefix or p.startswith(prefix + "/") for p in paths), prefix
    assert not any(p.startswith(("/validate", "/_faults", "/health", "/metrics")) for p in paths)
    assert document.json()["x-services"]["unavailable"] == {}
    docs = api.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
