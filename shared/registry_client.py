"""Registration with Eureka through py-eureka-client, and discovery of UP instances with round-robin."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import structlog
from py_eureka_client import http_client as eureka_http
from py_eureka_client.eureka_client import EurekaClient

from shared.errors import ServiceUnavailable
from shared.http_client import new_client
from shared.settings import AUTH_APP, ServiceSettings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Instance:
    instance_id: str
    base_url: str
    # When the registry last took this instance's registration (ms, 0 when unknown): a new value is a
    # (re-)registered instance, e.g. one that restarted on the same address.
    registered_ms: int = 0


class CrossThreadLock:
    """Stands in for py-eureka-client's asyncio.Lock, which its heartbeat thread's own event loop shares.

    An asyncio.Lock released from another thread's loop wakes the waiter without waking its loop, so a
    stop() that collides with a heartbeat can hang; this lock polls instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()

    async def __aenter__(self) -> None:
        # Polling on purpose: nothing in asyncio can wait for a lock that another loop's thread releases.
        while not self._lock.acquire(blocking=False):  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()


async def _do_nothing(*_args: object, **_kwargs: object) -> None:
    return None


def harden_eureka_client(client: EurekaClient) -> EurekaClient:
    """Replace the client's cross-loop asyncio.Lock with one that cannot hang (see CrossThreadLock)."""
    client._EurekaClient__net_lock = CrossThreadLock()  # type: ignore[attr-defined]
    return client


async def stop_eureka_client(client: EurekaClient, deregister: bool = True) -> None:
    """What EurekaClient.stop() should do, without its re-registering bug."""
    # py-eureka-client bug: once its heartbeat timer has fired, stop() leaves the heartbeat thread
    # running, and it re-registers the instance as UP one interval later; a heartbeat already in
    # flight when we cancel gets a 404 and re-registers too. So the leaked loop is disarmed first
    # (both duties off, its register/heartbeat calls no-ops), and only then is the instance taken
    # out of the registry with the original methods.
    register, cancel = client.register, client.cancel
    client._EurekaClient__should_register = False  # type: ignore[attr-defined]
    client._EurekaClient__should_discover = False  # type: ignore[attr-defined]
    client.register = _do_nothing  # type: ignore[method-assign]
    client.send_heartbeat = _do_nothing  # type: ignore[method-assign]
    client._EurekaClient__heartbeat_timer.cancel()  # type: ignore[attr-defined]
    if deregister and client._EurekaClient__alive:  # type: ignore[attr-defined]
        await register(status="DOWN")
        await cancel()


class _EurekaHttpClient(eureka_http.HttpClient):
    """py-eureka-client's HTTP client with one TLS context for the process.

    The library opens a new httpx client for every heartbeat and registry fetch, and each one built a
    fresh TLS context (the CA bundle parsed again): measured at ~15 % of a service's CPU under load with
    1 s heartbeats. The clients share the process's one context (shared/http_client.py); the rest of the
    library's behaviour is kept.
    """

    async def urlopen(self, request: str | eureka_http.HttpRequest | None = None, data: bytes | None = None,
                      timeout: float | None = None) -> eureka_http.HttpResponse:  # noqa: ASYNC109 (the library's signature)
        if isinstance(request, eureka_http.HttpRequest):
            req = request
        elif isinstance(request, str):
            req = eureka_http.HttpRequest(request)
        else:
            raise eureka_http.URLError("Invalid URL")
        if data is not None:
            req.content = data
        req.add_header("Connection", "close")
        req.add_header("Accept-Encoding", "gzip, deflate")
        try:
            async with new_client(timeout=timeout, follow_redirects=True) as client:
                response = await client.send(req._to_httpx_request())
                response.raise_for_status()
                return eureka_http.HttpResponse(response)
        except httpx.HTTPStatusError as exc:
            raise eureka_http.HTTPError(exc.request.url, exc.response.status_code, str(exc), exc.response.headers,
                                        BytesIO(exc.response.content)) from exc
        except httpx.RequestError as exc:
            raise eureka_http.URLError(str(exc)) from exc


eureka_http.set_http_client(_EurekaHttpClient())


def _on_eureka_error(error_type: str, exception: Exception) -> None:
    # A plain function: py-eureka-client never awaits an async on_error.
    log.warning("eureka error", error_type=error_type, error=repr(exception))


def redacted(url: str) -> str:
    """The URL without the password in it (for logs)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


T = TypeVar("T")


class RoundRobin:
    """Each app's instances taken in turn, one cursor per app: the discovery client's and the gateway's choice."""

    def __init__(self) -> None:
        self._cursors: dict[str, itertools.count[int]] = {}

    def pick(self, app: str, instances: Sequence[T]) -> T:
        if len(instances) == 1:
            return instances[0]
        cursor = self._cursors.get(app)
        if cursor is None:
            cursor = self._cursors[app] = itertools.count()
        return instances[next(cursor) % len(instances)]


class RegistryClient:
    """One per process: registers this instance (if it has a port) and keeps a local copy of the registry.

    AUTH-SERVICE is never looked up in the registry: its instances are the configured AUTH_URLS. Anyone who
    can register could otherwise become the fleet's authority (its keys, its forward-auth answers).
    """

    def __init__(self, settings: ServiceSettings, register: bool = True, discover: bool = True) -> None:
        self.settings = settings
        self.enabled = bool(settings.eureka_server_url)
        self._register = register
        self._discover = discover
        self._client: EurekaClient | None = None
        self._turns = RoundRobin()
        self._static: dict[str, list[Instance]] = {}
        self.set_static(AUTH_APP, list(settings.auth_urls))

    async def start(self) -> None:
        if not self.enabled:
            return
        s = self.settings
        # In a container INSTANCE_HOST is left empty: advertise the container's own address.
        host = s.instance_host or socket.gethostbyname(socket.gethostname())
        base = f"http://{host}:{s.port}"
        self._client = EurekaClient(
            eureka_server=s.eureka_server_url,
            app_name=s.app_name,
            instance_host=host,
            instance_ip=host,
            instance_port=s.port,
            renewal_interval_in_secs=s.eureka_renewal_interval_secs,
            duration_in_secs=s.eureka_lease_duration_secs,
            home_page_url=f"{base}/",
            status_page_url=f"{base}/health",
            health_check_url=f"{base}/health",
            should_register=self._register,
            should_discover=self._discover,
            on_error=_on_eureka_error,
        )
        harden_eureka_client(self._client)
        await self._client.start()
        log.info("registry client started", app=s.app_name, port=s.port, registry=redacted(s.eureka_server_url))

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        await stop_eureka_client(client, deregister=self._register)
        log.info("registry client stopped", app=self.settings.app_name)

    def set_static(self, app_name: str, base_urls: list[str]) -> None:
        """Fixed instances for an app (tests without a registry, or a pinned dependency)."""
        self._static[app_name.upper()] = [Instance(u, u.rstrip("/")) for u in base_urls]

    def instances(self, app_name: str) -> list[Instance]:
        """The UP instances of an app, as this process last saw them."""
        name = app_name.upper()
        if name in self._static:
            return self._static[name]
        if self._client is None or not self._discover:
            return []
        applications = self._client.applications
        app = applications.get_application(name) if applications is not None else None
        if app is None:
            return []
        found = []
        for inst in app.up_instances:
            port = inst.port.port if inst.port and inst.port.enabled else None
            if port is None:
                continue
            registered = int(inst.leaseInfo.registrationTimestamp or 0) if inst.leaseInfo else 0
            found.append(Instance(inst.instanceId, f"http://{inst.ipAddr or inst.hostName}:{port}", registered))
        return found

    def choose(self, app_name: str, exclude: frozenset[str] = frozenset()) -> Instance:
        """Round-robin over the UP instances; 503 when there is none."""
        candidates = [i for i in self.instances(app_name) if i.instance_id not in exclude]
        if not candidates and app_name.upper() == AUTH_APP and not self.settings.auth_urls:
            raise ServiceUnavailable("AUTH_URLS is not configured: auth_service is never looked up in the registry.",
                                     service=AUTH_APP)
        if not candidates:
            raise ServiceUnavailable(f"No UP instance of {app_name.upper()} is registered.",
                                     service=app_name.upper())
        return self._turns.pick(app_name.upper(), candidates)
