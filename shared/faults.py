"""Fault injection for tests and drills: make matching requests fail or slow down. Never in production."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from shared.errors import problem


class FaultSpec(BaseModel):
    method: str = Field(default="*", pattern=r"^(\*|[A-Z]+)$")
    path_regex: str = Field(min_length=1, max_length=500)
    status: int = Field(default=503, ge=0, le=599, description="0 = only delay, then answer normally")
    count: int = Field(default=1, ge=-1, description="-1 = every matching request")
    delay_ms: int = Field(default=0, ge=0, le=120_000)


@dataclass
class _Fault:
    spec: FaultSpec
    pattern: re.Pattern[str]
    remaining: int


class FaultInjector:
    def __init__(self) -> None:
        self.faults: list[_Fault] = []

    def take(self, method: str, path: str) -> FaultSpec | None:
        for fault in self.faults:
            if fault.remaining == 0 or fault.spec.method not in ("*", method) or not fault.pattern.search(path):
                continue
            if fault.remaining > 0:
                fault.remaining -= 1
            return fault.spec
        return None

    def middleware(self) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
        async def inject(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            spec = None if request.url.path.startswith("/_faults") else self.take(request.method, request.url.path)
            if spec is not None:
                if spec.delay_ms:
                    await asyncio.sleep(spec.delay_ms / 1000)
                if spec.status:
                    return problem(spec.status, "Injected fault", f"Fault injected for {request.url.path}.",
                                   "injected-fault")
            return await call_next(request)

        return inject

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/_faults", include_in_schema=False)

        @router.post("", status_code=201)
        async def add_fault(spec: FaultSpec) -> dict[str, int]:
            self.faults.append(_Fault(spec, re.compile(spec.path_regex), spec.count))
            return {"faults": len(self.faults)}

        @router.delete("", status_code=204)
        async def clear_faults() -> None:
            self.faults.clear()

        return router
