"""Scripted participants for the saga runner: no HTTP, but idempotency keys honoured like the real services."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from saga_orchestrator.core import Answer, AnswerKind
from saga_orchestrator.step_client import CallResult, Request

CATALOGUE = {
    "KB-1": {"sku": "KB-1", "unit_price_minor": 8999, "currency": "EUR", "weight_grams": 920},
    "MS-1": {"sku": "MS-1", "unit_price_minor": 3499, "currency": "EUR", "weight_grams": 110},
    "USD-1": {"sku": "USD-1", "unit_price_minor": 100, "currency": "USD", "weight_grams": 10},
}


def ok(body: Any, status: int = 200) -> Answer:
    return Answer(AnswerKind.OK, status, body, None)


def refused(status: int = 409, detail: str = "refused") -> Answer:
    return Answer(AnswerKind.REFUSED, status, {"detail": detail}, f"{status} {detail}")


def transient(error: str = "503 unavailable") -> Answer:
    return Answer(AnswerKind.TRANSIENT, 503, None, error)


def call_result(answer: Answer, attempts: int = 1) -> CallResult:
    """What `StepClient.call` (the catalogue's retrying call) returns for a last answer like this one."""
    return CallResult(answer.kind == AnswerKind.OK, answer.kind == AnswerKind.REFUSED, answer.status, answer.body,
                      answer.error, attempts)


@dataclass
class Call:
    label: str
    method: str
    path: str
    body: dict[str, Any] | None
    key: str | None


Script = Callable[["FakeParticipants", Call], Answer | None]


@dataclass
class FakeParticipants:
    """Answers like the fleet would; `failures[label]` overrides answers (a list is consumed in order)."""

    failures: dict[str, list[Answer] | Answer] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    delay: float = 0.0
    applied: dict[str, Answer] = field(default_factory=dict)  # idempotency key → first answer
    # A step label whose attempts wait until `release` is set: a call in flight for as long as a test wants;
    # `holding` is set once one waits there.
    hold: str | None = None
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def ready(self) -> bool:
        return True

    def labels(self) -> list[str]:
        return [c.label for c in self.calls]

    async def call(self, request: Request, trace: dict[str, str], deadline_secs: float) -> CallResult:
        """The catalogue (the orchestrator's one request outside the saga's steps)."""
        assert request.label == "catalogue", request.label
        self.calls.append(Call(request.label, request.method, request.path, request.body, request.idempotency_key))
        override = self.failures.get(request.label)
        if isinstance(override, Answer):
            return call_result(override)
        wanted = (request.params or {}).get("skus", "").split(",")
        return CallResult(True, False, 200, {"items": [CATALOGUE[s] for s in wanted if s in CATALOGUE]}, None, 1)

    async def attempt(self, request: Request, trace: dict[str, str], timeout_secs: float,
                      not_found_is_done: bool = False) -> Answer:
        label, body, idempotency_key = request.label, request.body, request.idempotency_key
        call = Call(label, request.method, request.path, body, idempotency_key)
        self.calls.append(call)
        if label == self.hold:
            self.holding.set()
            await self.release.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        override = self.failures.get(label)
        if isinstance(override, list):
            if override:
                return override.pop(0)
        elif override is not None:
            return override
        if idempotency_key is not None and idempotency_key in self.applied:
            return self.applied[idempotency_key]  # a replay, like the services' idempotency layer
        result = ok(self._answer(label, body))
        if idempotency_key is not None:
            self.applied[idempotency_key] = result
        return result

    def _answer(self, label: str, body: dict[str, Any] | None) -> dict[str, Any]:
        n = next(self._ids)
        body = body or {}
        step = label.split(":")[0]
        if label.endswith(":compensate"):
            return {"status": "DONE"}
        if step == "add_order_lines":
            return {"total_minor": sum(ln["quantity"] * ln["unit_price_minor"] for ln in body["lines"])}
        answers: dict[str, dict[str, Any]] = {
            "create_order": {"id": f"order-{n}", "status": "PENDING"},
            "allocate_inventory": {"status": "ALLOCATED", "total_weight_grams": 1030},
            "make_payment": {"id": f"pay-{n}", "status": "CAPTURED", "amount_minor": body.get("amount_minor")},
            "assign_carrier": {"id": f"asg-{n}", "carrier_code": "DHL", "price_minor": 599},
            "create_shipment": {"id": f"shp-{n}", "tracking_number": f"TRK{n:08d}"},
            "confirm_order": {"status": "CONFIRMED"},
        }
        return answers[step]
