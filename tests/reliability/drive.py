"""Load for the reliability suite: many customers placing orders through the gateway at once, as a shop's clients would.

A client that gets no answer, or a 502/503/504 (the orchestrator being restarted, say), retries with the
same Idempotency-Key, which is what the key is for: the saga must be placed once, whatever happened.
Any 500 is recorded: no failure the suite provokes excuses one.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from customer_cli.invariants import InvariantReport, check_invariants, list_sagas, wait_until_settled
from shared.errors import RequestInProgress

ADDRESS = {"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}
NOWHERE = {**ADDRESS, "country": "ZZ"}  # no carrier serves it: refused after the payment, which is refunded
RETRYABLE = frozenset({408, 425, 429, 502, 503, 504})


@dataclass
class Placement:
    key: str
    body: dict[str, Any]
    status: int | None = None  # the final answer to POST /api/customer-orders
    saga_id: str | None = None
    attempts: int = 0
    transient: list[str] = field(default_factory=list)  # the answers that made the client retry
    server_errors: list[str] = field(default_factory=list)  # 500s, never acceptable


@dataclass
class LoadRun:
    """The orders of one run; `placed` grows while the run goes on, so a chaos thread can act mid-run."""

    placements: list[Placement]
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: float | None = None
    _placed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def placed(self) -> int:
        return self._placed

    def count_placed(self) -> None:
        with self._lock:
            self._placed += 1

    def wait_placed(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self._placed < n and self.finished_at is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self._placed} of {n} orders were placed within {timeout}s")
            time.sleep(0.02)

    @property
    def saga_ids(self) -> list[str]:
        return [p.saga_id for p in self.placements if p.saga_id]

    def statuses(self) -> Counter[int | None]:
        return Counter(p.status for p in self.placements)

    def server_errors(self) -> list[str]:
        return [f"{p.key}: {e}" for p in self.placements for e in p.server_errors]

    def summary(self) -> str:
        retried = sum(1 for p in self.placements if p.transient)
        return (f"{len(self.placements)} orders: answers {dict(self.statuses())}, {retried} retried by the client"
                f" (same key), {len(set(self.saga_ids))} distinct sagas, {len(self.server_errors())} server errors")


def order_bodies(n: int, sku: str, *, rng: random.Random, declined_share: float = 0.0, flaky_share: float = 0.0,
                 unshippable_share: float = 0.0, max_quantity: int = 1) -> list[dict[str, Any]]:
    """`n` order bodies for `sku`, with the given shares of declined and flaky cards and of unshippable addresses."""
    bodies = []
    for _ in range(n):
        roll = rng.random()
        token = ("tok_chargeDeclined" if roll < declined_share else
                 "tok_flaky" if roll < declined_share + flaky_share else "tok_visa")
        address = NOWHERE if rng.random() < unshippable_share else ADDRESS
        bodies.append({"lines": [{"sku": sku, "quantity": rng.randint(1, max_quantity)}],
                       "shipping_address": address, "payment_token": token})
    return bodies


def _place_one(client: httpx.Client, token: str, placement: Placement, retry_secs: float) -> None:
    deadline = time.monotonic() + retry_secs
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": placement.key}
    while True:
        placement.attempts += 1
        try:
            response = client.post("/api/customer-orders", json=placement.body, headers=headers)
        except httpx.TransportError as exc:
            placement.transient.append(type(exc).__name__)
        else:
            if response.status_code in (200, 202):
                placement.status, placement.saga_id = response.status_code, response.json()["saga_id"]
                return
            still_running = response.status_code == 409 and response.json().get("type") == RequestInProgress.type_url()
            if response.status_code >= 500 and response.status_code not in RETRYABLE:
                placement.server_errors.append(f"{response.status_code} {response.text[:300]}")
            elif response.status_code not in RETRYABLE and not still_running:
                placement.status = response.status_code
                return
            else:
                placement.transient.append(str(response.status_code))
            placement.status = response.status_code
        if time.monotonic() > deadline:
            return
        time.sleep(min(0.05 * 2 ** min(placement.attempts, 5), 1.0))


@contextmanager
def running_load(gateway_url: str, tokens: list[str], bodies: list[dict[str, Any]], concurrency: int,
                 retry_secs: float = 60) -> Iterator[LoadRun]:
    """Place the orders from `concurrency` client threads in the background; the block runs meanwhile.

    Leaving the block waits for every order to get its final answer.
    """
    run = LoadRun([Placement(str(uuid.uuid4()), body) for body in bodies])
    local = threading.local()
    clients: list[httpx.Client] = []

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=gateway_url, timeout=30)
            clients.append(local.client)
        return local.client  # type: ignore[no-any-return]

    def work(i: int) -> None:
        _place_one(client(), tokens[i % len(tokens)], run.placements[i], retry_secs)
        run.count_placed()

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="load")
    futures: list[Future[None]] = [pool.submit(work, i) for i in range(len(bodies))]
    try:
        yield run
        for future in futures:
            future.result()
    finally:
        run.finished_at = time.monotonic()
        pool.shutdown(wait=True, cancel_futures=True)
        for c in clients:
            c.close()


def run_load(gateway_url: str, tokens: list[str], bodies: list[dict[str, Any]], concurrency: int) -> LoadRun:
    with running_load(gateway_url, tokens, bodies, concurrency) as run:
        pass
    return run


def settle_and_check(gateway_url: str, admin_token: str, run: LoadRun, *, initial_stock: dict[str, int],
                     timeout: float = 120) -> InvariantReport:
    """Wait (bounded) for every saga of the run to finish, give failed compensations an operator's retry, check."""
    left = wait_until_settled(gateway_url, admin_token, since=run.started_at, timeout=timeout)
    assert not left, f"{len(left)} sagas did not finish within {timeout}s: {left[:5]}"
    headers = {"Authorization": f"Bearer {admin_token}"}
    failed = list_sagas(gateway_url, admin_token, since=run.started_at, status="COMPENSATION_FAILED")
    if failed:
        # Visible and retryable, as promised: do what the operator would, then everything must be clean.
        with httpx.Client(base_url=gateway_url, timeout=30, headers=headers) as client:
            for saga in failed:
                response = client.post(f"/api/customer-orders/{saga['saga_id']}/retry")
                assert response.status_code == 202, response.text
        left = wait_until_settled(gateway_url, admin_token, since=run.started_at, timeout=timeout)
        assert not left, f"{len(left)} retried sagas did not finish within {timeout}s: {left[:5]}"
    report = check_invariants(gateway_url, admin_token, since=run.started_at, initial_stock=initial_stock,
                              allow_compensation_failed=False)
    report.notes.insert(0, f"load: {run.summary()}; operator retries of failed compensations: {len(failed)}")
    return report
