"""Bad input through the gateway: oversized, malformed and non-JSON bodies get a 4xx problem, never a 5xx; path
tricks never reach a service they do not name.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.fleet import Fleet
from tests.reliability.conftest import Admin, say

pytestmark = pytest.mark.integration

# Every POST a client (or an operator) can send through the gateway, with a body the service parses.
WRITES = [
    "/api/auth/register",
    "/api/auth/login",
    "/api/orders",
    "/api/inventory/products",
    "/api/inventory/allocations",
    "/api/payments",
    "/api/carriers",
    "/api/carriers/assignments",
    "/api/shipments",
    "/api/customer-orders",
]

# (label, content-type, body): things a broken or hostile client sends.
MALFORMED: list[tuple[str, str, bytes]] = [
    ("empty body", "application/json", b""),
    ("truncated JSON", "application/json", b'{"lines": [{"sku": "A", "quantity": 1'),
    ("JSON array", "application/json", b"[1, 2, 3]"),
    ("JSON string", "application/json", b'"hello"'),
    ("JSON null", "application/json", b"null"),
    ("not JSON at all", "application/json", b"hello, world"),
    ("plain text", "text/plain", b"hello, world"),
    ("form-encoded", "application/x-www-form-urlencoded", b"a=1&b=2"),
    ("XML", "application/xml", b"<order><sku>A</sku></order>"),
    ("invalid UTF-8", "application/json", b'{"name": "\xff\xfe\xfd"}'),
    ("NaN and Infinity", "application/json", b'{"quantity": NaN, "amount_minor": Infinity}'),
    ("huge number", "application/json", b'{"quantity": 1e400, "amount_minor": 123456789012345678901234567890}'),
    ("wrong types", "application/json", b'{"lines": "all", "currency": 42, "sku": [], "email": {}}'),
    ("deep nesting", "application/json", b'{"a": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"),
    ("many keys", "application/json", json.dumps({f"k{i}": i for i in range(20_000)}).encode()),
    ("long string", "application/json", json.dumps({"name": "x" * 1_000_000, "email": "y" * 100_000}).encode()),
    ("many lines", "application/json", json.dumps({"lines": [{"sku": "A", "quantity": 1}] * 50_000}).encode()),
]


def _problem(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("application/problem+json")


@pytest.mark.parametrize("path", WRITES)
def test_malformed_bodies_are_refused_with_a_problem(gateway_url: str, rel_admin: Admin, path: str) -> None:
    found: list[str] = []
    with httpx.Client(base_url=gateway_url, timeout=30) as api:
        for label, content_type, body in MALFORMED:
            headers = {"Content-Type": content_type, "Idempotency-Key": str(uuid.uuid4())}
            if path != "/api/auth/login":  # a bearer token on /login would only add noise
                headers.update(rel_admin.headers)
            response = api.post(path, content=body, headers=headers)
            if not 400 <= response.status_code < 500 or not _problem(response):
                found.append(f"{label}: {response.status_code} {response.headers.get('content-type')}"
                             f" {response.text[:200]}")
    assert not found, f"POST {path}:\n" + "\n".join(found)


def test_an_oversized_body_is_refused_at_the_gateway(gateway_url: str, rel_admin: Admin) -> None:
    body = b'{"lines": [' + b'{"sku": "A", "quantity": 1},' * 420_000 + b'{"sku": "A", "quantity": 1}]}'  # > 10 MiB
    with httpx.Client(base_url=gateway_url, timeout=60) as api:
        declared = api.post("/api/customer-orders", content=body, headers={
            **rel_admin.headers, "Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())})

        def chunks() -> Any:  # no Content-Length: the gateway must count as it reads
            for start in range(0, len(body), 1 << 20):
                yield body[start:start + (1 << 20)]

        streamed = api.post("/api/orders", content=chunks(), headers={
            **rel_admin.headers, "Content-Type": "application/json"})
    for response in (declared, streamed):
        assert response.status_code == 413 and _problem(response), (response.status_code, response.text[:300])


def test_a_nul_character_in_a_json_string_is_refused(gateway_url: str, rel_admin: Admin) -> None:
    with httpx.Client(base_url=gateway_url, timeout=30) as api:
        carrier = api.post("/api/carriers", headers=rel_admin.headers, json={
            "code": f"NUL{uuid.uuid4().hex[:6].upper()}", "name": "Nul\x00Parcel", "countries": ["DE"],
            "max_weight_grams": 1000, "daily_capacity": 1, "base_price_minor": 0, "price_per_kg_minor": 0})
        order = api.post("/api/orders", headers=rel_admin.headers, json={"customer_id": "cust\x00omer"})
    assert carrier.status_code == 422 and order.status_code == 422, (carrier.text, order.text)


# -- path tricks: the route is chosen on what the service will see, or the request is refused --------------

def _tricks(fleet: Fleet) -> list[tuple[str, set[str]]]:
    """Request targets, each with the services it may reach: none for a path trick; for an absolute-form target,
    only the service its path names (a proxy routes by path; it must never connect to the host it names)."""
    order_host = urlsplit(fleet.processes["order_service"].url).netloc
    tricks = [
        "/api/orders/../payments",
        "/api/orders/%2e%2e/payments",
        "/api/orders/%2E%2E/payments",
        "/api/orders/.%2e/payments",
        "/api/orders/..%2fpayments",
        "/api/orders%2f..%2fpayments",
        "/api/orders%2F..%2Fpayments",
        "/api/orders/%252e%252e/payments",
        "/api/orders/..%5cpayments",
        "/api/orders\\..\\payments",
        "/api/orders/..;/payments",
        "/api/inventory/products/..;/../../payments",
        "/api/./payments",
        "//api/payments",
        "/api//payments",
        "/api/orders/%00/../payments",
        "/api/customer-orders/../payments",
        "*",
    ]
    absolute = [f"http://{order_host}/api/payments", "http://127.0.0.2:9/api/payments"]
    return [(t, set()) for t in tricks] + [(t, {"payment_service"}) for t in absolute]


def _raw_get(gateway_url: str, target: str, headers: dict[str, str]) -> tuple[int, str]:
    """Send the request target exactly as written (httpx would normalise it)."""
    parts = urlsplit(gateway_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", parts.netloc)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def test_path_tricks_never_reach_another_service(fleet: Fleet, gateway_url: str, rel_admin: Admin) -> None:
    sent: dict[str, tuple[str, set[str]]] = {}
    wrong: list[str] = []
    for target, allowed in _tricks(fleet):
        request_id = f"trick-{uuid.uuid4().hex}"
        sent[request_id] = (target, allowed)
        status, body = _raw_get(gateway_url, target, {**rel_admin.headers, "X-Request-ID": request_id})
        # A trick is refused (400, or 404 for a path no route owns); never a 5xx, never served by another service.
        if status >= 500 or (not allowed and (status not in (400, 404) or '"items"' in body)):
            wrong.append(f"{target!r}: {status} {body[:200]}")
    time.sleep(0.5)  # let the services flush their request logs
    for name, proc in fleet.processes.items():
        if name in ("gateway", "auth_service"):  # auth only validates the token
            continue
        logs = proc.logs()
        wrong.extend(f"{target!r} reached {name}" for rid, (target, allowed) in sent.items()
                     if rid in logs and name not in allowed)
    say(f"tried: {len(sent)} path tricks through the gateway; found {len(wrong)} that got through")
    assert not wrong, "\n".join(wrong)


def test_ordinary_paths_still_route(gateway_url: str, rel_admin: Admin) -> None:
    """The control for the tricks above: the same client reaches payments by its plain path."""
    status, body = _raw_get(gateway_url, "/api/payments?limit=1", rel_admin.headers)
    assert status == 200 and '"items"' in body, body[:300]
