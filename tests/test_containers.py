"""The container path, checked statically (no Docker engine runs here); built and run where one does."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from ipaddress import ip_network

import pytest
import yaml

from shared.forwarded import parse_networks
from tests.fleet import ROOT, SERVICES

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DESIGN_SERVICES = list(SERVICES)  # every package of the design, gateway included


def _command_module(service: dict) -> list[str]:
    command = " ".join(service["command"])
    return re.findall(r"python -m ([\w.]+)", command)


def test_every_service_of_the_design_is_in_compose() -> None:
    services = COMPOSE["services"]
    for name in DESIGN_SERVICES:
        assert name in services, name
        service = services[name]
        assert "healthcheck" in service, name
        env = service["environment"]
        assert env["EUREKA_SERVER_URL"] == "http://eureka:8761/eureka", name
        if name != "gateway":
            assert env["DATABASE_URL"].startswith("postgresql+asyncpg://"), name
            assert env["DATABASE_URL"].endswith(f"/{name}"), name
        assert service["depends_on"], name
        assert all(dep.get("condition") == "service_healthy" for dep in service["depends_on"].values()), name


def test_real_eureka_server_and_postgres() -> None:
    services = COMPOSE["services"]
    assert services["eureka"]["image"].startswith("steeltoeoss/eureka-server")
    assert "healthcheck" in services["eureka"] and "healthcheck" in services["postgres"]
    init = (ROOT / "deploy" / "postgres-init.sql").read_text()
    for name in DESIGN_SERVICES:
        if name != "gateway":
            assert f"CREATE DATABASE {name};" in init


def test_only_the_gateway_publishes_a_port_and_nothing_is_pinned() -> None:
    for name, service in COMPOSE["services"].items():
        if name != "gateway":
            assert "ports" not in service, f"{name} publishes a port"
        assert "container_name" not in service, f"{name} has a fixed name (breaks --scale)"
    assert COMPOSE["services"]["gateway"]["ports"]


def test_auth_service_trusts_the_gateways_network_and_nothing_else_trusts_anyone() -> None:
    services = COMPOSE["services"]
    (subnet,) = [ip_network(entry["subnet"]) for entry in COMPOSE["networks"]["default"]["ipam"]["config"]]
    # The gateway is on the default network (where the subnet applies), so its address is in it.
    assert "networks" not in services["gateway"] and "networks" not in services["auth_service"]
    assert parse_networks(services["auth_service"]["environment"]["TRUSTED_PROXIES"]) == (subnet,)
    for name, service in services.items():
        if name != "auth_service":
            assert "TRUSTED_PROXIES" not in service.get("environment", {}), name


def test_every_command_names_a_module_that_imports() -> None:
    for name, service in COMPOSE["services"].items():
        if "command" not in service:
            continue
        modules = _command_module(service)
        assert modules, name
        for module in modules:
            assert importlib.util.find_spec(module) is not None, f"{name}: {module} does not import"


def test_dockerfile_is_multistage_and_non_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, re.M)) >= 2
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert (ROOT / ".dockerignore").exists()


def _docker_engine() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


@pytest.mark.skipif(not _docker_engine(),
                    reason="no Docker engine on this machine: the compose file is checked statically")
def test_image_builds() -> None:
    result = subprocess.run(["docker", "build", "-t", "customer-service:test", str(ROOT)], capture_output=True,
                            text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
