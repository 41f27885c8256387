"""Two orchestrator replicas, one of them SIGKILLed every 1-3 s (and restarted at once) while orders flow.

What must hold, read from the sagas' own histories: every saga ends (the healthy replica takes over what the
crash-looping one held: a restarted replica is a new lease owner, not the old one taking its sagas back); a
payment that keeps failing gives up within its deadline, counted from its first attempt however often the
saga was resumed; every charge attempt the payment service received is in the saga's history; and no client
gets a 503 while a replica is ready (the gateway tries a restarted instance at once, and fails over).
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from saga_orchestrator.core import LOST_ANSWER
from tests.fleet import DB_SUFFIX, PG_ADMIN_DSN, Fleet, ServiceProcess
from tests.reliability.conftest import SAGA_ENV, SCALE, Admin, Shoppers, say
from tests.reliability.drive import ADDRESS, LoadRun, running_load, settle_and_check

pytestmark = pytest.mark.integration

FAILING = "tok_processingError"  # the processor fails every charge: the payment step can only give up
DEADLINE = timedelta(seconds=float(SAGA_ENV["STEP_DEADLINE_SECS"]))
RETRY_INTERVAL = timedelta(seconds=float(SAGA_ENV["RETRY_MAX_SECS"]))
# A decision made when a driver takes a saga up (its deadline passed meanwhile) is recorded with its first save.
RESUME_SLACK = timedelta(seconds=1)
# How late the orchestrator's event loop may be on this machine (2 cores shared by the fleet and PostgreSQL, and
# the load's clients): an attempt's timeout fires, and its answer is recorded, that much after the deadline.
LOOP_LATENESS = timedelta(seconds=2)
MIN_KILLS, MAX_WAVES = 3, 8


def _bodies(n: int, sku: str, rng: random.Random) -> list[dict[str, Any]]:
    tokens = ["tok_visa"] * 6 + ["tok_flaky"] * 2 + ["tok_chargeDeclined", FAILING]
    return [{"lines": [{"sku": sku, "quantity": 1}], "shipping_address": ADDRESS,
             "payment_token": rng.choice(tokens)} for _ in range(n)]


class CrashLoop:
    """Kills a process every 1-3 s (seeded) and starts it again at once, until stopped."""

    def __init__(self, proc: ServiceProcess, rng: random.Random) -> None:
        self.proc, self.rng = proc, rng
        self.kills = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crash-loop", daemon=True)

    def __enter__(self) -> CrashLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.rng.uniform(1, 3)):
            self.proc.kill()
            self.kills += 1
            self.proc.start()


def _history(client: httpx.Client, saga_id: str) -> dict[str, Any]:
    response = client.get(f"/api/customer-orders/{saga_id}")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


def _at(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["timestamp"])


def _charge_attempts(fleet: Fleet, order_ids: list[str]) -> Counter[str]:
    dsn = f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{fleet.db_prefix}_payment_service{DB_SUFFIX}"
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT order_id, count(*) FROM charge_attempts WHERE order_id = ANY(%s)"
                            " GROUP BY order_id", (order_ids,)).fetchall()
    return Counter({order_id: count for order_id, count in rows})


def test_a_crash_looping_replica_beside_a_healthy_one(chaos_orchestrator: ServiceProcess, fleet: Fleet,
                                                      gateway_url: str, rel_admin: Admin, shoppers: Shoppers,
                                                      new_product: Callable[[int], str],
                                                      rng: random.Random) -> None:
    orders = 40 * SCALE
    sku = new_product(orders)
    looping = fleet.start("saga_orchestrator", name="saga_orchestrator_looping", env=SAGA_ENV)
    try:
        with CrashLoop(looping, rng) as chaos:
            # Waves of orders until the replica has died at least MIN_KILLS times under load: a fast machine
            # places a wave sooner than the loop kills (by time, as a crash loop does), a slow one needs one wave.
            waves: list[LoadRun] = []
            while not waves or (chaos.kills < MIN_KILLS and len(waves) < MAX_WAVES):
                with running_load(gateway_url, shoppers.tokens, _bodies(orders, sku, rng), concurrency=10) as wave:
                    pass
                waves.append(wave)
            run = LoadRun([p for w in waves for p in w.placements], started_at=waves[0].started_at)
            # The healthy replica must finish everything while the other keeps dying.
            report = settle_and_check(gateway_url, rel_admin.token, run, initial_stock={sku: orders})
        kills = chaos.kills
    finally:
        looping.kill()
        fleet.processes.pop("saga_orchestrator_looping", None)
    healthy = f"{chaos_orchestrator.env.get('INSTANCE_HOST', '127.0.0.1')}:{chaos_orchestrator.port}/"
    refused = [f"{p.key}: {t}" for p in run.placements for t in p.transient if t.startswith("5")]
    with httpx.Client(base_url=gateway_url, timeout=30, headers=rel_admin.headers) as client:
        views = [_history(client, saga_id) for saga_id in sorted(set(run.saga_ids))]
    slowest = max(_at(v["history"][-1]) - _at(v["history"][0]) for v in views)
    resumed_by = Counter("healthy" if e["data"]["by"].startswith(healthy) else "crash-looping"
                         for v in views for e in v["history"] if e["type"] == "SagaResumed")
    say(f"tried: {len(run.placements)} orders in {len(waves)} waves of {orders}, two replicas, one SIGKILLed"
        f" {kills} times (every 1-3 s, seed-chosen)")
    say(f"found: {run.summary()}; slowest saga {slowest.total_seconds():.1f} s; client 5xx answers {len(refused)};"
        f" resumes {dict(resumed_by)}")
    failing = {p.saga_id for p in run.placements if p.body["payment_token"] == FAILING}
    _assert_payments_give_up_in_time_and_every_attempt_is_counted(fleet, [v for v in views if v["saga_id"] in failing])
    assert report.ok, report.render()
    assert kills >= MIN_KILLS, "the replica was not crash-looping"
    assert resumed_by["healthy"] > 0, "the healthy replica took over none of the crash-looping replica's sagas"
    assert not refused, refused[:5]  # a replica was ready all along: no client was turned away
    assert not run.server_errors(), run.server_errors()[:5]
    assert len(set(run.saga_ids)) == len(run.placements)


def _assert_payments_give_up_in_time_and_every_attempt_is_counted(fleet: Fleet, views: list[dict[str, Any]]) -> None:
    # Those that got as far as the payment (on a loaded machine an earlier step may time out first).
    failing = [v for v in views if any(e["type"] == "AttemptStarted" and e["data"]["step"] == "make_payment"
                                       for e in v["history"])]
    assert failing, "no order with a failing card reached its payment"
    charged = _charge_attempts(fleet, [v["order_id"] for v in failing])
    answered = 0
    for view in failing:
        history = view["history"]
        attempts = [i for i, e in enumerate(history) if e["type"] == "AttemptStarted"
                    and e["data"]["step"] == "make_payment" and e["data"]["phase"] == "action"]
        failed = next(e for e in history if e["type"] == "StepFailed")
        assert failed["data"]["step"] == "make_payment" and failed["data"]["final"] is False, failed
        first = _at(history[attempts[0]])
        # No attempt started past the deadline, counted from the first one, however often the saga was resumed;
        # but a call whose answer died with its driver is asked once more by the next one.
        late = [history[i] for i in attempts if _at(history[i]) >= first + DEADLINE
                and history[i - 1]["data"].get("error") != LOST_ANSWER]
        assert not late, (view["saga_id"], first, late)
        # It gave up within the deadline and one retry interval, or, if its driver died first, at the resume.
        resumes = [_at(e) for e in history if e["type"] == "SagaResumed" and first < _at(e) <= _at(failed)]
        limit = max([first + DEADLINE + RETRY_INTERVAL, *(r + RESUME_SLACK for r in resumes)]) + LOOP_LATENESS
        assert _at(failed) <= limit, (view["saga_id"], failed["timestamp"], first, resumes)
        # Every charge the payment service received is in the history, and every answer of its card processor
        # is a charge it kept on file. An attempt without one never got that far: its driver was killed before
        # the request left (recorded as lost by the next driver), or the service refused it before charging.
        step = next(s for s in view["steps"] if s["step"] == "make_payment")
        errors = [e["data"]["error"] for e in history
                  if e["type"] == "AttemptFailed" and e["data"]["step"] == "make_payment"]
        processed = sum(1 for error in errors if "card processor" in error)
        counted = (step["attempts"], len(attempts), charged[view["order_id"]], processed)
        assert counted[0] == counted[1] >= counted[2] >= counted[3], (view["saga_id"], counted, errors)
        answered += processed
    assert answered, "no failing charge reached the card processor"
    say(f"failing payments: {len(failing)}, {sum(charged.values())} charge attempts, all in their sagas' histories")
