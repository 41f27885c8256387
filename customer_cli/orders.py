"""Placing a customer order from the command line and following its saga, event by event, to the end."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from customer_cli.gateway_client import GatewayClient, GatewayError

TERMINAL = frozenset({"COMPLETED", "COMPENSATED", "COMPENSATION_FAILED"})
# A CLI customer's default address; the country is what carriers are chosen by.
DEFAULT_ADDRESS = {"name": "CLI Customer", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115"}


@dataclass(frozen=True)
class OrderLine:
    sku: str
    quantity: int


def order_body(lines: list[OrderLine], country: str, card: str) -> dict[str, Any]:
    return {
        "lines": [{"sku": line.sku, "quantity": line.quantity} for line in lines],
        "shipping_address": {**DEFAULT_ADDRESS, "country": country.upper()},
        "payment_token": card,
    }


def describe(lines: list[OrderLine]) -> str:
    return ", ".join(f"{line.quantity} x {line.sku}" for line in lines)


def choose_lines(skus: list[str], quantities: list[int], catalogue: Callable[[], list[dict[str, Any]]],
                 orders: int = 1) -> list[OrderLine]:
    """The lines asked for; without --sku, the catalogue's product with the most stock for `orders` orders.

    One --qty applies to every --sku; otherwise there is one --qty per --sku.
    """
    if quantities and any(q <= 0 for q in quantities):
        raise GatewayError("Every --qty must be at least 1.")
    if skus:
        if len(quantities) > 1 and len(quantities) != len(skus):
            raise GatewayError("Give one --qty for all --sku, or one --qty per --sku.")
        per_sku = quantities if len(quantities) == len(skus) else [quantities[0] if quantities else 1] * len(skus)
        return [OrderLine(sku, qty) for sku, qty in zip(skus, per_sku, strict=True)]
    quantity = quantities[0] if quantities else 1
    products = sorted(catalogue(), key=lambda p: int(p.get("available", 0)), reverse=True)
    if not products or int(products[0].get("available", 0)) < quantity * orders:
        raise GatewayError(f"No product in the catalogue has {quantity * orders} units available; "
                           "seed it (`customer-service seed`) or name one with --sku.")
    return [OrderLine(str(products[0]["sku"]), quantity)]


def new_customer(client: GatewayClient) -> str:
    """Register a throw-away customer and log in as it; answers its email."""
    email = f"cli-{uuid.uuid4().hex[:12]}@example.com"
    client.register(email, password := f"cli-{uuid.uuid4().hex}")
    client.login(email, password)
    return email


def follow(client: GatewayClient, saga_id: str, timeout: float, interval: float = 0.25,
           ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Yield (event, saga) for each new event of the saga's history until it ends; TimeoutError past `timeout`."""
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        saga = client.saga(saga_id)
        for event in saga["history"]:
            if event["version"] > seen:
                seen = event["version"]
                yield event, saga
        if saga["status"] in TERMINAL:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"saga {saga_id} is still {saga['status']} after {timeout:.0f}s")
        time.sleep(interval)


def _at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))


class EventNarrator:
    """Says what each saga event means, one line each: steps as they end, compensations, the outcome.

    A step's start is not said (its end follows at once, or is what the reader waits for); its
    duration is measured from it.
    """

    def __init__(self) -> None:
        self.started: dict[str, datetime] = {}
        self.compensation_clock: datetime | None = None

    def line(self, event: dict[str, Any]) -> tuple[str, str] | None:
        """(style, text) for the event, or None for an event that says nothing on its own."""
        kind, data, at = event["type"], event.get("data") or {}, _at(event)
        step = str(data.get("step", ""))
        if kind == "StepStarted":
            self.started[step] = at
            return None
        if kind == "StepSucceeded":
            took = self._took(self.started.get(step), at)
            note = f"; after {data['last_error']}" if data.get("last_error") else ""
            return "green", f"✓ {step:<20} {took}{_attempts(data)}{note}"
        if kind == "StepFailed":
            unknown = "" if data.get("final") else " (outcome unknown: it is undone too)"
            return "red", f"✗ {step:<20} {self._took(self.started.get(step), at)}{_attempts(data)}: " \
                          f"{data.get('error')}{unknown}"
        if kind in ("CompensationStarted", "CompensationRetried"):
            self.compensation_clock = at
            if kind == "CompensationRetried":
                return "yellow", f"↻ compensation retried by {data.get('requested_by')}"
            plan = ", ".join(data.get("plan") or []) or "nothing to undo"
            return "yellow", f"↩ compensating ({plan})"
        if kind in ("CompensationSucceeded", "CompensationFailed"):
            took = self._took(self.compensation_clock, at)
            self.compensation_clock = at
            if kind == "CompensationSucceeded":
                return "yellow", f"↩ undid {step:<16} {took}{_attempts(data)}"
            return "red", f"↩ ✗ could not undo {step}: {data.get('error')}{_attempts(data)}"
        outcomes = {"SagaCompleted": ("bold green", "COMPLETED"), "SagaCompensated": ("bold yellow", "COMPENSATED"),
                    "SagaCompensationFailed": ("bold red", "COMPENSATION_FAILED (an operator must retry it)")}
        if kind in outcomes:
            style, text = outcomes[kind]
            return style, f"= {text}"
        return None

    @staticmethod
    def _took(start: datetime | None, end: datetime) -> str:
        if start is None:
            return ""
        return f"{(end - start).total_seconds() * 1000:>6.0f} ms"


def _attempts(data: dict[str, Any]) -> str:
    attempts = int(data.get("attempts") or 0)
    return f" ({attempts} attempts)" if attempts > 1 else ""


@dataclass
class TimelineRow:
    """One step, or the compensation of one, as the saga's events recorded it."""

    kind: str  # "step" or "compensation"
    step: str
    status: str  # RUNNING, SUCCEEDED, FAILED; PENDING for a compensation not yet run
    started: datetime | None = None
    ended: datetime | None = None
    attempts: int = 0
    error: str | None = None
    retried: bool = False


def timeline(history: list[dict[str, Any]]) -> list[TimelineRow]:
    """Steps in the order they ran, then compensations in the order they ran (or will), from the events alone.

    Compensations run one after another: each starts when the compensation began, when the previous one
    ended, or when an operator retried.
    """
    steps: dict[str, TimelineRow] = {}
    undo: dict[str, TimelineRow] = {}
    clock: datetime | None = None
    ended = False
    for event in history:
        kind, data, at = event["type"], event.get("data") or {}, _at(event)
        step = str(data.get("step", ""))
        if kind == "StepStarted":
            steps[step] = TimelineRow("step", step, "RUNNING", started=at)
        elif kind in ("StepSucceeded", "StepFailed") and step in steps:
            row = steps[step]
            row.status, row.ended = ("SUCCEEDED" if kind == "StepSucceeded" else "FAILED"), at
            row.attempts += int(data.get("attempts") or 0)
            row.error = data.get("last_error") if kind == "StepSucceeded" else data.get("error")
        elif kind == "CompensationStarted":
            clock = at
            undo.update({name: TimelineRow("compensation", name, "PENDING") for name in data.get("plan") or []})
        elif kind in ("CompensationSucceeded", "CompensationFailed") and step in undo:
            row = undo[step]
            row.status = "SUCCEEDED" if kind == "CompensationSucceeded" else "FAILED"
            row.started, row.ended, clock = row.started or clock, at, at
            row.attempts += int(data.get("attempts") or 0)
            if kind == "CompensationFailed":
                row.error = data.get("error")
        elif kind == "CompensationRetried":
            clock = at
            for row in undo.values():
                if row.status == "FAILED":
                    row.status, row.started, row.ended, row.retried = "PENDING", None, None, True
        elif kind in ("SagaCompleted", "SagaCompensated", "SagaCompensationFailed"):
            ended = True
    running = next((row for row in undo.values() if row.status == "PENDING"), None)
    if running is not None and not ended:
        running.status, running.started = "RUNNING", clock
    return [*steps.values(), *undo.values()]
