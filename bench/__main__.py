"""`make bench` / `python -m bench`: the saga path measured end to end, with its lower bound and yardsticks.

Starts the fleet against PostgreSQL (cs_bench_* databases), or targets a running stack when
GATEWAY_URL is set, then measures in one run:
  1. placeCustomerOrder through the gateway at 1, 16 and 64 clients (to a terminal state, Prefer: wait)
  2. the lower bound: a bare client making the same seven service calls directly
  3. the same authenticated GET direct to a service, through the gateway, through nginx auth_request
  4. the peer: the same saga driven by DBOS Transact workflows (bench/dbos_peer.py), its outcomes checked by
     the invariant checker
  5. each process's RSS after the run, and CPU per saga per process
  6. event-store saves per saga in the run, and the store's own ceiling (saves/s)
  7. the ruler (bench/floor.py): the saga's shape of issue 17 priced at this run's floor (measured before and
     after the phases, the mean of the two), and the ratios to it
  8. the event bus (bench/bus.py): the 64-client saga phase again with every outbox relay off (BUS_RELAY=false),
     CPU per saga on ÷ off; the lag from an event's commit to the consumer's effect (p50, p99) and the events
     published per saga in each relays-on saga phase, every outbox and consumer drained before and after it
It prints a table and writes bench/results/latest.json. BENCH_SCALE (default 1) stretches every phase;
BENCH_REPEAT (default 1) repeats the 64-client saga, bare, DBOS and relays-off phases, interleaved; BENCH_PHASES
picks parts (floor,store,sagas,bare,dbos,relays,overhead); BENCH_FLEET_ENV="NAME=value ..." sets the fleet's
environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import bus, event_store, floor
from bench.dbos_peer import PeerProcess
from bench.load import Figures, closed_loop
from bench.nginx import Nginx
from bench.procstats import CpuMeter, db_counters, rss_mb
from bench.sagas import BareSagas, DbosSagas, GatewaySagas, OrderReads, new_session
from bench.stack import (
    DB_PREFIX,
    POSTGRES,
    Stack,
    admin_token,
    attach,
    log_dir,
    prepare,
    refresh_tokens,
    service_secret,
    service_token,
    start_fleet,
)
from customer_cli.fleet import METRICS_HEADERS, SERVICES
from customer_cli.invariants import check_invariants
from customer_cli.nats import OPERATOR_USER
from customer_cli.processes import free_port
from shared.bus import BusConfig

RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = [int(x) for x in os.environ.get("BENCH_LEVELS", "1,16,64").split(",")]
SCALE = float(os.environ.get("BENCH_SCALE", "1"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "1"))
# Which parts run (all by default): floor, store, sagas, bare, dbos, relays (the sagas with the bus's relays off),
# overhead.
PHASES = set(os.environ.get("BENCH_PHASES", "floor,store,sagas,bare,dbos,relays,overhead").split(","))
DBOS_DB = f"{DB_PREFIX}_dbos"  # the peer's DBOS system database (TEST_DB_SUFFIX appended, like the fleet's)
# Issue 17's targets, as ratios to the ruler measured in the same run (and p99 in ms at 16 clients).
# Issue 22's budget for the bus: CPU per saga with the relays on ÷ off, and the commit-to-effect lag's p99 (ms) at the
# top level (both the median of the rounds).
TARGETS = {"cpu_vs_ruler": ("<=", 2.2), "sagas_vs_ruler": (">=", 0.45), "orchestrator_vs_bare": (">=", 0.85),
           "project_vs_dbos": (">=", 3.0), "p99_ms_at_16": ("<=", 300.0), "moonshot_sagas_vs_ruler": (">=", 0.85),
           "relays_on_vs_off": ("<=", 1.10), "bus_lag_p99_ms": ("<=", 1000.0)}
SECONDS = {1: 5.0, 16: 8.0}  # a level's measured seconds at scale 1 (others: 12)
WARMUP = 3.0
STATS_SETTLE_SECS = 11  # PostgreSQL backends publish their commit counts within 10 s of going idle


def _secs(level: int) -> float:
    return SECONDS.get(level, 12.0) * SCALE


def _metric(text: str, name: str) -> float | None:
    match = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def orchestrator_counters(stack: Stack) -> dict[str, float | None]:
    url = stack.services.get("saga_orchestrator")
    if not url:
        return {}
    try:
        text = httpx.get(f"{url}/metrics", headers=METRICS_HEADERS, timeout=10).text
    except httpx.HTTPError:
        return {}
    return {name: _metric(text, name) for name in
            ("saga_started_total", "saga_event_store_saves_total", "saga_event_store_events_total",
             "saga_event_store_writes_total")}


def statement_counts(stack: Stack) -> dict[str, float]:
    """Each service's `db_statements_total` (SQL statements its driver sent) so far."""
    counts: dict[str, float] = {}
    for package, url in stack.services.items():
        try:
            text = httpx.get(f"{url}/metrics", headers=METRICS_HEADERS, timeout=10).text
            value = _metric(text, "db_statements_total")
        except httpx.HTTPError:
            continue
        if value is not None:
            counts[package] = value
    return counts


def _statements_per(before: dict[str, float], after: dict[str, float], count: float) -> dict[str, float]:
    if not count:
        return {}
    return {p: round((after[p] - before.get(p, 0.0)) / count, 2) for p in sorted(after) if after[p] > before.get(p, 0)}


def _per(delta: float | None, count: float) -> float | None:
    return round(delta / count, 2) if delta is not None and count else None


def _delta(after: dict[str, float | None], before: dict[str, float | None], name: str) -> float | None:
    a, b = after.get(name), before.get(name)
    return a - b if a is not None and b is not None else None


class Bench:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.results: list[Figures] = []
        self.errors: list[str] = []
        self.cpu = CpuMeter(stack.pids, POSTGRES.admin_dsn, DB_PREFIX, POSTGRES.suffix) if stack.pids else None
        self.bus = bus.BusWatch(stack.services, _bus_config(stack))

    def log(self, figures: Figures) -> None:
        self.results.append(figures)
        load = figures.loadavg[0]
        print(f"  {figures.name:28} c={figures.concurrency:<3} {figures.per_sec:8.1f}/s  p50 {figures.p50_ms:7.1f}  "
              f"p95 {figures.p95_ms:7.1f}  p99 {figures.p99_ms:7.1f} ms  failures {figures.failures}  "
              f"load {load:.2f}", flush=True)

    async def phase(self, name: str, one: Any, level: int, seconds: float,
                    settle: Callable[[], Awaitable[None]] | None = None) -> Figures:
        """`settle`, when given, is awaited before the CPU is sampled again: the work the phase left behind (the
        bus's relays and consumers catching up) is the phase's."""
        before = self.cpu.sample() if self.cpu else None
        figures = await closed_loop(name, one, level, seconds, WARMUP * min(SCALE, 2), self.errors)
        # Warm-up CPU is in the sample too: divide by everything done in the sampled time.
        done = figures.completed * (1 + WARMUP * min(SCALE, 2) / figures.seconds)
        if settle is not None:
            if self.cpu and before is not None and figures.completed:  # what the load's own time cost, apart
                used = CpuMeter.used(before, self.cpu.sample())
                figures.extra["cpu_ms_per_op_before_settling"] = round(sum(
                    v for k, v in used.items() if k not in ("machine busy (cores)", "load generator")) * 1000 / done, 1)
            started = time.monotonic()
            await settle()
            figures.extra["settle_secs"] = round(time.monotonic() - started, 1)
        if self.cpu and before is not None and figures.completed:
            used = CpuMeter.used(before, self.cpu.sample())
            busy = used.pop("machine busy (cores)")
            figures.extra["cpu_ms_per_op"] = {k: round(v * 1000 / done, 2) for k, v in used.items() if v > 0}
            figures.extra["machine_busy_cores"] = busy
        self.log(figures)
        return figures

    async def sagas(self, level: int, relays: bool = True) -> Figures:
        """The saga phase. With the relays on (the product's default) every outbox and consumer is drained before
        it, and again before its CPU is sampled and its bus figures read; with them off nothing drains."""
        refresh_tokens(self.stack)
        drain: dict[str, Any] = {}

        async def settle() -> None:
            drain["load_end"] = await bus.snapshot(self.bus.services)  # how far the bus kept up with the load
            drain["after"], drain["secs"], drain["drained"] = await self.bus.drained()

        bus_before = (await self.bus.drained())[0] if relays else await bus.snapshot(self.bus.services)
        async with new_session(level + 8) as session:
            driver = GatewaySagas(self.stack, session)
            before, statements = orchestrator_counters(self.stack), statement_counts(self.stack)
            name = "placeCustomerOrder (gateway)" if relays else "placeCustomerOrder, relays off"
            figures = await self.phase(name, driver.one, level, _secs(level), settle if relays else None)
            after = orchestrator_counters(self.stack)
            figures.extra["statements_per_saga"] = _statements_per(statements, statement_counts(self.stack),
                                                                   driver.attempts)
        started = _delta(after, before, "saga_started_total")
        figures.extra["outcomes"] = dict(driver.outcomes)
        figures.extra["saves_per_saga"] = _per(_delta(after, before, "saga_event_store_saves_total"), started or 0)
        figures.extra["events_per_saga"] = _per(_delta(after, before, "saga_event_store_events_total"), started or 0)
        figures.extra["store_writes_per_saga"] = _per(_delta(after, before, "saga_event_store_writes_total"),
                                                      started or 0)
        figures.extra["attempts"] = driver.attempts
        bus_after = drain["after"] if relays else await bus.snapshot(self.bus.services)
        figures.extra["bus"] = _bus_figures(bus_before, bus_after, driver.attempts, relays, drain,
                                            figures.seconds + WARMUP * min(SCALE, 2))
        _print_bus(figures.extra["bus"])
        return figures

    async def relays_off(self, level: int) -> Figures | None:
        """The saga phase with every relay off (BUS_RELAY=false), then the relays on again and what the phase left
        in the outboxes drained; None when the bench did not start the fleet (it cannot restart a running stack)."""
        fleet = self.stack.fleet
        if fleet is None:
            return None
        await self.bus.drained()  # what earlier phases wrote is on the bus before the relays stop
        print("relays off: every service with a database restarted with BUS_RELAY=false ...", flush=True)
        off_secs = await asyncio.to_thread(bus.set_relays, fleet, self.stack.pids, False)
        figures = await self.sagas(level, relays=False)
        on_secs = await asyncio.to_thread(bus.set_relays, fleet, self.stack.pids, True)
        after, secs, drained = await self.bus.drained()
        # The restarted processes' counters began at the restart: all they published is what the phase held back.
        held = bus.published(after)
        figures.extra["bus"].update(restart_secs=[off_secs, on_secs], held_back=held,
                                    held_back_per_saga=_per(held, figures.extra["attempts"]),
                                    drained_after_relays_on=drained, drain_secs_after_relays_on=secs)
        print(f"  relays on again (restarts {off_secs} s and {on_secs} s): {held:.0f} events held back "
              f"({figures.extra['bus']['held_back_per_saga']} per saga) published and applied "
              f"{'within' if drained else 'NOT within'} {secs} s", flush=True)
        return figures

    async def bare(self, level: int) -> Figures:
        token = service_token(self.stack)
        async with new_session(level * 2 + 8) as session:
            driver = BareSagas(self.stack, session, token)
            statements = statement_counts(self.stack)
            figures = await self.phase("bare client (7 direct calls)", driver.one, level, _secs(level))
            figures.extra["statements_per_saga"] = _statements_per(statements, statement_counts(self.stack),
                                                                   driver.attempts)
        figures.extra["outcomes"] = dict(driver.outcomes)
        figures.extra["attempts"] = driver.attempts
        return figures

    async def dbos(self, level: int, peer: PeerProcess) -> Figures:
        async with new_session(level + 8) as session:
            driver = DbosSagas(self.stack, session, peer.url)
            figures = await self.phase("DBOS Transact peer", driver.one, level, _secs(level))
        figures.extra["outcomes"] = dict(driver.outcomes)
        figures.extra["attempts"] = driver.attempts
        return figures

    async def reads(self, name: str, base_url: str, level: int) -> Figures:
        refresh_tokens(self.stack)
        async with new_session(level + 8) as session:
            return await self.phase(name, OrderReads(self.stack, session, base_url).one, level, 8 * SCALE)


def _bus_config(stack: Stack) -> BusConfig | None:
    """The operator's connection to the bus (the durable consumers' state): the fleet's own server, or for a running
    stack BENCH_NATS_URL with BENCH_NATS_USER/BENCH_NATS_PASSWORD (none: the outboxes' metrics alone say drained)."""
    if stack.fleet is not None:
        return stack.fleet.bus_config(OPERATOR_USER) if stack.fleet.nats is not None else None
    url = os.environ.get("BENCH_NATS_URL", "")
    return BusConfig(url, os.environ.get("BENCH_NATS_USER", ""), os.environ.get("BENCH_NATS_PASSWORD", ""),
                     name="bench") if url else None


def _bus_figures(before: bus.Snapshot, after: bus.Snapshot, placed: int, relays: bool,
                 drain: dict[str, Any], load_secs: float) -> dict[str, Any]:
    """A saga phase's bus figures: events published per saga placed (warm-up included, like `placed`), the lag
    per consumer, the backlog each service reported at the end, how long the drain after the phase took, and the
    events published and the timeline consumer applied per second while the load ran (warm-up included) and
    applied per second once it stopped."""
    figures: dict[str, Any] = {
        "relays": "on" if relays else "off",
        "published_per_saga": _per(bus.published(after) - bus.published(before), placed),
        "duplicates": sum(s.duplicates for s in after.values()) - sum(s.duplicates for s in before.values()),
        "lag": bus.lag_figures(before, after),
    }
    if relays:  # (with none, the gauge says 0: no relay measures the outbox)
        figures.update(backlog_at_end=bus.backlogs(after), drained=drain.get("drained"), drain_secs=drain.get("secs"))
    if relays and "load_end" in drain:
        end = drain["load_end"]
        figures["under_load"] = {
            "published_per_sec": round((bus.published(end) - bus.published(before)) / load_secs, 1),
            "timeline_applied_per_sec": round(
                (bus.applied(end, bus.TIMELINE) - bus.applied(before, bus.TIMELINE)) / load_secs, 1),
            # Which relays kept up: each one's publishing rate, and the backlog its last pass saw.
            "published_per_sec_by_service": {
                package: round((service.published - before.get(package, bus.ServiceBus()).published) / load_secs, 1)
                for package, service in sorted(end.items())},
            "backlog_at_load_end": bus.backlogs(end)}
        if drain.get("secs"):
            figures["under_load"]["timeline_applied_per_sec_after"] = round(
                (bus.applied(after, bus.TIMELINE) - bus.applied(end, bus.TIMELINE)) / drain["secs"], 1)
    return figures


def _print_bus(figures: dict[str, Any]) -> None:
    lag = "; ".join(f"{consumer} p50 {f['p50_ms']} p99 {f['p99_ms']} (in {f['p99_bucket_ms']}) mean {f['mean_ms']} ms "
                    f"({f['events']:.0f})" for consumer, f in sorted(figures["lag"].items()))
    backlog = figures.get("backlog_at_end")
    left = "every outbox 0" if backlog and not any(backlog.values()) else (
        f"backlog {backlog or 'not reported'}" if figures["relays"] == "on" else "the outboxes held back")
    drained = f", drained {figures['drain_secs']} s after the phase" if figures.get("drained") else (
        ", NOT drained" if figures["relays"] == "on" else "")
    rates = figures.get("under_load")
    pace = (f"; while the load ran {rates['published_per_sec']} events/s published, "
            f"{rates['timeline_applied_per_sec']}/s applied by {bus.TIMELINE} "
            f"({rates.get('timeline_applied_per_sec_after')}/s once it stopped); published/s by service "
            f"{rates['published_per_sec_by_service']}, backlog at the load's end {rates['backlog_at_load_end']}"
            ) if rates else ""
    print(f"  bus (relays {figures['relays']}): {figures['published_per_saga']} events published per saga; "
          f"lag {lag or 'none observed'}; {left}{drained}{pace}", flush=True)


def _db_counts() -> dict[str, dict[str, int]]:
    try:
        return db_counters(POSTGRES.admin_dsn, DB_PREFIX, POSTGRES.suffix)
    except Exception:
        return {}


def _db_per(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], count: int,
            key: str) -> dict[str, float]:
    """Transactions (or sessions opened) per saga in each database, over the sagas placed between two samples."""
    if not count:
        return {}
    deltas = {db: after[db][key] - before.get(db, {}).get(key, 0) for db in sorted(after) if db != "event_store"}
    return {db: round(delta / count, 2) for db, delta in deltas.items() if delta > 0}


def start_peer(stack: Stack) -> PeerProcess:
    """The DBOS peer against the fleet's services, its system database fresh."""
    POSTGRES.recreate_databases([DBOS_DB])
    database_url = POSTGRES.dsn(DBOS_DB)
    services = {SERVICES[package]: url for package, url in stack.services.items() if package in SERVICES}
    workdir = stack.fleet.workdir if stack.fleet else log_dir()
    peer = PeerProcess(database_url, services, stack.services["auth_service"], service_secret(stack),
                       workdir / "dbos_peer.log", free_port())
    peer.start()
    return peer


def check_peer(stack: Stack, peer: PeerProcess, since: datetime) -> dict[str, Any]:
    """The invariant checker over every saga the peer ran: orders, money, stock, carriers, shipments."""
    report = check_invariants(stack.gateway_url, admin_token(stack), sagas=peer.sagas(), since=since,
                              allow_compensation_failed=False)
    print("  " + report.render().replace("\n", "\n  "), flush=True)
    return {"ok": report.ok, "violations": dict(report.by_rule()), "sagas": report.counts["sagas"],
            "confirmed": report.counts["orders:CONFIRMED"], "cancelled": report.counts["orders:CANCELLED"],
            "checked_secs": round(report.elapsed_secs, 1)}


async def _floor() -> dict[str, Any]:
    fl = await floor.run(max(LEVELS), 6 * SCALE)
    print(f"  HTTP hop: {fl['http']['requests_per_sec']:.0f} requests/s, CPU ms per request: server "
          f"{fl['http']['server_cpu_ms']}, client {fl['http']['client_cpu_ms']}", flush=True)
    print(f"  SQL through SQLAlchemy's asyncpg engine, CPU ms (client and PostgreSQL): a statement "
          f"{fl['sql']['statement_cpu_ms']}, the transaction around statements {fl['sql']['transaction_cpu_ms']}",
          flush=True)
    return fl


async def run(stack: Stack) -> dict[str, Any]:
    bench = Bench(stack)
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
        "python": platform.python_version(), "scale": SCALE, "levels": LEVELS, "repeat": REPEAT,
        "loadavg_start": os.getloadavg(), "gateway_url": stack.gateway_url, "fleet_started_by_bench": bool(stack.fleet),
    }
    can_direct = "bare" in PHASES and all(p in stack.services for p in (
        "order_service", "inventory_service", "payment_service", "carrier_service", "shipment_service"))

    if "floor" in PHASES:
        print("the floor: one HTTP hop and one SQL statement with none of the project's code ...", flush=True)
        report["floor"] = await _floor()
    if "store" in PHASES:
        print("event store ceiling (SagaStore saves, no HTTP) ...", flush=True)
        report["event_store"] = await event_store.run([1, 64], 5 * SCALE)
    for row in report.get("event_store", []):
        print(f"  c={row['concurrency']:<3} {row['saves_per_sec']:8.1f} saves/s  {row['sagas_per_sec']:7.1f} "
              f"sagas/s at {row['saves_per_saga']} saves per saga", flush=True)

    base = _db_counts()
    print("placeCustomerOrder through the gateway ...", flush=True)
    saga_runs = [await bench.sagas(level) for level in LEVELS] if "sagas" in PHASES else []
    bare_runs: list[Figures] = []
    report["transactions_per_saga"], report["sessions_per_saga"] = {}, {}
    after_sagas = base
    if saga_runs:
        await asyncio.sleep(STATS_SETTLE_SECS)
        after_sagas = _db_counts()
        placed = sum(int(f.extra["attempts"]) for f in saga_runs)
        report["transactions_per_saga"]["orchestrated"] = _db_per(base, after_sagas, placed, "transactions")
        report["sessions_per_saga"]["orchestrated"] = _db_per(base, after_sagas, placed, "sessions")
    if can_direct:
        print("lower bound: bare client, seven direct calls ...", flush=True)
        bare_runs = [await bench.bare(level) for level in LEVELS]
        await asyncio.sleep(STATS_SETTLE_SECS)
        after_bare = _db_counts()
        placed = sum(int(f.extra["attempts"]) for f in bare_runs)
        report["transactions_per_saga"]["bare"] = _db_per(after_sagas, after_bare, placed, "transactions")
        report["sessions_per_saga"]["bare"] = _db_per(after_sagas, after_bare, placed, "sessions")
    top = max(LEVELS)
    dbos_runs: list[Figures] = []
    relays_off: list[Figures] = []
    peer = None

    async def without_relays() -> None:
        if "relays" in PHASES and (figures := await bench.relays_off(top)) is not None:
            relays_off.append(figures)

    try:
        if "dbos" in PHASES and can_direct:
            print("the peer: the same saga as DBOS Transact workflows ...", flush=True)
            peer = start_peer(stack)
            if bench.cpu:
                bench.cpu.pids["dbos peer"] = peer.pid
            dbos_since, before_dbos = datetime.now(UTC), _db_counts()
            dbos_runs = [await bench.dbos(level, peer) for level in LEVELS]
            await asyncio.sleep(STATS_SETTLE_SECS)
            placed = sum(int(f.extra["attempts"]) for f in dbos_runs)
            report.setdefault("transactions_per_saga", {})["dbos"] = _db_per(before_dbos, _db_counts(), placed,
                                                                              "transactions")
            print("checking the peer's sagas with the invariant checker ...", flush=True)
            report["dbos_invariants"] = await asyncio.to_thread(check_peer, stack, peer, dbos_since)
        await without_relays()
        for _ in range(REPEAT - 1):
            print(f"repeat at {top} clients ...", flush=True)
            if "sagas" in PHASES:
                saga_runs.append(await bench.sagas(top))
            if can_direct:
                bare_runs.append(await bench.bare(top))
            if peer is not None:
                dbos_runs.append(await bench.dbos(top, peer))
            await without_relays()
    finally:
        if peer is not None:
            peer.stop()
            if bench.cpu:
                bench.cpu.pids.pop("dbos peer", None)

    overhead: list[Figures] = []
    if "overhead" in PHASES and "order_service" in stack.services and "auth_service" in stack.services:
        print(f"gateway overhead: GET /api/orders/{{id}} at {top} clients ...", flush=True)
        overhead.append(await bench.reads("GET direct to order_service", stack.services["order_service"], top))
        overhead.append(await bench.reads("GET through the gateway", stack.gateway_url, top))
        nginx = Nginx(stack.services["auth_service"], stack.services["order_service"])
        nginx.start()
        try:
            if bench.cpu:
                bench.cpu.pids.update({f"nginx {i}": pid for i, pid in enumerate(nginx.pids())})
            overhead.append(await bench.reads("GET through nginx auth_request", nginx.url, top))
        finally:
            nginx.stop()
            if bench.cpu:
                for key in [k for k in bench.cpu.pids if k.startswith("nginx")]:
                    del bench.cpu.pids[key]

    if "floor" in PHASES:
        print("the floor again, after the phases (the ruler prices the mean of the two) ...", flush=True)
        report["floor"] = floor.averaged(report["floor"], await _floor())
    report["rss_mb"] = {name: rss_mb(pid) for name, pid in sorted(stack.pids.items())}
    report["phases"] = [f.as_dict() for f in bench.results]
    report["errors"] = bench.errors
    report["loadavg_end"] = os.getloadavg()
    await bench.bus.close()
    report["bus"] = bus_rounds([f for f in saga_runs if f.concurrency == top], relays_off)
    report["summary"] = summarize(saga_runs, bare_runs, overhead, report, dbos_runs)
    return report


def bus_rounds(relays_on: list[Figures], relays_off: list[Figures]) -> dict[str, Any]:
    """Round by round (the k-th saga phase at the top level with the k-th relays-off phase), the bus's figures, and
    their min / median / max."""
    rounds: list[dict[str, Any]] = []
    for k, on in enumerate(relays_on):
        lag = on.extra.get("bus", {}).get("lag", {})
        timeline = lag.get(bus.TIMELINE, {})
        row: dict[str, Any] = {
            "cpu_ms_per_saga_relays_on": _cpu(on),
            "cpu_ms_per_saga_relays_on_until_the_load_stopped": on.extra.get("cpu_ms_per_op_before_settling"),
            "sagas_per_sec_relays_on": on.per_sec,
            "p99_ms_relays_on": on.p99_ms, "lag_p50_ms": timeline.get("p50_ms"), "lag_p99_ms": timeline.get("p99_ms"),
            "lag_mean_ms": timeline.get("mean_ms"),
            # What the interpolated p99 is sure of: the bucket it fell in.
            "lag_p99_bucket_low_ms": (timeline.get("p99_bucket_ms") or [None])[0],
            "lag_p99_bucket_high_ms": (timeline.get("p99_bucket_ms") or [None, None])[1],
            **{f"lag_p99_ms {consumer}": f["p99_ms"] for consumer, f in lag.items() if consumer != bus.TIMELINE},
            "events_published_per_saga": on.extra.get("bus", {}).get("published_per_saga"),
            "drain_secs_after_phase": on.extra.get("bus", {}).get("drain_secs"),
            **{f"{name} (events/s)": value for name, value in on.extra.get("bus", {}).get("under_load", {}).items()
               if isinstance(value, int | float)},
        }
        if k < len(relays_off):
            off = relays_off[k]
            row.update({
                "cpu_ms_per_saga_relays_off": _cpu(off), "sagas_per_sec_relays_off": off.per_sec,
                "p99_ms_relays_off": off.p99_ms, "relays_on_vs_off": _ratio(_cpu(on), _cpu(off)),
                "events_published_per_saga_relays_off": off.extra["bus"]["published_per_saga"],
                "events_held_back_per_saga": off.extra["bus"].get("held_back_per_saga"),
                "drain_secs_after_relays_on": off.extra["bus"].get("drain_secs_after_relays_on"),
            })
        rounds.append(row)
    backlog = {k: v for f in relays_on for k, v in f.extra.get("bus", {}).get("backlog_at_end", {}).items() if v}
    return {"rounds": rounds, "spread": bus.summarize(rounds), "backlog_left": backlog}


def _best(runs: list[Figures], level: int) -> Figures | None:
    """Of repeated runs at one level, the median by throughput, the lower one of an even count (the machine is
    shared: others' work makes some runs slower, none faster)."""
    at = sorted((f for f in runs if f.concurrency == level), key=lambda f: f.per_sec)
    return at[(len(at) - 1) // 2] if at else None


def _cpu(figures: Figures | None) -> float | None:
    """CPU ms per completed saga of the system (the load generator, on the same cores, left out; and the DBOS peer,
    idle but polling between its own phases, outside them)."""
    if figures is None or not figures.extra.get("cpu_ms_per_op"):
        return None
    outside = {"load generator"} if figures.name == "DBOS Transact peer" else {"load generator", "dbos peer"}
    return round(sum(v for k, v in figures.extra["cpu_ms_per_op"].items() if k not in outside), 1)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def ratios(summary: dict[str, Any], ruler: dict[str, Any] | None) -> dict[str, Any]:
    """Issue 17's ratios: CPU per saga and sagas/s against the ruler, the orchestrator against the bare client,
    the project against DBOS — each with its target and how far it is (value ÷ target: ≥ 1 is met)."""
    values = {"cpu_vs_ruler": _ratio(summary.get("cpu_ms_per_saga"), (ruler or {}).get("cpu_ms_per_saga")),
              "sagas_vs_ruler": _ratio(summary.get("sagas_per_sec_at_top"), (ruler or {}).get("sagas_per_sec")),
              "orchestrator_vs_bare": summary.get("orchestrator_vs_bare"),
              "project_vs_dbos": summary.get("project_vs_dbos"),
              "p99_ms_at_16": summary.get("p99_ms_at_16"), "relays_on_vs_off": summary.get("relays_on_vs_off"),
              "bus_lag_p99_ms": summary.get("bus_lag_p99_ms")}
    values["moonshot_sagas_vs_ruler"] = values["sagas_vs_ruler"]
    out: dict[str, Any] = {}
    for name, (sense, target) in TARGETS.items():
        value = values.get(name)
        if value is None:
            continue
        progress = target / value if sense == "<=" else value / target
        out[name] = {"value": value, "target": f"{sense} {target}", "met": progress >= 1,
                     "of_target": round(progress, 2) if value else None}
    return out


def summarize(saga_runs: list[Figures], bare_runs: list[Figures], overhead: list[Figures],
              report: dict[str, Any], dbos_runs: list[Figures] | None = None) -> dict[str, Any]:
    top = max(LEVELS)
    saga, bare = _best(saga_runs, top), _best(bare_runs, top)
    dbos = _best(dbos_runs or [], top)
    summary: dict[str, Any] = {}
    at_16 = _best(saga_runs, 16)
    if at_16:
        summary["p99_ms_at_16"] = at_16.p99_ms
    if saga:
        summary["sagas_per_sec_at_top"] = saga.per_sec
        summary["p99_ms_at_top"] = saga.p99_ms
        summary["saves_per_saga"] = saga.extra.get("saves_per_saga")
        summary["store_writes_per_saga"] = saga.extra.get("store_writes_per_saga")
    if saga and bare and bare.per_sec:
        summary["orchestrator_vs_bare"] = round(saga.per_sec / bare.per_sec, 2)
    if dbos:
        summary["dbos_sagas_per_sec_at_top"] = dbos.per_sec
        summary["dbos_p99_ms_at_top"] = dbos.p99_ms
        summary["cpu_ms_per_dbos_saga"] = _cpu(dbos)
        summary["dbos_invariants_ok"] = report.get("dbos_invariants", {}).get("ok")
    if saga and dbos and dbos.per_sec:
        summary["project_vs_dbos"] = round(saga.per_sec / dbos.per_sec, 2)
        summary["project_vs_dbos_by_cpu"] = _ratio(_cpu(dbos), _cpu(saga))
    by_name = {f.name: f for f in overhead}
    gw, ng = by_name.get("GET through the gateway"), by_name.get("GET through nginx auth_request")
    direct = by_name.get("GET direct to order_service")
    if gw and ng and ng.per_sec:
        summary["gateway_vs_nginx"] = round(gw.per_sec / ng.per_sec, 2)
    if gw and direct and direct.per_sec:
        summary["gateway_vs_direct"] = round(gw.per_sec / direct.per_sec, 2)
    if ng and direct and direct.per_sec:
        summary["nginx_vs_direct"] = round(ng.per_sec / direct.per_sec, 2)
    spent = _cpu(saga)
    if spent:
        summary["cpu_ms_per_saga"] = spent
        summary["cpu_bound_sagas_per_sec"] = round((os.cpu_count() or 1) * 1000 / spent, 1)
    if _cpu(bare):
        summary["cpu_ms_per_bare_saga"] = _cpu(bare)
    if "floor" in report and saga and saga.extra.get("statements_per_saga"):
        statements = sum(saga.extra["statements_per_saga"].values())
        transactions = sum(report.get("transactions_per_saga", {}).get("orchestrated", {}).values())
        report["floor"]["estimate"] = floor.estimate(report["floor"], statements, transactions)
        summary["floor_cpu_ms_per_saga"] = report["floor"]["estimate"]["floor_cpu_ms_per_saga"]
        summary["floor_sagas_per_sec"] = report["floor"]["estimate"]["floor_sagas_per_sec"]
    ruler = report.get("floor", {}).get("ruler")
    if ruler:
        summary["ruler_cpu_ms_per_saga"] = ruler["cpu_ms_per_saga"]
        summary["ruler_sagas_per_sec"] = ruler["sagas_per_sec"]
    store = max(report.get("event_store", []), key=lambda r: r["saves_per_sec"], default=None)
    saves = summary.get("saves_per_saga")
    if store and saves:
        summary["event_store_saves_per_sec"] = store["saves_per_sec"]
        summary["event_store_ceiling_sagas_per_sec"] = round(store["saves_per_sec"] / saves, 1)
    spread = report.get("bus", {}).get("spread", {})
    for key, name in (("relays_on_vs_off", "relays_on_vs_off"), ("bus_lag_p50_ms", "lag_p50_ms"),
                      ("bus_lag_p99_ms", "lag_p99_ms"), ("events_published_per_saga", "events_published_per_saga"),
                      ("cpu_ms_per_saga_relays_off", "cpu_ms_per_saga_relays_off")):
        if name in spread:
            summary[key] = spread[name]["median"]
    summary["targets"] = ratios(summary, ruler)
    return summary


def print_table(report: dict[str, Any]) -> None:
    print()
    print("| phase | clients | /s | p50 ms | p95 ms | p99 ms | failures | load 1m |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for f in report["phases"]:
        print(f"| {f['name']} | {f['concurrency']} | {f['per_sec']:.1f} | {f['p50_ms']:.1f} | {f['p95_ms']:.1f} | "
              f"{f['p99_ms']:.1f} | {f['failures']} | {f['loadavg'][0]:.2f} |")
    summary = report["summary"]
    print()
    for key, value in summary.items():
        if key != "targets":
            print(f"{key:38} {value}")
    if summary.get("targets"):
        print()
        print("| ratio | this run | target | value ÷ target (≥ 1: met) |")
        print("|---|---:|---:|---:|")
        for key, t in summary["targets"].items():
            print(f"| {key} | {t['value']} | {t['target']} | {t['of_target']}{' ✓' if t['met'] else ''} |")
    if report.get("floor", {}).get("ruler"):
        print(f"ruler (issue 17's shape at this run's floor): {report['floor']['ruler']}")
        for when in ("before", "after"):
            if when in report["floor"]:
                fl = report["floor"][when]
                print(f"  the floor {when} the phases: hop {fl['hop_cpu_ms']}, statement "
                      f"{fl['sql']['statement_cpu_ms']}, transaction {fl['sql']['transaction_cpu_ms']} ms")
    for f in report["phases"]:
        if f["concurrency"] == max(LEVELS) and f["extra"].get("statements_per_saga"):
            per = f["extra"]["statements_per_saga"]
            print(f"SQL statements per saga ({f['name']}): {round(sum(per.values()), 1)} = "
                  + ", ".join(f"{k} {v}" for k, v in per.items()))
    if report.get("floor", {}).get("estimate"):
        print(f"floor of the saga's own shape: {report['floor']['estimate']}")
    if report.get("dbos_invariants"):
        print(f"the DBOS peer's sagas, invariant check: {report['dbos_invariants']}")
    for what in ("transactions_per_saga", "sessions_per_saga"):
        for kind, per_db in report.get(what, {}).items():
            label = what.replace("_", " ")
            print(f"{label} ({kind}): " + ", ".join(f"{db} {n}" for db, n in per_db.items()))
    cpu = {f["name"]: f["extra"].get("cpu_ms_per_op") for f in report["phases"]
           if f["concurrency"] == max(LEVELS) and f["extra"].get("cpu_ms_per_op")}
    for name, per in cpu.items():
        top = sorted(per.items(), key=lambda kv: -kv[1])
        print(f"CPU ms per op, {name}: " + ", ".join(f"{k} {v}" for k, v in top))
    print_bus(report.get("bus", {}))
    if report["rss_mb"]:
        print("RSS MiB after the run: " + ", ".join(f"{k} {v}" for k, v in report["rss_mb"].items()))
    if report["errors"]:
        print("first errors: " + "; ".join(report["errors"][:5]))


def print_bus(figures: dict[str, Any]) -> None:
    """The bus's figures over the rounds: min / median / max, with issue 22's budget beside the two it sets."""
    spread = figures.get("spread")
    if not spread:
        return
    budget = {"relays_on_vs_off": "≤ 1.10", "lag_p99_ms": "< 1000"}
    rounds = max(f["rounds"] for f in spread.values())
    print(f"\nthe event bus at {max(LEVELS)} clients, {rounds} round(s): lag of {bus.TIMELINE} (every event), "
          "quantiles interpolated within the histogram's buckets")
    print("| figure | min | median | max | budget |")
    print("|---|---:|---:|---:|---:|")
    for name, f in spread.items():
        print(f"| {name} | {f['min']} | {f['median']} | {f['max']} | {budget.get(name, '')} |")
    left = figures.get("backlog_left")
    print("backlog after every relays-on saga phase: " + (f"LEFT {left}" if left else "0 in every outbox"))


def _code() -> str:
    """The checkout's commit and the files changed since (the relays phase restarts services: a change made to the
    tree during a run reaches them; compare the value at the start and at the end)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(RESULTS.parent.parent), *args], capture_output=True, text=True,
                              timeout=10).stdout

    try:
        changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
        return git("rev-parse", "--short", "HEAD").strip() + (
            f" + {', '.join(line[3:] for line in changed)}" if changed else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def main() -> None:
    gateway_url = os.environ.get("GATEWAY_URL", "")
    started = time.monotonic()
    code = _code()
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()}, scale {SCALE}, code {code}", flush=True)
    # BENCH_FLEET_ENV="LOG_LEVEL=WARNING DB_POOL_SIZE=5": settings for every service of the fleet (A/B runs).
    fleet_env = dict(item.split("=", 1) for item in os.environ.get("BENCH_FLEET_ENV", "").split())
    stack = attach(gateway_url) if gateway_url else start_fleet(fleet_env)
    try:
        prepare(stack)
        report = asyncio.run(run(stack))
    finally:
        stack.stop()
    report["bench_secs"] = round(time.monotonic() - started, 1)
    report["code"], report["code_at_end"] = code, _code()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(os.environ.get("BENCH_OUTPUT") or RESULTS / "latest.json")
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(report)
    print(f"\ncode {report['code']} at the start, {report['code_at_end']} at the end")
    print(f"written to {out} ({report['bench_secs']} s)")


if __name__ == "__main__":
    main()
