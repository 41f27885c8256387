"""The tests' fleet: the product's supervisor (customer_cli.fleet) on PostgreSQL, free ports, fault injection.

Every test database is on the run's server (tests/postgres.py: the one given, the machine's, or an embedded one) and
its name ends in TEST_DB_SUFFIX, so that several checkouts can run the suite on one server at once. POSTGRES,
PG_ADMIN_DSN and PG_URL_BASE are looked up when first used: the embedded server starts only when a test needs one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from customer_cli.fleet import (
    METRICS_HEADERS,
    METRICS_TOKEN,
    NO_DATABASE,
    SERVICES,
    TEST_ADMIN_EMAIL,
    TEST_ADMIN_PASSWORD,
    Fleet,
    ServiceProcess,
    postgres_fleet,
    recreate_fleet_databases,
)
from customer_cli.processes import ROOT, free_port
from tests.postgres import suite_server

# Re-exported for the tests (with POSTGRES, PG_ADMIN_DSN and PG_URL_BASE from __getattr__ below).
__all__ = ["ADMIN_EMAIL", "ADMIN_PASSWORD", "DB_PREFIX", "DB_SUFFIX", "METRICS_HEADERS", "METRICS_TOKEN",
           "NO_DATABASE", "ROOT", "SERVICES", "Fleet", "ServiceProcess", "free_port", "recreate_databases",
           "start_test_fleet"]

DB_SUFFIX = os.environ.get("TEST_DB_SUFFIX", "")
DB_PREFIX = os.environ.get("FLEET_DB_PREFIX", "cs_test")
ADMIN_EMAIL = TEST_ADMIN_EMAIL
ADMIN_PASSWORD = TEST_ADMIN_PASSWORD


def __getattr__(name: str) -> Any:
    """POSTGRES, PG_ADMIN_DSN, PG_URL_BASE: the run's server, decided (and maybe started) at first use."""
    if name not in ("POSTGRES", "PG_ADMIN_DSN", "PG_URL_BASE"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    server = suite_server()
    return {"POSTGRES": server, "PG_ADMIN_DSN": server.admin_dsn, "PG_URL_BASE": server.url_base}[name]


def recreate_databases(names: list[str]) -> None:
    """Drop and create each database (names are given without DB_SUFFIX; it is appended here)."""
    suite_server().recreate_databases(names)


def start_test_fleet(workdir: Path, packages: list[str]) -> Fleet:
    """Fresh cs_test_* databases and every package of `packages` started (see Fleet.start_all)."""
    server = suite_server()
    fleet = postgres_fleet(workdir, server, DB_PREFIX)
    recreate_fleet_databases(server, DB_PREFIX, packages)
    fleet.start_all(packages)
    return fleet
