"""The registry against the real py-eureka-client, served by a real `python -m registry` process.

Also pins py-eureka-client 0.13.3's stop() bug (a fired heartbeat thread re-registers the
instance) and the guard that keeps a stopped client deregistered.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

import httpx
import pytest
from py_eureka_client.eureka_client import EurekaClient, WalkNodeException

from customer_cli.processes import free_port
from registry.app import create_app
from registry.settings import RegistrySettings
from shared.registry_client import harden_eureka_client, stop_eureka_client

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "eureka", "registry-test-password"
INTERVAL = 1  # heartbeat / registry refresh interval of the clients under test, in seconds
DURATION = 3  # their lease duration

# A client in a child process that we SIGKILL: registers with a 2 s lease, then heartbeats until killed.
DEAD_INSTANCE_SCRIPT = """
import asyncio, sys
from py_eureka_client.eureka_client import EurekaClient

async def main() -> None:
    client = EurekaClient(eureka_server=sys.argv[1], app_name=sys.argv[2], instance_host="127.0.0.1",
                          instance_ip="127.0.0.1", instance_port=int(sys.argv[3]), should_discover=False,
                          renewal_interval_in_secs=1, duration_in_secs=2)
    await client.start()
    await asyncio.sleep(3600)

asyncio.run(main())
"""




@pytest.fixture(scope="module")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a `python -m registry` subprocess (evicting every second), its credentials in it as
    py-eureka-client takes them (http://user:password@host:port)."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "EVICTION_INTERVAL_SECS": "1", "LOG_JSON": "false",
           "EUREKA_USERNAME": USER, "EUREKA_PASSWORD": PASSWORD}
    log_path = tmp_path_factory.mktemp("registry") / "registry.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "registry"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                pytest.fail(f"registry exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"registry did not answer /health:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def hello_port() -> Iterator[int]:
    """A tiny HTTP endpoint that registered instances point at, so that do_service has a target."""

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"hello"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
async def http(registry_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"{registry_url}/eureka", timeout=5) as client:
        yield client


def eureka_client(registry_url: str, **options: Any) -> EurekaClient:
    client = EurekaClient(
        eureka_server=f"{registry_url}/eureka",
        instance_host="127.0.0.1",
        instance_ip="127.0.0.1",
        renewal_interval_in_secs=INTERVAL,
        duration_in_secs=DURATION,
        **options,
    )
    return harden_eureka_client(client)


def registering_client(registry_url: str, app: str, port: int) -> EurekaClient:
    # should_discover=False: each heartbeat iteration is one PUT, so its timing is observable.
    return eureka_client(registry_url, app_name=app, instance_port=port, should_discover=False)


def discovering_client(registry_url: str) -> EurekaClient:
    return eureka_client(registry_url, should_register=False)


async def stop_with_guard(client: EurekaClient) -> None:
    """The project's guarded stop (shared.registry_client), which every service uses."""
    await stop_eureka_client(client)


def instance_id(app: str, port: int) -> str:
    return f"127.0.0.1:{app.lower()}:{port}"


async def wait_until(condition: Callable[[], Awaitable[bool]], within: float, poll: float = 0.1) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(poll)
    return await condition()


async def registered_statuses(http: httpx.AsyncClient, app: str) -> dict[str, str]:
    response = await http.get(f"/apps/{app}", headers={"Accept": "application/json"})
    if response.status_code == 404:
        return {}
    response.raise_for_status()
    return {item["instanceId"]: item["status"] for item in response.json()["application"]["instance"]}


async def is_registered_up(http: httpx.AsyncClient, app: str, port: int) -> bool:
    return (await registered_statuses(http, app)).get(instance_id(app, port)) == "UP"


async def wait_for_heartbeat(http: httpx.AsyncClient, app: str, port: int) -> None:
    """Return right after the registry saw a heartbeat: the client's thread then sleeps one interval."""
    url = f"/apps/{app}/{quote(instance_id(app, port))}"

    async def last_renewal() -> str:
        response = await http.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        return str(response.json()["instance"]["leaseInfo"]["lastRenewalTimestamp"])

    before = await last_renewal()

    async def renewed() -> bool:
        return await last_renewal() != before

    assert await wait_until(renewed, within=3 * INTERVAL, poll=0.02), "no heartbeat arrived"


@dataclass
class Discovery:
    """An instance registered with the real client and a real client discovering it, both started."""

    instance: EurekaClient
    discoverer: EurekaClient
    instance_stopped: bool = False

    async def stop_instance(self) -> None:
        await stop_with_guard(self.instance)
        self.instance_stopped = True


@asynccontextmanager
async def discovery(registry_url: str, app: str, port: int) -> AsyncIterator[Discovery]:
    found = Discovery(registering_client(registry_url, app, port), discovering_client(registry_url))
    await found.instance.start()
    await found.discoverer.start()
    try:
        yield found
    finally:
        if not found.instance_stopped:
            await stop_with_guard(found.instance)
        await stop_with_guard(found.discoverer)


def up_instance_ids(client: EurekaClient, app: str) -> list[str]:
    return [instance.instanceId for instance in client.applications.get_application(app).up_instances]


# ---------- discovery with the real client ----------


async def test_registered_instance_is_discovered_up_and_callable(
    registry_url: str, http: httpx.AsyncClient, hello_port: int
) -> None:
    app = "REG-DISCOVERY"
    async with discovery(registry_url, app, hello_port) as found:
        discoverer = found.discoverer
        assert up_instance_ids(discoverer, app) == [instance_id(app, hello_port)]
        assert await discoverer.do_service(app, "/hello") == "hello"
        called: list[str] = []

        def walker(url: str) -> str:
            called.append(url)
            return "walked"

        assert await discoverer.walk_nodes(app, "/hello", walker=walker) == "walked"
        assert called == [f"http://127.0.0.1:{hello_port}/hello"]

        # A second instance reaches the discoverer through the delta, and the client's own
        # hash of its merged copy matches the registry's (so it does not fall back to full fetches).
        second_port = free_port()
        second = registering_client(registry_url, app, second_port)
        await second.start()
        expected = sorted([instance_id(app, hello_port), instance_id(app, second_port)])

        async def sees_both() -> bool:
            return sorted(up_instance_ids(discoverer, app)) == expected

        assert await wait_until(sees_both, within=4 * INTERVAL)
        full = ElementTree.fromstring((await http.get("/apps/")).text)
        assert discoverer._EurekaClient__get_applications_hash() == full.findtext("apps__hashcode")  # type: ignore[attr-defined]

        await stop_with_guard(second)

        async def sees_first_only() -> bool:
            return up_instance_ids(discoverer, app) == [instance_id(app, hello_port)]

        assert await wait_until(sees_first_only, within=4 * INTERVAL)


async def test_stopped_client_disappears_for_discoverers(
    registry_url: str, http: httpx.AsyncClient, hello_port: int
) -> None:
    app = "REG-STOP"
    async with discovery(registry_url, app, hello_port) as found:
        discoverer = found.discoverer
        assert up_instance_ids(discoverer, app) == [instance_id(app, hello_port)]
        await found.stop_instance()
        assert await registered_statuses(http, app) == {}

        async def gone_for_discoverer() -> bool:
            return up_instance_ids(discoverer, app) == []

        assert await wait_until(gone_for_discoverer, within=4 * INTERVAL)
        with pytest.raises(WalkNodeException):
            await discoverer.do_service(app, "/hello")


# ---------- py-eureka-client's stop() bug and the guard ----------


async def test_stopped_client_with_guard_stays_deregistered(registry_url: str, http: httpx.AsyncClient) -> None:
    app, port = "REG-GUARDED", free_port()
    client = registering_client(registry_url, app, port)
    await client.start()
    await wait_for_heartbeat(http, app, port)  # the heartbeat timer has fired: stop() can't end its thread

    await stop_with_guard(client)

    assert await registered_statuses(http, app) == {}
    observed_until = time.monotonic() + 3.5 * INTERVAL
    while time.monotonic() < observed_until:
        assert await registered_statuses(http, app) == {}, "a guarded, stopped client registered again"
        await asyncio.sleep(0.1)


async def test_stopped_client_without_guard_registers_again(registry_url: str, http: httpx.AsyncClient) -> None:
    """Documents the bug the guard exists for: if this starts failing, the client was fixed."""
    app, port = "REG-UNGUARDED", free_port()
    client = registering_client(registry_url, app, port)
    await client.start()
    await wait_for_heartbeat(http, app, port)

    await client.stop()
    try:
        assert await registered_statuses(http, app) == {}
        assert await wait_until(lambda: is_registered_up(http, app, port), within=3 * INTERVAL), (
            "the leaked heartbeat thread did not re-register the stopped instance"
        )
    finally:
        # A heartbeat in flight may still register it once more; its 3 s lease then expires.
        client._EurekaClient__should_register = False  # type: ignore[attr-defined]
        await http.delete(f"/apps/{app}/{quote(instance_id(app, port))}")


# ---------- lease expiry ----------


async def test_killed_instance_is_evicted_when_its_lease_expires(registry_url: str, http: httpx.AsyncClient) -> None:
    app, port = "REG-KILLED", free_port()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DEAD_INSTANCE_SCRIPT, f"{registry_url}/eureka", app, str(port), cwd=REPO_ROOT
    )
    try:
        assert await wait_until(lambda: is_registered_up(http, app, port), within=10)
        # Heartbeats keep it registered past its 2 s lease...
        await asyncio.sleep(2.5)
        assert await is_registered_up(http, app, port)
        await wait_for_heartbeat(http, app, port)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()

    # ...and without them it is gone within lease (2 s) + eviction interval (1 s) + slack. That it is not
    # evicted before its lease ends is the registry's unit test (test_lease_expires_after_exactly_its_duration,
    # with a clock): measured here it would be a timing assertion.
    async def gone() -> bool:
        return await registered_statuses(http, app) == {}

    assert await wait_until(gone, within=5)
    delta = (await http.get("/apps/delta", headers={"Accept": "application/json"})).json()
    actions = {
        item["instanceId"]: item["actionType"]
        for application in delta["applications"]["application"]
        for item in application["instance"]
    }
    assert actions[instance_id(app, port)] == "DELETED"


# ---------- the wire format with plain HTTP ----------


def registration(app: str, port: int, /, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "instanceId": instance_id(app, port),
        "hostName": "127.0.0.1",
        "app": app,
        "ipAddr": "127.0.0.1",
        "status": "UP",
        "overriddenstatus": "UNKNOWN",
        "port": {"$": port, "@enabled": "true"},
        "securePort": {"$": 443, "@enabled": "false"},
        "countryId": 1,
        "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
        "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90},
        "metadata": {"management.port": str(port)},
        "vipAddress": app.lower(),
        "secureVipAddress": app.lower(),
        "lastDirtyTimestamp": "1700000000000",
    }
    body.update(overrides)
    return {"instance": body}


async def test_xml_by_default_json_when_accepted(http: httpx.AsyncClient) -> None:
    app, port = "REG-WIRE", free_port()
    assert (await http.post(f"/apps/{app}", json=registration(app, port))).status_code == 204
    quoted_id = quote(instance_id(app, port))  # ':' travels as %3A, as py-eureka-client sends it
    try:
        xml = await http.get("/apps/")
        assert xml.headers["content-type"].startswith("application/xml")
        root = ElementTree.fromstring(xml.text)
        assert root.tag == "applications"
        (node,) = [n for n in root.iter("instance") if n.findtext("app") == app]
        assert node.find("port").attrib == {"enabled": "true"}  # type: ignore[union-attr]
        assert node.find("dataCenterInfo").attrib["class"].endswith("DefaultDataCenterInfo")  # type: ignore[union-attr]
        assert node.findtext("actionType") == "ADDED"
        int(node.findtext("leaseInfo/registrationTimestamp") or "x")

        as_json = (await http.get("/apps", headers={"Accept": "application/json"})).json()["applications"]
        assert int(as_json["versions__delta"]) >= 1
        assert "UP_" in as_json["apps__hashcode"]
        (application,) = [a for a in as_json["application"] if a["name"] == app]
        assert application["instance"][0]["port"] == {"$": port, "@enabled": "true"}

        one = await http.get(f"/apps/{app.lower()}/{quoted_id}", headers={"Accept": "application/json"})
        assert one.json()["instance"]["instanceId"] == instance_id(app, port)
        assert ElementTree.fromstring((await http.get(f"/instances/{quoted_id}")).text).tag == "instance"
        assert ElementTree.fromstring((await http.get(f"/apps/{app}")).text).findtext("name") == app
        vip = ElementTree.fromstring((await http.get(f"/vips/{app.lower()}")).text)
        assert [n.findtext("name") for n in vip.iter("application")] == [app]
        assert (await http.get("/apps/REG-NOBODY")).status_code == 404

        # Heartbeat, then an operator's OUT_OF_SERVICE override and its removal.
        beat = await http.put(
            f"/apps/{app}/{quoted_id}", params={"status": "UP", "lastDirtyTimestamp": "1700000000000"}
        )
        assert beat.status_code == 200
        assert (
            await http.put(f"/apps/{app}/{quoted_id}/status", params={"value": "OUT_OF_SERVICE"})
        ).status_code == 200
        assert (await registered_statuses(http, app))[instance_id(app, port)] == "OUT_OF_SERVICE"
        assert (await http.delete(f"/apps/{app}/{quoted_id}/status", params={"value": "UP"})).status_code == 200
        assert (await registered_statuses(http, app))[instance_id(app, port)] == "UP"
    finally:
        assert (await http.delete(f"/apps/{app}/{quoted_id}")).status_code == 200
    delta = ElementTree.fromstring((await http.get("/apps/delta")).text)
    actions = {n.findtext("instanceId"): n.findtext("actionType") for n in delta.iter("instance")}
    assert actions[instance_id(app, port)] == "DELETED"
    assert (await http.delete(f"/apps/{app}/{quoted_id}")).status_code == 404


@pytest.mark.parametrize("missing", ["instanceId", "hostName", "ipAddr", "app", "dataCenterInfo"])
async def test_register_without_a_required_field_is_400(http: httpx.AsyncClient, missing: str) -> None:
    body = registration("REG-BAD", 1)
    del body["instance"][missing]

    response = await http.post("/apps/REG-BAD", json=body)

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert any(missing in error["field"] for error in response.json()["errors"])


@pytest.mark.parametrize(
    "overrides",
    [
        {"dataCenterInfo": {"@class": "x", "name": ""}},
        {"hostName": "  "},
        {"app": "OTHER-APP"},
        {"metadata": {"not a tag": "x"}},
    ],
    ids=["blank-data-center-name", "blank-host", "app-differs-from-path", "bad-metadata-key"],
)
async def test_register_with_an_invalid_field_is_400(http: httpx.AsyncClient, overrides: dict[str, Any]) -> None:
    response = await http.post("/apps/REG-BAD", json=registration("REG-BAD", 1, **overrides))

    assert response.status_code == 400
    assert response.json()["status"] == 400


async def test_register_compares_app_case_insensitively(http: httpx.AsyncClient) -> None:
    app, port = "REG-CASE", free_port()
    response = await http.post(f"/apps/{app.lower()}", json=registration(app.lower(), port))
    assert response.status_code == 204
    try:
        assert instance_id(app, port) in await registered_statuses(http, app)
    finally:
        await http.delete(f"/apps/{app}/{quote(instance_id(app, port))}")


async def test_register_with_non_json_body_is_400(http: httpx.AsyncClient) -> None:
    response = await http.post("/apps/REG-BAD", content=b"<instance/>", headers={"Content-Type": "application/xml"})
    assert response.status_code == 400


async def test_heartbeat_for_unknown_or_newer_instance_is_404(http: httpx.AsyncClient) -> None:
    unknown = await http.put("/apps/REG-NOBODY/127.0.0.1%3Areg-nobody%3A1", params={"status": "UP"})
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"

    app, port = "REG-DIRTY", free_port()
    await http.post(f"/apps/{app}", json=registration(app, port, lastDirtyTimestamp="1700000000000"))
    quoted_id = quote(instance_id(app, port))
    try:
        newer = await http.put(f"/apps/{app}/{quoted_id}", params={"lastDirtyTimestamp": "1700000000001"})
        assert newer.status_code == 404  # the client must register again
        garbage = await http.put(f"/apps/{app}/{quoted_id}", params={"lastDirtyTimestamp": "soon"})
        assert garbage.status_code == 400
    finally:
        await http.delete(f"/apps/{app}/{quoted_id}")


async def test_health(registry_url: str) -> None:
    async with httpx.AsyncClient(base_url=registry_url) as client:
        for path in ("/health", "/actuator/health"):
            response = await client.get(path)
            assert response.json() == {"status": "UP"}


async def test_lifespan_runs_the_eviction_task_and_cancels_it_on_shutdown() -> None:
    app = create_app(RegistrySettings(eviction_interval_secs=0.05, eureka_password=PASSWORD))

    def eviction_tasks() -> list[asyncio.Task[Any]]:
        return [task for task in asyncio.all_tasks() if task.get_name() == "registry-eviction"]

    async with app.router.lifespan_context(app):
        await asyncio.sleep(0.12)
        (task,) = eviction_tasks()
        assert not task.done()
    assert task.cancelled()
    assert eviction_tasks() == []


def test_the_registry_refuses_to_run_without_credentials() -> None:
    with pytest.raises(ValueError, match="EUREKA_PASSWORD"):
        RegistrySettings(eureka_password="")
    with pytest.raises(ValueError, match="letters, digits"):
        RegistrySettings(eureka_password="has:colon@and-at")  # py-eureka-client could not carry it in its URL


async def test_an_anonymous_or_wrong_caller_can_neither_register_nor_read(registry_url: str) -> None:
    """The attack of issue 15: an anonymous POST /eureka/apps/AUTH-SERVICE registered a rogue instance."""
    bare = registry_url.replace(f"{USER}:{PASSWORD}@", "")
    app, port = "AUTH-SERVICE", free_port()
    for auth in (None, (USER, "guessed"), ("admin", PASSWORD)):
        async with httpx.AsyncClient(base_url=f"{bare}/eureka", auth=auth, timeout=5) as stranger:
            refused = await stranger.post(f"/apps/{app}", json=registration(app, port))
            assert refused.status_code == 401, refused.text
            assert refused.headers["www-authenticate"].startswith("Basic")
            for method, path in (("PUT", f"/apps/{app}/x"), ("DELETE", f"/apps/{app}/x"), ("GET", "/apps/"),
                                 ("GET", "/apps/delta"), ("GET", f"/apps/{app}"), ("PUT", f"/apps/{app}/x/status")):
                assert (await stranger.request(method, path)).status_code == 401, (method, path)
    async with httpx.AsyncClient(base_url=f"{registry_url}/eureka", timeout=5) as member:
        assert instance_id(app, port) not in await registered_statuses(member, app)
