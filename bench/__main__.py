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
It prints a table and writes bench/results/latest.json. BENCH_SCALE (default 1) stretches every phase;
BENCH_REPEAT (default 1) repeats the 64-client saga, bare and DBOS phases, interleaved; BENCH_PHASES picks
parts (floor,store,sagas,bare,dbos,overhead); BENCH_FLEET_ENV="NAME=value ..." sets the fleet's environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import event_store, floor
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
from customer_cli.fleet import METRICS_HEADERS, SERVICES, free_port
from customer_cli.invariants import check_invariants

RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = [int(x) for x in os.environ.get("BENCH_LEVELS", "1,16,64").split(",")]
SCALE = float(os.environ.get("BENCH_SCALE", "1"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "1"))
# Which parts run (all by default): floor, store, sagas, bare, overhead.
PHASES = set(os.environ.get("BENCH_PHASES", "floor,store,sagas,bare,dbos,overhead").split(","))
DBOS_DB = f"{DB_PREFIX}_dbos"  # the peer's DBOS system database (TEST_DB_SUFFIX appended, like the fleet's)
# Issue 17's targets, as ratios to the ruler measured in the same run (and p99 in ms at 16 clients).
TARGETS = {"cpu_vs_ruler": ("<=", 2.2), "sagas_vs_ruler": (">=", 0.45), "orchestrator_vs_bare": (">=", 0.85),
           "project_vs_dbos": (">=", 3.0), "p99_ms_at_16": ("<=", 300.0), "moonshot_sagas_vs_ruler": (">=", 0.85)}
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

    def log(self, figures: Figures) -> None:
        self.results.append(figures)
        load = figures.loadavg[0]
        print(f"  {figures.name:28} c={figures.concurrency:<3} {figures.per_sec:8.1f}/s  p50 {figures.p50_ms:7.1f}  "
              f"p95 {figures.p95_ms:7.1f}  p99 {figures.p99_ms:7.1f} ms  failures {figures.failures}  "
              f"load {load:.2f}", flush=True)

    async def phase(self, name: str, one: Any, level: int, seconds: float, per: str = "") -> Figures:
        before = self.cpu.sample() if self.cpu else None
        figures = await closed_loop(name, one, level, seconds, WARMUP * min(SCALE, 2), self.errors)
        if self.cpu and before is not None and figures.completed:
            used = CpuMeter.used(before, self.cpu.sample())
            busy = used.pop("machine busy (cores)")
            # Warm-up CPU is in the sample too: divide by everything done in the sampled time.
            done = figures.completed * (1 + WARMUP * min(SCALE, 2) / figures.seconds)
            figures.extra["cpu_ms_per_op"] = {k: round(v * 1000 / done, 2) for k, v in used.items() if v > 0}
            figures.extra["machine_busy_cores"] = busy
        self.log(figures)
        return figures

    async def sagas(self, level: int) -> Figures:
        refresh_tokens(self.stack)
        async with new_session(level + 8) as session:
            driver = GatewaySagas(self.stack, session)
            before, statements = orchestrator_counters(self.stack), statement_counts(self.stack)
            figures = await self.phase("placeCustomerOrder (gateway)", driver.one, level, _secs(level))
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
    peer = None
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
        for _ in range(REPEAT - 1):
            print(f"repeat at {top} clients ...", flush=True)
            if "sagas" in PHASES:
                saga_runs.append(await bench.sagas(top))
            if can_direct:
                bare_runs.append(await bench.bare(top))
            if peer is not None:
                dbos_runs.append(await bench.dbos(top, peer))
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
    report["summary"] = summarize(saga_runs, bare_runs, overhead, report, dbos_runs)
    return report


def _best(runs: list[Figures], level: int) -> Figures | None:
    """Of repeated runs at one level, the median by throughput, the lower one of an even count (the machine is
    shared: others' work makes some runs slower, none faster)."""
    at = sorted((f for f in runs if f.concurrency == level), key=lambda f: f.per_sec)
    return at[(len(at) - 1) // 2] if at else None


def _cpu(figures: Figures | None) -> float | None:
    """CPU ms per completed saga of the system (the load generator, on the same cores, left out)."""
    if figures is None or not figures.extra.get("cpu_ms_per_op"):
        return None
    return round(sum(v for k, v in figures.extra["cpu_ms_per_op"].items() if k != "load generator"), 1)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def ratios(summary: dict[str, Any], ruler: dict[str, Any] | None) -> dict[str, Any]:
    """Issue 17's ratios: CPU per saga and sagas/s against the ruler, the orchestrator against the bare client,
    the project against DBOS — each with its target and how far it is (value ÷ target: ≥ 1 is met)."""
    values = {"cpu_vs_ruler": _ratio(summary.get("cpu_ms_per_saga"), (ruler or {}).get("cpu_ms_per_saga")),
              "sagas_vs_ruler": _ratio(summary.get("sagas_per_sec_at_top"), (ruler or {}).get("sagas_per_sec")),
              "orchestrator_vs_bare": summary.get("orchestrator_vs_bare"),
              "project_vs_dbos": summary.get("project_vs_dbos"),
              "p99_ms_at_16": summary.get("p99_ms_at_16")}
    values["moonshot_sagas_vs_ruler"] = values["sagas_vs_ruler"]
    out: dict[str, Any] = {}
    for name, (sense, target) in TARGETS.items():
        value = values[name]
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
    if report["rss_mb"]:
        print("RSS MiB after the run: " + ", ".join(f"{k} {v}" for k, v in report["rss_mb"].items()))
    if report["errors"]:
        print("first errors: " + "; ".join(report["errors"][:5]))


def main() -> None:
    gateway_url = os.environ.get("GATEWAY_URL", "")
    started = time.monotonic()
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()}, scale {SCALE}", flush=True)
    # BENCH_FLEET_ENV="LOG_LEVEL=WARNING DB_POOL_SIZE=5": settings for every service of the fleet (A/B runs).
    fleet_env = dict(item.split("=", 1) for item in os.environ.get("BENCH_FLEET_ENV", "").split())
    stack = attach(gateway_url) if gateway_url else start_fleet(fleet_env)
    try:
        prepare(stack)
        report = asyncio.run(run(stack))
    finally:
        stack.stop()
    report["bench_secs"] = round(time.monotonic() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(os.environ.get("BENCH_OUTPUT") or RESULTS / "latest.json")
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(report)
    print(f"\nwritten to {out} ({report['bench_secs']} s)")


if __name__ == "__main__":
    main()
