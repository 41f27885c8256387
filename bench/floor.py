"""The floor under the saga: what one HTTP hop and one SQL statement cost on this machine, with none of the
project's code in them, measured like the saga phases (closed loop, 64 clients, CPU from /proc).

- http: `bench.floor_app` (FastAPI, one route, a small JSON answer, no middleware) under uvicorn with the
  services' settings (uvloop, httptools, no access log), one process, driven by the bench's own aiohttp
  clients on keep-alive connections: CPU ms per request in the server and in the client.
- sql: transactions of one and of four primary-key `SELECT`s through `shared.db.Database` (SQLAlchemy's
  asyncpg engine, the services' pool of 10), 64 tasks: CPU ms (this process and PostgreSQL's backends) per
  statement and per transaction around them.
A saga through the gateway makes 11 requests (client → gateway, gateway → /validate, gateway → orchestrator,
the catalogue lookup, the seven steps), each paid for by a server and a client; with the statements and
transactions the run counted per saga, `estimate` gives the most sagas/s the cores could finish if every
hop and statement cost only the floor (no validation, auth, logging, domain rules or event store).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import aiohttp
import psycopg
from sqlalchemy import Integer, bindparam, select, text

from bench.load import closed_loop
from bench.procstats import cpu_secs
from bench.stack import POSTGRES
from customer_cli.processes import free_port
from shared.db import Database

DB_NAME = "cs_bench_floor"
HOPS_PER_SAGA = 11
# The ruler of issue 17: the saga's shape when the targets were set (11 HTTP hops, 29 SQL statements, 12
# transactions), priced at this run's floor. It stays fixed when the saga needs fewer statements, so that the
# ratios to it measure the project's progress on any machine; `estimate` prices the saga's own shape beside it.
RULER_SHAPE = {"hops": 11, "statements": 29, "transactions": 12}




async def http_floor(clients: int, seconds: float) -> dict[str, Any]:
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", "bench.floor_app:app", "--host", "127.0.0.1", "--port", str(port),
        "--no-access-log", "--log-level", "warning", stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/ping"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients + 8)) as session:
            for _ in range(100):
                try:
                    async with session.get(url) as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)

            async def one(_: int) -> bool:
                async with session.get(url) as response:
                    await response.read()
                    return response.status == 200

            await closed_loop("warm-up", one, clients, 2, 0)
            server_before, client_before = cpu_secs(server.pid), cpu_secs(os.getpid())
            figures = await closed_loop("HTTP floor", one, clients, seconds, 0)
            server_used, client_used = cpu_secs(server.pid) - server_before, cpu_secs(os.getpid()) - client_before
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 10)
    done = max(1, figures.completed)
    return {"requests_per_sec": figures.per_sec, "server_cpu_ms": round(server_used * 1000 / done, 3),
            "client_cpu_ms": round(client_used * 1000 / done, 3)}


def _backend_cpu() -> float:
    with psycopg.connect(POSTGRES.admin_dsn, autocommit=True) as conn:
        pids = [int(r[0]) for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s",
                                                (POSTGRES.name(DB_NAME),)).fetchall()]
    return sum(cpu_secs(pid) for pid in pids)


async def _sql_phase(db: Database, query: Any, statements: int, clients: int, seconds: float) -> tuple[float, float]:
    """Transactions of `statements` primary-key SELECTs (a SQLAlchemy session, `Database.session()`): CPU ms per
    transaction in this process and in PostgreSQL, and transactions per second."""

    async def one(client: int) -> bool:
        async with db.session() as session:
            for i in range(statements):
                await session.execute(query, {"id": (client * 7 + i) % 1000 + 1})
        return True

    await closed_loop("warm-up", one, clients, 1, 0)
    pg_before, client_before = _backend_cpu(), cpu_secs(os.getpid())
    figures = await closed_loop("SQL floor", one, clients, seconds, 0)
    done = max(1, figures.completed)
    used = (_backend_cpu() - pg_before) + (cpu_secs(os.getpid()) - client_before)
    return used * 1000 / done, figures.per_sec


async def sql_floor(clients: int, seconds: float) -> dict[str, Any]:
    """The cost of one statement inside a transaction and of the transaction around it (session, pool, BEGIN,
    COMMIT), from transactions of one and of four statements: cost(k) = transaction + k x statement."""
    POSTGRES.recreate_databases([DB_NAME])
    db = Database(POSTGRES.url(DB_NAME), pool_size=10)
    try:
        async with db.session() as session:
            await session.execute(text("CREATE TABLE item (id integer PRIMARY KEY, name text NOT NULL)"))
            await session.execute(text("INSERT INTO item SELECT g, 'item ' || g FROM generate_series(1, 1000) g"))
        query = select(text("name")).select_from(text("item")).where(
            text("id = :id").bindparams(bindparam("id", type_=Integer)))
        one_ms, one_per_sec = await _sql_phase(db, query, 1, clients, seconds / 2)
        four_ms, _ = await _sql_phase(db, query, 4, clients, seconds / 2)
    finally:
        await db.dispose()
    statement_ms = max(0.0, (four_ms - one_ms) / 3)
    return {"transactions_per_sec_of_one_statement": one_per_sec, "cpu_ms_transaction_of_one": round(one_ms, 3),
            "cpu_ms_transaction_of_four": round(four_ms, 3), "statement_cpu_ms": round(statement_ms, 3),
            "transaction_cpu_ms": round(one_ms - statement_ms, 3)}


def estimate(report: dict[str, Any], statements_per_saga: float, transactions_per_saga: float) -> dict[str, Any]:
    """CPU ms a saga would cost with every hop and statement at the floor's price, and the sagas/s of the cores."""
    ms = (HOPS_PER_SAGA * report["hop_cpu_ms"] + statements_per_saga * report["sql"]["statement_cpu_ms"]
          + transactions_per_saga * report["sql"]["transaction_cpu_ms"])
    return {"statements_per_saga": round(statements_per_saga, 1),
            "transactions_per_saga": round(transactions_per_saga, 1), "floor_cpu_ms_per_saga": round(ms, 1),
            "floor_sagas_per_sec": round((os.cpu_count() or 1) * 1000 / ms, 1) if ms else None}


def ruler(report: dict[str, Any]) -> dict[str, Any]:
    """The ruler: RULER_SHAPE at this run's floor prices — CPU ms per saga, and the sagas/s the cores could finish."""
    ms = (RULER_SHAPE["hops"] * report["hop_cpu_ms"] + RULER_SHAPE["statements"] * report["sql"]["statement_cpu_ms"]
          + RULER_SHAPE["transactions"] * report["sql"]["transaction_cpu_ms"])
    return {**RULER_SHAPE, "cpu_ms_per_saga": round(ms, 2),
            "sagas_per_sec": round((os.cpu_count() or 1) * 1000 / ms, 1) if ms else None}


async def run(clients: int = 64, seconds: float = 6.0) -> dict[str, Any]:
    http = await http_floor(clients, seconds)
    sql = await sql_floor(clients, seconds)
    hop_ms = http["server_cpu_ms"] + http["client_cpu_ms"]
    report: dict[str, Any] = {
        "http": http, "sql": sql, "hops_per_saga": HOPS_PER_SAGA, "hop_cpu_ms": round(hop_ms, 3),
        # The most sagas/s the cores could finish if a saga were nothing but its hops at the floor's cost.
        "hops_only_sagas_per_sec": round((os.cpu_count() or 1) * 1000 / (HOPS_PER_SAGA * hop_ms), 1),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    report["ruler"] = ruler(report)
    return report


def averaged(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """The floor measured before and after a run's phases, as one: the mean of each price, with its ruler. This
    machine's prices drift within a run (a statement at 0.24 ms in one run and 0.47 in the one before it), and the
    phases between the two measurements ran at prices somewhere between them."""
    def mean(a: float, b: float) -> float:
        return round((a + b) / 2, 3)

    sql = {key: mean(first["sql"][key], last["sql"][key]) for key in ("statement_cpu_ms", "transaction_cpu_ms")}
    report = {**first, "hop_cpu_ms": mean(first["hop_cpu_ms"], last["hop_cpu_ms"]), "sql": {**first["sql"], **sql},
              "before": {k: first[k] for k in ("http", "sql", "hop_cpu_ms", "measured_at")},
              "after": {k: last[k] for k in ("http", "sql", "hop_cpu_ms", "measured_at")}}
    report["ruler"] = ruler(report)
    return report


if __name__ == "__main__":
    print(asyncio.run(run()))
