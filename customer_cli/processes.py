"""Processes the supervisor starts: each in its own process group, dying with the supervisor, its output in a file."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _die_with_parent() -> None:
    """In the child: its own process group, and SIGTERM from Linux when the supervisor dies, even by SIGKILL."""
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(command: str | list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m command` (a module name), or `command` (a command line: the nats-server), its output in
    `log_path`; it dies with the supervisor."""
    argv = [sys.executable, "-m", command] if isinstance(command, str) else command
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent)

def free_port() -> int:
    """A port free on the loopback now (the tests' and the bench's processes take one each)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
