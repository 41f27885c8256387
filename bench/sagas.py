"""The ways to place an order that the bench compares.

`GatewaySagas`: placeCustomerOrder through the gateway, `Prefer: wait=30`, success = COMPLETED.
`DbosSagas`: the peer — the same seven calls as durable steps of a DBOS Transact workflow (bench/dbos_peer.py).
`BareSagas`: the lower bound — this process makes the same seven calls directly to the services
(create order, add lines, allocate, charge, assign carrier, create shipment, confirm), rendered
from the saga's own step table with the same idempotency keys, with no gateway, orchestrator or
event store in between.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from typing import Any

import aiohttp

from bench.stack import Stack, address
from saga_orchestrator.steps import CURRENT

PAYMENT_TOKEN = "tok_visa"
# saga step app → package whose URL the bare client calls
_PACKAGES = {"ORDER-SERVICE": "order_service", "INVENTORY-SERVICE": "inventory_service",
             "PAYMENT-SERVICE": "payment_service", "CARRIER-SERVICE": "carrier_service",
             "SHIPMENT-SERVICE": "shipment_service"}


def new_session(connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=30),
                                 timeout=aiohttp.ClientTimeout(total=60))


class _Placements:
    """What each way of placing counts: its attempts, and their outcomes (COMPLETED, a status, a failed step)."""

    def __init__(self, stack: Stack, session: aiohttp.ClientSession) -> None:
        self.stack = stack
        self.session = session
        self.attempts = 0
        self.outcomes: Counter[str] = Counter()


class GatewaySagas(_Placements):
    def __init__(self, stack: Stack, session: aiohttp.ClientSession) -> None:
        super().__init__(stack, session)
        self.url = f"{stack.gateway_url}/api/customer-orders"

    async def one(self, client: int) -> bool:
        customer = self.stack.customers[client % len(self.stack.customers)]
        sku = random.choice(self.stack.skus)["sku"]
        body = {"lines": [{"sku": sku, "quantity": 1}], "shipping_address": address(random.randrange(1000)),
                "payment_token": PAYMENT_TOKEN}
        headers = {**customer.headers, "Idempotency-Key": str(uuid.uuid4()), "Prefer": "wait=30"}
        self.attempts += 1
        async with self.session.post(self.url, json=body, headers=headers) as response:
            answer = await response.read()
            status = response.status
        outcome = json.loads(answer).get("status", str(status)) if status in (200, 202) else str(status)
        self.outcomes[outcome] += 1
        return status == 200 and outcome == "COMPLETED"


def saga_context(stack: Stack, client: int, payment_token: str = PAYMENT_TOKEN,
                 shipping: dict[str, str] | None = None) -> dict[str, Any]:
    """What `Saga.context()` holds at the start: the request, priced lines, totals."""
    customer = stack.customers[client % len(stack.customers)]
    product = random.choice(stack.skus)
    shipping = shipping or address(random.randrange(1000))
    return {
        "saga_id": str(uuid.uuid4()), "customer_id": customer.user_id, "currency": "EUR",
        "lines": [{"sku": product["sku"], "quantity": 1, "unit_price_minor": product["unit_price_minor"],
                   "weight_grams": product["weight_grams"]}],
        "total_minor": product["unit_price_minor"], "total_weight_grams": product["weight_grams"],
        "shipping_address": shipping, "country": shipping["country"], "payment_token": payment_token,
        "failure_reason": "saga compensated",
    }


class BareSagas(_Placements):
    def __init__(self, stack: Stack, session: aiohttp.ClientSession, token: str) -> None:
        super().__init__(stack, session)
        self.token = token

    async def one(self, client: int) -> bool:
        context = saga_context(self.stack, client)
        self.attempts += 1
        for step in CURRENT.steps:
            call = step.action
            url = self.stack.services[_PACKAGES[call.app]] + call.render_path(context)
            headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json",
                       "Idempotency-Key": f"{context['saga_id']}:{step.step}"}
            async with self.session.request(call.method, url, json=call.render_body(context),
                                            headers=headers) as response:
                answer = await response.read()
                status = response.status
            if not 200 <= status < 300:
                outcome = f"{step.step} {status}"
                self.outcomes[outcome] += 1
                return False
            context.update(step.extract_results(json.loads(answer)))
        self.outcomes["COMPLETED"] += 1
        return True


class DbosSagas(_Placements):
    """The peer: one `POST /sagas` to the DBOS peer (bench/dbos_peer.py), which makes the seven calls as durable
    steps of a DBOS workflow; success = COMPLETED."""

    def __init__(self, stack: Stack, session: aiohttp.ClientSession, peer_url: str) -> None:
        super().__init__(stack, session)
        self.url = f"{peer_url}/sagas"

    async def one(self, client: int) -> bool:
        context = saga_context(self.stack, client)
        self.attempts += 1
        async with self.session.post(self.url, json={"saga_id": context["saga_id"], "context": context}) as response:
            answer = await response.read()
            status = response.status
        outcome = json.loads(answer).get("status", str(status)) if status == 200 else str(status)
        self.outcomes[outcome] += 1
        return outcome == "COMPLETED"


class OrderReads:
    """The same authenticated GET (a customer's own order) against one base URL: a service, gateway or nginx."""

    def __init__(self, stack: Stack, session: aiohttp.ClientSession, base_url: str) -> None:
        self.stack = stack
        self.session = session
        self.base_url = base_url

    async def one(self, client: int) -> bool:
        customer = self.stack.customers[client % len(self.stack.customers)]
        async with self.session.get(f"{self.base_url}/api/orders/{customer.order_id}",
                                    headers=customer.headers) as response:
            await response.read()
            return response.status == 200
