"""What the processes cost: RSS and CPU seconds from /proc, PostgreSQL backends and commits per database.

Linux only (the bench runs where the fleet runs). CPU is sampled before and after a phase, so a
phase's figure is the CPU its processes used during it, whoever else was busy on the machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psycopg

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident set size of one process in MiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def cpu_secs(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores together."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


@dataclass
class CpuSample:
    """CPU seconds per named group of processes at one moment."""

    by_group: dict[str, float]
    machine_busy: float
    machine_total: float


class CpuMeter:
    """CPU use of the fleet's processes (by name), of PostgreSQL backends serving the bench's databases,
    and of this process (the load generator)."""

    def __init__(self, pids: dict[str, int], pg_dsn: str, db_prefix: str, db_suffix: str = "") -> None:
        self.pids = pids
        self.pg_dsn = pg_dsn
        # Only this checkout's databases (TEST_DB_SUFFIX): other checkouts may run a bench on the same server.
        self.pattern = f"{db_prefix}%{db_suffix}"
        self._pg_seen: dict[int, float] = {}

    def _postgres_pids(self) -> list[int]:
        try:
            with psycopg.connect(self.pg_dsn, autocommit=True) as conn:
                rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname LIKE %s",
                                    (self.pattern,)).fetchall()
        except psycopg.Error:
            return []
        return [int(r[0]) for r in rows]

    def sample(self) -> CpuSample:
        groups = {name: cpu_secs(pid) for name, pid in self.pids.items()}
        # Backends come and go with the pools: remember the last figure of each one ever seen.
        for pid in self._postgres_pids():
            self._pg_seen[pid] = max(self._pg_seen.get(pid, 0.0), cpu_secs(pid))
        for pid in list(self._pg_seen):
            now = cpu_secs(pid)
            if now:
                self._pg_seen[pid] = now
        groups["postgres"] = sum(self._pg_seen.values())
        groups["load generator"] = cpu_secs(os.getpid())
        busy, total = machine_busy()
        return CpuSample(groups, busy, total)

    @staticmethod
    def used(before: CpuSample, after: CpuSample) -> dict[str, float]:
        """CPU seconds each group used between two samples, plus the machine's utilisation (0..cores)."""
        used = {name: round(after.by_group.get(name, 0.0) - value, 2) for name, value in before.by_group.items()}
        wall = (after.machine_total - before.machine_total) / (os.cpu_count() or 1)
        used["machine busy (cores)"] = round((after.machine_busy - before.machine_busy) / wall, 2) if wall else 0.0
        return used


def db_counters(pg_dsn: str, db_prefix: str, db_suffix: str = "") -> dict[str, dict[str, int]]:
    """Per database of the bench: transactions (committed and rolled back: a pre-ping is one, whichever way it
    ends) and sessions (connections) opened so far. pg_stat_database; a backend publishes its counts within
    10 s of going idle. Keyed by the name between `db_prefix_` and `db_suffix` (this checkout's TEST_DB_SUFFIX).
    """
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT datname, xact_commit + xact_rollback, sessions FROM pg_stat_database "
                            "WHERE datname LIKE %s", (f"{db_prefix}%{db_suffix}",)).fetchall()
    return {str(name)[len(db_prefix) + 1:len(name) - len(db_suffix)]: {"transactions": int(xacts),
                                                                       "sessions": int(sessions)}
            for name, xacts, sessions in rows}
