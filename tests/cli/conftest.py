"""Fixtures of the CLI's tests: the command run as a user runs it, against the test fleet's gateway."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.conftest import User
from tests.dashboard.shop import Shop, open_shop
from tests.fleet import ADMIN_EMAIL, ADMIN_PASSWORD, ROOT

Cli = Callable[..., subprocess.CompletedProcess[str]]


def run_cli(*args: str, timeout: float = 240, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m customer_cli ARGS` in a fresh process, as from a shell (output captured as text)."""
    environment = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "customer_cli", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def cli(gateway_url: str) -> Cli:
    """The CLI pointed at the fleet's gateway (--gateway) with the fleet's admin (--admin-email/--admin-password)."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--gateway", gateway_url,
                       "--admin-email", ADMIN_EMAIL, "--admin-password", ADMIN_PASSWORD)

    return run


@pytest.fixture(scope="session")
def cli_shop(gateway_url: str, admin: User) -> Shop:
    return open_shop(gateway_url, admin, "CLI")
