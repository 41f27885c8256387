"""The peer the bench compares the project with: the same saga driven by DBOS Transact workflows.

    DBOS_SYSTEM_DATABASE_URL=postgresql://... PEER_SERVICES='{"ORDER-SERVICE": "http://...", ...}' \
    PEER_AUTH_URL=http://... PEER_CLIENT_SECRET=... PORT=... python -m bench.dbos_peer

One process: a FastAPI app under uvicorn (as the services run) whose `POST /sagas` runs one saga as a DBOS
workflow and answers with its outcome, and whose `GET /sagas` lists the sagas the peer ran (for the invariant
checker). The saga is the project's own step table (`saga_orchestrator.steps.CURRENT`): the same seven calls
with the same bodies, the same idempotency keys (`<saga_id>:<step>` and `<saga_id>:<step>:compensate`), the
same service token (the orchestrator's client credentials) and the same compensation — the steps done (and
one whose outcome is unknown) undone latest first, a step whose outcome is unknown replayed under its own key
first where its definition says so, the finish settled before anything is undone. Each service call is a
durable DBOS step (its answer recorded in DBOS's system database on PostgreSQL before the workflow goes on),
retried by DBOS on a transient answer; the workflow's state is DBOS's, in its own database.

No gateway, `/validate` or catalogue lookup in front of it: the client sends the priced lines itself, as the
bench's bare client does (`bench.sagas.saga_context`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import httpx
import uvicorn
from dbos import DBOS, DBOSConfig, SetWorkflowID
from dbos import error as dbos_error
from fastapi import FastAPI
from pydantic import BaseModel

from customer_cli.fleet import ServiceProcess
from saga_orchestrator.steps import CURRENT, ServiceCall, StepDefinition, StepKind
from shared.errors import RequestInProgress

WORKFLOW = "place_customer_order"
TRANSIENT_STATUSES = frozenset({401, 408, 425, 429})


class Transient(Exception):
    """An answer that a retry may change (connection error, timeout, 5xx, 408/429, a key still in flight)."""


class Participants:
    """The services' base URLs by app name, one keep-alive aiohttp session, the orchestrator's service token."""

    def __init__(self, urls: dict[str, str], auth_url: str, client_id: str, client_secret: str) -> None:
        self.urls = urls
        self.auth_url = auth_url
        self.client_id = client_id
        self.client_secret = client_secret
        self.session: aiohttp.ClientSession | None = None
        self._token = ""
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200, keepalive_timeout=30),
                                             timeout=aiohttp.ClientTimeout(total=10))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def token(self) -> str:
        if self._token and time.time() < self._expires_at - 30:
            return self._token
        async with self._lock:
            if not self._token or time.time() >= self._expires_at - 30:
                assert self.session is not None
                form = {"grant_type": "client_credentials", "client_id": self.client_id,
                        "client_secret": self.client_secret}
                async with self.session.post(f"{self.auth_url}/api/auth/token", data=form) as response:
                    if response.status != 200:
                        raise Transient(f"service token refused ({response.status})")
                    body = await response.json()
                self._token = str(body["access_token"])
                self._expires_at = time.time() + int(body.get("expires_in", 300))
        return self._token

    async def request(self, app: str, method: str, path: str, body: dict[str, Any] | None,
                      key: str) -> tuple[int, Any]:
        assert self.session is not None
        headers = {"Authorization": f"Bearer {await self.token()}", "Accept": "application/json",
                   "Idempotency-Key": key}
        try:
            async with self.session.request(method, self.urls[app] + path, json=body, headers=headers) as response:
                raw = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Transient(f"{type(exc).__name__} calling {app} {method} {path}") from exc
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, {"detail": raw[:200].decode(errors="replace")}


participants: Participants | None = None


def _transient(status: int, body: Any) -> bool:
    in_progress = isinstance(body, dict) and body.get("type") == RequestInProgress.type_url()
    return status >= 500 or status in TRANSIENT_STATUSES or in_progress


def _describe(status: int, body: Any) -> str:
    if isinstance(body, dict) and (body.get("title") or body.get("detail")):
        return f"{status} " + ": ".join(str(body[k]) for k in ("title", "detail") if body.get(k))
    return str(status)


@DBOS.step(name="service_call", retries_allowed=True, interval_seconds=0.05, backoff_rate=2.0, max_attempts=7)
async def service_call(app: str, method: str, path: str, body: dict[str, Any] | None, key: str,
                       not_found_is_done: bool = False) -> dict[str, Any]:
    """One participant call, a durable step: its answer is recorded before the workflow goes on; a transient
    answer raises, and DBOS retries (7 attempts, 0.05 s doubling: ~3 s, the orchestrator's step deadline)."""
    assert participants is not None
    status, payload = await participants.request(app, method, path, body, key)
    if 200 <= status < 300 or (status == 404 and not_found_is_done):
        return {"ok": True, "refused": False, "body": payload, "error": None}
    if _transient(status, payload):
        raise Transient(_describe(status, payload))
    return {"ok": False, "refused": True, "body": payload, "error": _describe(status, payload)}


async def _call(call: ServiceCall, context: dict[str, Any], key: str, not_found_is_done: bool = False
                ) -> dict[str, Any]:
    try:
        path, body = call.render_path(context), call.render_body(context)
    except (KeyError, TypeError, ValueError) as exc:  # the saga's data cannot make this request: final
        return {"ok": False, "refused": True, "body": None, "error": f"cannot build the request: {exc!r}"}
    try:
        return await service_call(call.app, call.method, path, body, key, not_found_is_done)
    except dbos_error.DBOSMaxStepRetriesExceeded as exc:  # the outcome is unknown: the service may have applied it
        last = exc.errors[-1] if exc.errors else exc
        return {"ok": False, "refused": False, "body": None, "error": f"gave up after retries: {last}"}


async def _compensate(context: dict[str, Any], done: list[tuple[StepDefinition, bool]]) -> bool:
    """Undo the steps that did (or may have) take effect, latest first; False when a compensation failed."""
    saga_id = context["saga_id"]
    for step, outcome_known in reversed(done):
        if step.compensation is None:
            continue
        try:
            step.compensation.render_path(context)
            addressable = True
        except KeyError:
            addressable = False
        if not addressable or (step.kind == StepKind.REPLAY_BEFORE_COMPENSATE and not outcome_known):
            replay = await _call(step.action, context, f"{saga_id}:{step.step}")
            if replay["refused"]:  # it did not happen: nothing to undo
                continue
            if replay["ok"]:
                context.update(step.extract_results(replay["body"]))
            elif not addressable:
                return False
        result = await _call(step.compensation, context, f"{saga_id}:{step.step}:compensate", not_found_is_done=True)
        if not result["ok"]:
            return False
    return True


@DBOS.workflow(name=WORKFLOW)
async def place_customer_order(context: dict[str, Any]) -> dict[str, Any]:
    """The saga: the seven calls in order; on a failure, the compensation of what was done, in reverse."""
    saga_id = context["saga_id"]
    done: list[tuple[StepDefinition, bool]] = []  # (step, whether its outcome is known)
    for step in CURRENT.steps:
        key = f"{saga_id}:{step.step}"
        result = await _call(step.action, context, key)
        if not result["ok"] and not result["refused"] and step.compensation is None:
            # The finish has no compensation: settle its outcome (a replay under its key) before undoing anything.
            result = await _call(step.action, context, key)
        if result["ok"]:
            context.update(step.extract_results(result["body"]))
            done.append((step, True))
            continue
        if not result["refused"]:
            done.append((step, False))
        context["failure_reason"] = f"{step.step} failed: {result['error']}"
        compensated = await _compensate(context, done)
        return {"saga_id": saga_id, "status": "COMPENSATED" if compensated else "COMPENSATION_FAILED",
                "order_id": context.get("order_id"), "failure_reason": context["failure_reason"]}
    return {"saga_id": saga_id, "status": "COMPLETED", "order_id": context.get("order_id"), "failure_reason": None}


class PlaceSaga(BaseModel):
    saga_id: UUID
    context: dict[str, Any]  # what `Saga.context()` holds at the start (see bench.sagas.saga_context)


def _ms_iso(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat() if ms is not None else None


def create_app() -> FastAPI:
    global participants
    participants = Participants(json.loads(os.environ["PEER_SERVICES"]), os.environ["PEER_AUTH_URL"],
                                os.environ.get("PEER_CLIENT_ID", "saga-orchestrator"),
                                os.environ["PEER_CLIENT_SECRET"])
    config: DBOSConfig = {"name": "bench-dbos-peer", "system_database_url": os.environ["DBOS_SYSTEM_DATABASE_URL"],
                          "sys_db_pool_size": int(os.environ.get("DBOS_SYS_DB_POOL_SIZE", "20")),
                          "log_level": os.environ.get("LOG_LEVEL", "WARNING")}
    DBOS(config=config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        assert participants is not None
        await participants.open()
        DBOS.launch()  # recovers the workflows this executor left unfinished
        try:
            yield
        finally:
            DBOS.destroy(workflow_completion_timeout_sec=0)
            await participants.close()

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "UP"}

    @app.post("/sagas")
    async def place(request: PlaceSaga) -> dict[str, Any]:
        """Run the saga to its end (a saga id run before answers with that run's recorded outcome)."""
        context = {**request.context, "saga_id": str(request.saga_id)}
        with SetWorkflowID(str(request.saga_id)):
            result: dict[str, Any] = await place_customer_order(context)
        return result

    @app.get("/sagas")
    async def sagas(limit: int = 100_000) -> list[dict[str, Any]]:
        """Every saga the peer ran, newest first, in the fields of the orchestrator's saga list that the
        invariant checker reads (a workflow still running or failed shows DBOS's own status)."""
        rows = await DBOS.list_workflows_async(name=WORKFLOW, sort_desc=True, limit=limit, load_input=False)
        listed = []
        for row in rows:
            output = row.output if isinstance(row.output, dict) else {}
            listed.append({"saga_id": row.workflow_id, "status": output.get("status", str(row.status)),
                           "order_id": output.get("order_id"), "failure_reason": output.get("failure_reason"),
                           "created_at": _ms_iso(row.created_at), "updated_at": _ms_iso(row.updated_at)})
        return listed

    return app


class PeerProcess:
    """The peer as a process of its own (its CPU is measured like a service's), against the given services;
    started, waited for and stopped by the fleet's supervisor (customer_cli.fleet.ServiceProcess)."""

    def __init__(self, database_url: str, services: dict[str, str], auth_url: str, client_secret: str,
                 log_path: Path, port: int) -> None:
        env = {**os.environ, "PORT": str(port), "DBOS_SYSTEM_DATABASE_URL": database_url,
               "PEER_SERVICES": json.dumps(services), "PEER_AUTH_URL": auth_url,
               "PEER_CLIENT_SECRET": client_secret, "PYTHONUNBUFFERED": "1"}
        self.process = ServiceProcess("dbos_peer", "bench.dbos_peer", port, env, log_path)
        self.url = self.process.url

    def start(self, timeout: float = 60) -> None:
        self.process.start()
        try:
            self.process.wait_healthy(timeout)
        except (RuntimeError, TimeoutError):
            self.process.stop()
            raise

    @property
    def pid(self) -> int:
        assert self.process.popen is not None
        return self.process.popen.pid

    def sagas(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/sagas", timeout=60)
        response.raise_for_status()
        listed: list[dict[str, Any]] = response.json()
        return listed

    def stop(self) -> None:
        self.process.stop()


def main() -> None:
    uvicorn.run("bench.dbos_peer:create_app", factory=True, host="127.0.0.1", port=int(os.environ["PORT"]),
                log_config=None, access_log=False, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
