"""Metrics labelled by route table entry, the trace the gateway sends on, and OpenTelemetry when switched on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import create_app
from gateway.routes import Route
from shared import tracing
from tests.fleet import METRICS_HEADERS
from tests.gateway.conftest import GatewayUnderTest, Instance, fake_auth_app, quiet_settings, serving
from tests.gateway.conftest import Upstreams as Seen

GOOD = {"Authorization": "Bearer good"}
CLIENT_TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _count(metrics: str, **labels: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("http_requests_total{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_proxied_requests_are_counted_by_route_table_prefix(gw: GatewayUnderTest) -> None:
    async with gw.client() as client:
        before = (await client.get("/metrics", headers=METRICS_HEADERS)).text
        assert (await client.get("/api/orders/o-1", headers=GOOD)).status_code == 200
        assert (await client.get("/api/inventory/products?limit=1")).status_code == 200
        assert (await client.get("/api/nowhere", headers=GOOD)).status_code == 404
        after = (await client.get("/metrics", headers=METRICS_HEADERS)).text
    for route in ("/api/orders", "/api/inventory/products"):
        assert _count(after, service="gateway", route=route, status="200") == \
            _count(before, service="gateway", route=route, status="200") + 1
    assert _count(after, service="gateway", route="unmatched", status="404") >= 1
    assert _count(after, service="gateway", route="/{path:path}") == 0  # never the catch-all's template
    assert "gateway_validate_duration_seconds_count" in after
    assert 'gateway_upstream_request_duration_seconds_count{app="ORDER-SERVICE"' in after


async def test_generated_traceparent_is_the_one_sent_to_auth_and_service(gw: GatewayUnderTest) -> None:
    async with gw.client() as client:
        response = await client.get("/api/orders/o-1", headers=GOOD)
    sent = dict((k, v) for k, v in response.json()["headers"])["traceparent"]
    assert tracing.valid_traceparent(sent)
    (validate_headers,) = gw.seen.validate_calls
    assert validate_headers["traceparent"] == sent


@pytest.fixture
async def traced_gateway() -> AsyncIterator[tuple[str, Instance]]:
    """A gateway with OTEL_ENABLED=true and the in-memory exporter; tracing is switched off again afterwards."""
    upstream, seen = Instance("u"), Seen()
    try:
        async with serving(upstream.app()) as server, serving(fake_auth_app(seen)) as auth:
            settings = quiet_settings(
                routes=[Route(prefix="/api/traced", app="TRACED-SERVICE")],
                static_instances={"TRACED-SERVICE": [server.url], "AUTH-SERVICE": [auth.url]},
                otel_enabled=True, otel_traces_exporter="memory",
            )
            async with serving(create_app(settings)) as gateway:
                yield gateway.url, upstream
    finally:
        tracing.disable_tracing()


async def test_opentelemetry_spans_for_the_request_and_its_upstream_calls(traced_gateway: tuple[str, Instance]) -> None:
    url, upstream = traced_gateway
    async with httpx.AsyncClient(base_url=url) as client:
        fresh = await client.get("/api/traced/a", headers=GOOD)
        continued = await client.get("/api/traced/b", headers={**GOOD, "traceparent": CLIENT_TP})
        await client.get("/health")
    assert fresh.status_code == continued.status_code == 200
    spans = tracing.finished_spans()
    by_trace: dict[str, list[str]] = {}
    for span in spans:
        by_trace.setdefault(f"{span.context.trace_id:032x}", []).append(span.kind.name)
    # A server span for each request, and a client span for each of its two calls (/validate, the service).
    (fresh_call,) = [h for m, p, h in upstream.calls if p == "/api/traced/a"]
    (continued_call,) = [h for m, p, h in upstream.calls if p == "/api/traced/b"]
    fresh_trace = fresh_call["traceparent"].split("-")[1]
    assert sorted(by_trace[fresh_trace]).count("CLIENT") == 2
    assert "SERVER" in by_trace[fresh_trace]
    # The caller's trace goes on; the upstream's parent is the gateway's client span, not the caller's span.
    assert continued_call["traceparent"].split("-")[1] == CLIENT_TP.split("-")[1]
    client_spans = {f"{s.context.span_id:016x}" for s in spans if s.kind.name == "CLIENT"}
    assert continued_call["traceparent"].split("-")[2] in client_spans
    # Probes are not traced.
    assert not [s for s in spans if "/health" in s.name]
