"""nginx doing the gateway's job — `auth_request` to auth_service /validate, then `proxy_pass` with the
identity headers — as the yardstick of the gateway's overhead. nginx comes from Debian's packages
(installed here when missing), its configuration is generated into a temporary directory, and it
runs in the foreground on a free port, one worker like the gateway's one process.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from customer_cli.processes import free_port

CONFIG = """\
daemon off;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream auth {{ server {auth}; keepalive 128; }}
    upstream orders {{ server {orders}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port};
        proxy_http_version 1.1;
        # (A location's own proxy_set_header lines replace the server's: each location keeps its upstream
        # connections alive itself.)
        location = /_validate {{
            internal;
            proxy_pass http://auth/validate;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Request-ID $request_id;
            proxy_set_header X-Forwarded-Method $request_method;
            proxy_set_header X-Forwarded-Uri $request_uri;
        }}
        location /api/orders {{
            auth_request /_validate;
            auth_request_set $user_id $upstream_http_x_user_id;
            auth_request_set $user_roles $upstream_http_x_user_roles;
            auth_request_set $user_email $upstream_http_x_user_email;
            proxy_set_header Connection "";
            proxy_set_header X-User-Id $user_id;
            proxy_set_header X-User-Roles $user_roles;
            proxy_set_header X-User-Email $user_email;
            proxy_set_header X-Request-ID $request_id;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_pass http://orders;
        }}
    }}
}}
"""


def ensure_installed() -> str:
    """The nginx binary, installed from Debian's packages when missing (the bench runs as root)."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found:
        return found
    print("installing nginx from Debian's packages ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nginx"], check=True, env=env, stdout=subprocess.DEVNULL)
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(found).exists():
        raise RuntimeError("nginx could not be installed")
    return found




class Nginx:
    def __init__(self, auth_url: str, orders_url: str, workers: int = 1) -> None:
        self.binary = ensure_installed()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        self.dir.chmod(0o755)
        self.port = free_port()
        config = CONFIG.format(workers=workers, dir=self.dir, port=self.port, auth=urlsplit(auth_url).netloc,
                               orders=urlsplit(orders_url).netloc)
        (self.dir / "nginx.conf").write_text(config)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen([self.binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                detail = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"nginx exited: {detail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError("nginx did not start")

    def pids(self) -> list[int]:
        """The master and its workers (for CPU figures)."""
        if self.process is None:
            return []
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        workers = [int(p) for p in children.read_text().split()] if children.exists() else []
        return [self.process.pid, *workers]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)
