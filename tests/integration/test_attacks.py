"""Issue 15 played as an attacker against the real fleet (the gateway and the services' own ports): each refused.

One test per defect: long request ids and echoed paths that opened every breaker, tokens nested past the JSON
parser's depth, a huge `Prefer: wait`, Host and Connection tricks, oversized and slow clients, a customer
cancelling a shipment of a paid order, card tokens the saga took and payment refused, anonymous metrics.
"""

from __future__ import annotations

import base64
import json
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
import pytest

from customer_cli.invariants import check_invariants
from tests.conftest import User, login, register_customer
from tests.fleet import Fleet, ServiceProcess

pytestmark = pytest.mark.integration

ADDRESS = {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}
# More than the gateway's breaker threshold (5): on the old main this many opened the instance's breaker.
ATTEMPTS = 7


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def catalogue(gateway_url: str, admin: User) -> str:
    sku = f"ATTACK-{uuid.uuid4().hex[:6].upper()}"
    with httpx.Client(base_url=gateway_url, timeout=30) as api:
        response = api.post("/api/inventory/products", headers=admin.headers, json={
            "sku": sku, "name": "Attack widget", "unit_price_minor": 900, "currency": "EUR",
            "weight_grams": 300, "on_hand": 1000})
        assert response.status_code == 201, response.text
        response = api.post("/api/carriers", headers=admin.headers, json={
            "code": sku.replace("-", "")[:12], "name": "Attack Parcel", "countries": ["DE"],
            "max_weight_grams": 1_000_000, "daily_capacity": 100_000, "base_price_minor": 0,
            "price_per_kg_minor": 0, "currency": "EUR"})
        assert response.status_code == 201, response.text
    return sku


def place(api: httpx.Client, user: User, sku: str, *, token: str = "tok_visa", wait: str = "20",
          quantity: int = 1) -> httpx.Response:
    return api.post("/api/customer-orders", headers={**user.headers, "Idempotency-Key": str(uuid.uuid4()),
                                                     "Prefer": f"wait={wait}"},
                    json={"lines": [{"sku": sku, "quantity": quantity}], "payment_token": token,
                          "shipping_address": ADDRESS})


def order_service_still_answers(api: httpx.Client, user: User) -> None:
    response = api.get("/api/orders", headers=user.headers)
    assert response.status_code == 200, f"ORDER-SERVICE's breaker opened: {response.status_code} {response.text}"


# ---------------------------------------------------------------- item 3: the client's request opens no breaker


def test_a_long_request_id_is_replaced_and_never_opens_a_breaker(api: httpx.Client, customer: User) -> None:
    for _ in range(ATTEMPTS):
        response = api.get("/api/orders", headers={**customer.headers, "X-Request-ID": "r" * 9000})
        assert response.status_code == 200, response.text
        assert len(response.headers["X-Request-ID"]) <= 128
    bad = api.get("/api/orders", headers={**customer.headers, "X-Request-ID": "a\tb<script>"})
    assert bad.headers["X-Request-ID"] != "a\tb<script>"
    good = api.get("/api/orders", headers={**customer.headers, "X-Request-ID": "my-trace-42"})
    assert good.headers["X-Request-ID"] == "my-trace-42"
    order_service_still_answers(api, customer)


def test_a_long_path_echoed_in_a_redirect_never_opens_a_breaker(api: httpx.Client, customer: User) -> None:
    # The service redirects /api/orders/<id>/ to /api/orders/<id>: its Location carries the 9,000 characters.
    for _ in range(ATTEMPTS):
        response = api.get(f"/api/orders/{'o' * 9000}/", headers=customer.headers)
        assert response.status_code in (307, 404, 414, 422), response.text
    order_service_still_answers(api, customer)


# ---------------------------------------------------------------- item 5: never a 500


def test_a_token_nested_past_the_parsers_depth_is_a_401_everywhere(fleet: Fleet, api: httpx.Client) -> None:
    header = b64(json.dumps({"alg": "RS256", "kid": "x", "typ": "JWT"}).encode())
    for nested in (b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000):
        token = f"{header}.{b64(nested)}.{b64(b'signature')}"
        bearer = {"Authorization": f"Bearer {token}"}
        assert api.get("/api/orders", headers=bearer).status_code == 401
        assert httpx.get(f"{fleet.processes['auth_service'].url}/validate", headers=bearer).status_code == 401
        assert httpx.get(f"{fleet.processes['order_service'].url}/api/orders", headers=bearer).status_code == 401


def test_a_prefer_wait_of_five_thousand_digits_is_parsed_before_the_saga(
        api: httpx.Client, customer: User, catalogue: str) -> None:
    response = place(api, customer, catalogue, wait="9" * 5000)
    assert response.status_code in (200, 202), response.text


# ---------------------------------------------------------------- item 6: Host and Connection


def test_the_gateway_sets_host_itself_and_never_leaks_the_internal_address(
        fleet: Fleet, api: httpx.Client, customer: User) -> None:
    internal = urlsplit(fleet.processes["order_service"].url).netloc
    for extra in ({"Host": "evil.example"}, {"Connection": "host"}, {"Host": "evil.example", "Connection": "host"}):
        response = api.get("/api/orders/", headers={**customer.headers, **extra})
        assert response.status_code == 307, response.text
        location = response.headers["Location"]
        assert "evil.example" not in location and internal not in location, location
        assert location == "/api/orders"


# ---------------------------------------------------------------- item 9: oversized and slow clients


def _raw_exchange(url: str, request: bytes, timeout: float = 30, until_close: bool = True) -> bytes:
    """Send `request` as it is and read until the server closes (or, `until_close` False, until the head of its
    answer is in); what it answered (b'' if it just closed)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if not until_close and b"\r\n\r\n" in received:
                    break
        except ConnectionResetError:
            pass
        return received


def test_an_eight_megabyte_header_is_refused_by_every_server(fleet: Fleet) -> None:
    assert fleet.registry is not None
    for url in (fleet.gateway_url, fleet.processes["order_service"].url, fleet.registry.url):
        try:
            response = httpx.get(f"{url}/health", headers={"X-Padding": "p" * (8 * 1024 * 1024)}, timeout=30)
        except httpx.HTTPError:
            continue  # closed on us mid-upload: refused too
        assert response.status_code == 431, (url, response.status_code)


def test_a_fifty_megabyte_body_straight_to_a_service_is_refused_before_it_is_read(
        fleet: Fleet, customer: User) -> None:
    order_service = fleet.processes["order_service"].url
    head = (f"POST /api/orders HTTP/1.1\r\nHost: x\r\nAuthorization: {customer.headers['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {50 * 1024 * 1024}\r\n\r\n").encode()
    # Only the head and one megabyte are sent: the answer must come without the other 49.
    answer = _raw_exchange(order_service, head + b"[" * (1024 * 1024), until_close=False)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    chunk = b"[" * 65536
    chunked = (f"POST /api/orders HTTP/1.1\r\nHost: x\r\nAuthorization: {customer.headers['Authorization']}\r\n"
               "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(40))  # 2.5 MB, never terminated
    answer = _raw_exchange(order_service, chunked + body, until_close=False)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


@pytest.fixture(scope="module")
def impatient_gateway(fleet: Fleet) -> Iterator[ServiceProcess]:
    """A second gateway with one-second header-read, body-read and keep-alive bounds, so a test need not wait ten."""
    with fleet.extra("gateway", "gateway_impatient", env={
        "HEADER_READ_TIMEOUT_SECS": "1", "KEEP_ALIVE_TIMEOUT_SECS": "1", "BODY_READ_TIMEOUT_SECS": "1",
    }) as proc:
        yield proc


def test_slowloris_and_idle_connections_are_closed(impatient_gateway: ServiceProcess) -> None:
    url = impatient_gateway.url
    # Nothing sent at all, and a head that never ends: 408, then closed (the read ends instead of timing out).
    assert _raw_exchange(url, b"").startswith(b"HTTP/1.1 408")
    assert _raw_exchange(url, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: a").startswith(b"HTTP/1.1 408")
    # A body that stops coming: 408, then closed.
    stalled = b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
    assert _raw_exchange(url, stalled).startswith(b"HTTP/1.1 408")
    # An idle keep-alive connection after a complete request: closed after the answer.
    answer = _raw_exchange(url, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1


# ---------------------------------------------------------------- item 10: a shipment goes with its order


def test_a_customer_cannot_cancel_the_shipment_of_a_completed_order(
        fleet: Fleet, api: httpx.Client, customer: User, admin: User, catalogue: str) -> None:
    started = datetime.now(UTC)
    saga = place(api, customer, catalogue)
    assert saga.status_code == 200 and saga.json()["status"] == "COMPLETED", saga.text
    shipments = api.get("/api/shipments", headers=customer.headers).json()["items"]
    shipment = next(s for s in shipments if s["status"] == "CREATED")
    through_gateway = api.post(f"/api/shipments/{shipment['id']}/cancel", headers=customer.headers)
    assert through_gateway.status_code == 409, through_gateway.text
    direct = httpx.post(f"{fleet.processes['shipment_service'].url}/api/shipments/{shipment['id']}/cancel",
                        headers=customer.headers)
    assert direct.status_code == 409, direct.text
    assert api.get(f"/api/shipments/{shipment['id']}", headers=customer.headers).json()["status"] == "CREATED"
    report = check_invariants(str(api.base_url), admin.token, since=started)
    assert report.ok, report.render()


# ---------------------------------------------------------------- item 12: one card-token contract


def test_the_saga_refuses_card_tokens_the_payment_service_would_refuse(
        fleet: Fleet, api: httpx.Client, customer: User, catalogue: str) -> None:
    for token in ("tok-visa", "t" * 65, "tok visa"):
        response = place(api, customer, catalogue, token=token)
        assert response.status_code == 422, (token, response.status_code, response.text)
    sagas = api.get("/api/customer-orders", headers=customer.headers).json()
    assert sagas["total"] == 0


# ---------------------------------------------------------------- item 13: metrics are the operator's


def test_metrics_are_for_the_operator_only(fleet: Fleet, api: httpx.Client, customer: User, admin: User) -> None:
    assert api.get("/metrics").status_code == 401
    assert api.get("/metrics", headers=customer.headers).status_code == 403
    operator = api.get("/metrics", headers=admin.headers)
    assert operator.status_code == 200 and "http_requests_total" in operator.text
    for name, proc in fleet.processes.items():
        if proc.alive():
            assert httpx.get(f"{proc.url}/metrics", timeout=5).status_code == 401, name
            assert httpx.get(f"{proc.url}/metrics", headers=customer.headers, timeout=5).status_code == 403, name
            assert httpx.get(f"{proc.url}/metrics", headers=admin.headers, timeout=5).status_code == 200, name



# ---------------------------------------------------------------- item 11: what one customer may hold


@pytest.fixture(scope="module")
def bounded_orchestrator(fleet: Fleet, admin: User, gateway_url: str) -> Iterator[ServiceProcess]:
    """The fleet's orchestrator with the product's bound of unfinished sagas per customer (the suite lifts it)."""
    proc = fleet.replace("saga_orchestrator", MAX_UNFINISHED_SAGAS_PER_CUSTOMER="1", MAX_UNITS_PER_ORDER="5")
    with httpx.Client(base_url=gateway_url, timeout=30) as api:
        wait_for_orchestrator(api, admin)
        yield proc
        fleet.replace("saga_orchestrator")
        wait_for_orchestrator(api, admin)


def wait_for_orchestrator(api: httpx.Client, admin: User) -> None:
    for _ in range(150):
        if api.get("/api/customer-orders", headers=admin.headers).status_code == 200:
            return
        time.sleep(0.2)
    raise TimeoutError("the gateway does not reach SAGA-ORCHESTRATOR")


def test_one_customer_cannot_hoard_stock(bounded_orchestrator: ServiceProcess, api: httpx.Client,
                                         customer: User, catalogue: str) -> None:
    too_many = place(api, customer, catalogue, quantity=6)
    assert too_many.status_code == 422, too_many.text
    # A card that keeps failing transiently holds its stock until the step's deadline.
    holding = place(api, customer, catalogue, token="tok_processingError", wait="0", quantity=5)
    assert holding.status_code == 202, holding.text
    second = place(api, customer, catalogue, wait="0")
    assert second.status_code == 429, second.text
    assert "Retry-After" in second.headers
    # Another customer is not bound by the first one's orders.
    other = register_customer(api)
    assert place(api, other, catalogue, wait="0").status_code == 202


# ---------------------------------------------------------------- items 7, 2 and 14: throttles at auth_service

ATTACKER, OWNER_ADDRESS = "198.51.100.66", "198.51.100.99"
SPRAYER, NEIGHBOUR = "203.0.113.66", "203.0.113.77"  # a client of its own: one throttled address each


@pytest.fixture(scope="module")
def gateway_behind_lb(fleet: Fleet) -> Iterator[ServiceProcess]:
    """A gateway trusting 127.0.0.1: the test plays a load balancer and names the client addresses itself."""
    with fleet.extra("gateway", "gateway_attacks_lb", env={"TRUSTED_PROXIES": "127.0.0.1"}) as proc:
        yield proc


def login_as(client: httpx.Client, user: User, address: str, password: str | None = None) -> int:
    response = client.post("/api/auth/login", headers={"X-Forwarded-For": address},
                           json={"email": user.email, "password": password or user.password})
    return response.status_code


def test_one_clients_failed_logins_do_not_lock_out_another_client(
        gateway_behind_lb: ServiceProcess, api: httpx.Client, customer: User) -> None:
    with httpx.Client(base_url=gateway_behind_lb.url, timeout=30) as balancer:
        # Wrong passwords for many accounts, one each: only the per-address limit (20 in the fleet) stops them.
        for _ in range(50):
            wrong = balancer.post("/api/auth/login", headers={"X-Forwarded-For": SPRAYER},
                                  json={"email": f"spray-{uuid.uuid4().hex[:8]}@example.com", "password": "guess"})
            if wrong.status_code == 429:
                break
            assert wrong.status_code == 401, wrong.text
        assert wrong.status_code == 429, "the sprayer's address was never throttled"
        assert login_as(balancer, customer, SPRAYER) == 429
        assert login_as(balancer, customer, NEIGHBOUR) == 200
    # And the clients of the fleet's own gateway (all of them 127.0.0.1 here) were never the sprayer.
    assert login(api, customer.email, customer.password)


def test_wrong_passwords_from_an_attacker_never_lock_the_owner_out(
        gateway_behind_lb: ServiceProcess, api: httpx.Client, customer: User) -> None:
    with httpx.Client(base_url=gateway_behind_lb.url, timeout=30) as balancer:
        statuses = [login_as(balancer, customer, ATTACKER, "wrong guess") for _ in range(7)]
        assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429], statuses
        assert login_as(balancer, customer, ATTACKER) == 429  # the attacker's client stays throttled
        assert login_as(balancer, customer, OWNER_ADDRESS) == 200  # the owner's does not
    assert login(api, customer.email, customer.password)


@pytest.fixture(scope="module")
def strict_auth(fleet: Fleet) -> Iterator[ServiceProcess]:
    """A second auth_service with the product's bound on password hashing (the suite turns it off), outside the
    registry so the gateway keeps using the fleet's own; reached on its own port, as an attacker inside could."""
    with fleet.extra("auth_service", "auth_strict", wait=False, env={
        # A burst of three and a refill too slow to matter within the test, whatever the machine's pace.
        "EUREKA_SERVER_URL": "", "PASSWORD_HASH_RATE_PER_ADDRESS": "0.001", "PASSWORD_HASH_BURST_PER_ADDRESS": "3",
    }) as proc:
        proc.wait_healthy()
        yield proc


@pytest.fixture(scope="module")
def gateway_to_strict_auth(fleet: Fleet, strict_auth: ServiceProcess) -> Iterator[ServiceProcess]:
    """A gateway behind the test's "load balancer" whose auth_service is the strict one: auth believes the client
    addresses it names only from a gateway (its service token), never from whoever sends X-Forwarded-For."""
    with fleet.extra("gateway", "gateway_strict",
                     env={"TRUSTED_PROXIES": "127.0.0.1", "AUTH_URLS": strict_auth.url}) as proc:
        yield proc


def test_registrations_and_logins_are_bounded_per_client_address(gateway_to_strict_auth: ServiceProcess) -> None:
    with httpx.Client(base_url=gateway_to_strict_auth.url, timeout=30) as auth:
        statuses = []
        for _ in range(5):
            response = auth.post("/api/auth/register", headers={"X-Forwarded-For": ATTACKER}, json={
                "email": f"flood-{uuid.uuid4().hex[:10]}@example.com", "password": "a long password"})
            statuses.append(response.status_code)
        assert statuses == [201, 201, 201, 429, 429], statuses
        flooded = auth.post("/api/auth/login", headers={"X-Forwarded-For": ATTACKER},
                            json={"email": "nobody@example.com", "password": "a long password"})
        assert flooded.status_code == 429 and "Retry-After" in flooded.headers
        # Another address has its own bucket.
        other = auth.post("/api/auth/register", headers={"X-Forwarded-For": OWNER_ADDRESS}, json={
            "email": f"calm-{uuid.uuid4().hex[:10]}@example.com", "password": "a long password"})
        assert other.status_code == 201, other.text


def test_wrong_client_secrets_are_throttled_like_wrong_passwords(fleet: Fleet) -> None:
    auth = fleet.processes["auth_service"].url
    # A client id of its own, so the fleet's services (all on 127.0.0.1 too) keep getting their tokens.
    form = {"grant_type": "client_credentials", "client_id": f"intruder-{uuid.uuid4().hex[:6]}",
            "client_secret": "guess"}
    statuses = [httpx.post(f"{auth}/api/auth/token", data=form, timeout=30).status_code for _ in range(7)]
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429], statuses


@pytest.mark.parametrize(("package", "path"), [
    ("order_service", "/api/orders/{order}/confirm"),
    ("inventory_service", "/api/inventory/allocations/{order}/release"),
    ("payment_service", "/api/payments/orders/{order}/refund"),
    ("carrier_service", "/api/carriers/assignments/{order}/release"),
    ("shipment_service", "/api/shipments/orders/{order}/cancel"),
])
def test_the_gateways_service_token_opens_no_participants_steps(fleet: Fleet, package: str, path: str) -> None:
    """A gateway taken over holds its own client secret: the token it mints is refused by every saga step and
    compensation (403), which the orchestrator's token reaches (anything but 401/403)."""
    url = fleet.processes[package].url + path.format(order=uuid.uuid4())
    gateway = httpx.post(url, headers={"Authorization": f"Bearer {fleet.service_token('gateway')}",
                                       "Idempotency-Key": uuid.uuid4().hex}, timeout=30)
    assert gateway.status_code == 403, gateway.text
    assert gateway.headers["content-type"].startswith("application/problem+json")
    orchestrator = httpx.post(url, headers={"Authorization": f"Bearer {fleet.service_token()}",
                                            "Idempotency-Key": uuid.uuid4().hex}, timeout=30)
    assert orchestrator.status_code not in (401, 403), orchestrator.text
