"""deploy/kubernetes, checked without a cluster (none runs here): rendered as `kustomize build` renders it, every
manifest validated against Kubernetes' own schemas (kubernetes-validate), and the invariants the compose file
keeps: one image, each service on its port, probes on /ready and /health, env names the settings classes read, each
service on the bus as its own user. Where kubectl is installed, its built-in kustomize must render exactly what the
renderer here does.
"""

from __future__ import annotations

import base64
import importlib
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import AliasChoices

from customer_cli.fleet import COMPONENTS, SERVICES
from customer_cli.nats import CONTAINER_CONFIG, NATS_USERS, password_variable
from tests.fleet import ROOT

BASE = ROOT / "deploy" / "kubernetes"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
KUBERNETES_VERSION = kubernetes_validate.utils.latest_version()
SECRET_KEYS = [line.split("=", 1)[0] for line in (BASE / "secrets.env.example").read_text().splitlines()
               if line and not line.startswith("#")]
REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
CONFIG = "customer-service-config"  # the fleet's settings (the bus's configuration is the ConfigMap nats-config)


def _env_file(path: Path) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {name: value for name, value in pairs}


def render(base: Path) -> list[dict[str, Any]]:
    """What `kustomize build base` gives for this kustomization: its resources, the Secret of its secretGenerator and
    the ConfigMaps of its configMapGenerator (no name hash), the image transformer. Anything else in the
    kustomization fails here, so this stays true."""
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "secretGenerator", "configMapGenerator",
                                  "generatorOptions", "images"}
    assert kustomization["generatorOptions"] == {"disableNameSuffixHash": True}
    documents = [doc for resource in kustomization["resources"]
                 for doc in yaml.safe_load_all((base / resource).read_text()) if doc]
    for generator in kustomization["secretGenerator"]:
        assert set(generator) == {"name", "envs"}
        values = {name: value for env in generator["envs"] for name, value in _env_file(base / env).items()}
        documents.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": generator["name"]},
                          "type": "Opaque",
                          "data": {name: base64.b64encode(value.encode()).decode() for name, value in values.items()}})
    for generator in kustomization.get("configMapGenerator", []):
        assert set(generator) == {"name", "files"} and all("=" not in file for file in generator["files"])
        documents.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
                          "data": {file: (base / file).read_text() for file in generator["files"]}})
    images = {image["name"]: f"{image['newName']}:{image['newTag']}" for image in kustomization["images"]}
    for doc in documents:
        for container in _containers(doc, kinds=("Deployment", "StatefulSet")):
            name = container["image"].rsplit(":", 1)[0]
            container["image"] = images.get(name, container["image"])
    return documents


def _containers(doc: dict[str, Any], kinds: tuple[str, ...] = ("Deployment",)) -> list[dict[str, Any]]:
    """The containers of a workload of one of `kinds` (the services' Deployments unless told)."""
    if doc["kind"] not in kinds:
        return []
    return list(doc["spec"]["template"]["spec"]["containers"])


def _by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == kind}


def _package(deployment: dict[str, Any]) -> str:
    (container,) = _containers(deployment)
    command = container["command"]
    assert command[:2] == ["python", "-m"] and len(command) == 3, command
    return str(command[2])


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A copy of the base with a secrets.env written as its README says (random values of our own)."""
    copy = tmp_path / "kubernetes"
    shutil.copytree(BASE, copy, ignore=shutil.ignore_patterns("secrets.env"))
    (copy / "secrets.env").write_text("".join(f"{key}={secrets.token_hex(24)}\n" for key in SECRET_KEYS))
    return copy


@pytest.fixture
def rendered(base: Path) -> list[dict[str, Any]]:
    return render(base)


def test_every_rendered_manifest_is_valid_kubernetes(rendered: list[dict[str, Any]]) -> None:
    assert len(rendered) > 10
    for doc in rendered:
        # strict: a field the schema does not know (a typo, a wrong level) is an error, not ignored.
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl here: the renderer above stands alone")
def test_kubectl_kustomize_renders_the_same(base: Path, rendered: list[dict[str, Any]]) -> None:
    built = subprocess.run(["kubectl", "kustomize", str(base)], capture_output=True, text=True, timeout=120,
                           check=True).stdout
    key = lambda doc: (doc["kind"], doc["metadata"]["name"])  # noqa: E731
    assert sorted((d for d in yaml.safe_load_all(built) if d), key=key) == sorted(rendered, key=key)


def test_the_base_does_not_render_without_the_users_secrets() -> None:
    """No usable secret is published: the Secret's values are the user's own file, absent from the repository."""
    assert not (BASE / "secrets.env").exists() or _git_ignored(BASE / "secrets.env")
    assert _git_ignored(BASE / "secrets.env")
    assert all(value == "" for value in _env_file(BASE / "secrets.env.example").values())
    for resource in yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]:
        kinds = {doc["kind"] for doc in yaml.safe_load_all((BASE / resource).read_text()) if doc}
        assert "Secret" not in kinds, resource


def _git_ignored(path: Path) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT, check=False).returncode == 0


def test_every_service_is_a_deployment_of_the_one_image_with_a_service_and_probes(
        rendered: list[dict[str, Any]]) -> None:
    deployments, services = _by_kind(rendered, "Deployment"), _by_kind(rendered, "Service")
    assert sorted(_package(d) for d in deployments.values()) == sorted(SERVICES)
    images = {c["image"] for d in deployments.values() for c in _containers(d)}
    assert images == {"customer-service:latest"}, images
    for name, deployment in deployments.items():
        package = _package(deployment)
        (container,) = _containers(deployment)
        env = {e["name"]: e.get("value") for e in container["env"]}
        port = COMPONENTS[package].port
        # The port the settings class defaults to, the one compose gives it, the one the pod declares.
        assert env["PORT"] == str(port) == COMPOSE["services"][package]["environment"]["PORT"], package
        assert container["ports"] == [{"name": "http", "containerPort": port}], package
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}, package
        assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}, package
        assert set(container["resources"]["requests"]) == {"cpu", "memory"}, package
        assert deployment["spec"]["replicas"] >= 2, f"{package}: stateless, and the orchestrator shares by lease"
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        service = services[name]
        assert service["spec"]["selector"] == selector and service["spec"]["type"] == "ClusterIP"
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


def test_only_the_gateway_is_reached_from_outside(rendered: list[dict[str, Any]]) -> None:
    (ingress,) = _by_kind(rendered, "Ingress").values()
    backends = {path["backend"]["service"]["name"] for rule in ingress["spec"]["rules"]
                for path in rule["http"]["paths"]}
    assert backends == {"gateway"}
    for doc in rendered:
        assert doc["kind"] not in ("Route", "Gateway", "HTTPRoute"), doc["kind"]
        if doc["kind"] == "Service":
            assert doc["spec"]["type"] == "ClusterIP", doc["metadata"]["name"]
        for container in _containers(doc):
            assert all("hostPort" not in port for port in container["ports"])
        if doc["kind"] == "Deployment":
            assert not doc["spec"]["template"]["spec"].get("hostNetwork")


def _setting_names(package: str) -> set[str]:
    settings_class = importlib.import_module(f"{package}.settings").Settings
    names = set()
    for name, info in settings_class.model_fields.items():
        names.add(name.upper())
        if isinstance(info.validation_alias, AliasChoices):
            names |= {str(choice).upper() for choice in info.validation_alias.choices}
    return names


def test_env_names_are_the_settings_names_or_parts_of_them(rendered: list[dict[str, Any]]) -> None:
    """Each variable is read by the service's settings class, or is a part (PG_*, EUREKA_*) that a later variable
    is built from with $(NAME); every part is defined before its use and every key it takes exists."""
    config = _by_kind(rendered, "ConfigMap")[CONFIG]
    (secret,) = _by_kind(rendered, "Secret").values()
    for deployment in _by_kind(rendered, "Deployment").values():
        package = _package(deployment)
        settings = _setting_names(package)
        (container,) = _containers(deployment)
        defined: list[str] = []
        used: set[str] = set()
        for entry in container["env"]:
            for reference in REFERENCE.findall(entry.get("value", "")):
                assert reference in defined, f"{package}: $({reference}) before its definition"
                used.add(reference)
            source = entry.get("valueFrom", {})
            if "configMapKeyRef" in source:
                assert source["configMapKeyRef"]["key"] in config["data"], (package, entry)
            if "secretKeyRef" in source:
                assert source["secretKeyRef"]["key"] in secret["data"], (package, entry)
            defined.append(entry["name"])
        assert len(defined) == len(set(defined)), f"{package}: a variable set twice"
        parts = set(defined) - settings
        assert parts == used - settings, f"{package}: not a setting and not used: {parts - used}"


def _environment(deployment: dict[str, Any], config: dict[str, str], secret: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet makes it: keys looked up, $(NAME) expanded, the pod's address."""
    (container,) = _containers(deployment)
    env: dict[str, str] = {}
    for entry in container["env"]:
        source = entry.get("valueFrom", {})
        if "configMapKeyRef" in source:
            value = config[source["configMapKeyRef"]["key"]]
        elif "secretKeyRef" in source:
            value = secret[source["secretKeyRef"]["key"]]
        elif "fieldRef" in source:
            value = {"status.podIP": "10.244.1.7"}[source["fieldRef"]["fieldPath"]]
        else:
            value = REFERENCE.sub(lambda match: env[match.group(1)], entry["value"])
        env[entry["name"]] = value
    return env


def _settings(package: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patched:
        for name, value in env.items():
            patched.setenv(name, value)
        return importlib.import_module(f"{package}.settings").Settings()


def test_production_accepts_the_users_secrets_and_refuses_the_placeholders(
        base: Path, rendered: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    config = _by_kind(rendered, "ConfigMap")[CONFIG]
    assert config["data"]["ENV"] == "production"
    secret = _env_file(base / "secrets.env")
    placeholders = _env_file(BASE / "secrets.env.example")
    for deployment in _by_kind(rendered, "Deployment").values():
        package = _package(deployment)
        settings = _settings(package, _environment(deployment, config["data"], secret), monkeypatch)
        assert settings.env == "production" and settings.port == COMPONENTS[package].port
        assert settings.instance_host == "10.244.1.7" and settings.auth_urls == ("http://auth-service:8001",)
        assert settings.eureka_server_url == f"http://eureka:{secret['EUREKA_PASSWORD']}@eureka:8761/eureka"
        if COMPONENTS[package].database:
            assert settings.database_url == (f"postgresql+asyncpg://postgres:{secret['PG_PASSWORD']}@postgres:5432/"
                                             f"{package}")
        # On the bus as its own user (the user is the package's name; the gateway's is its live view's).
        assert (settings.nats_url, settings.nats_user) == ("nats://nats:4222", package), package
        assert settings.nats_password == secret[password_variable(package)], package
        # The client secret goes to the orchestrator, auth_service and (its own) the gateway; never to a participant.
        holds_secret = "SERVICE_CLIENT_SECRET" in _environment(deployment, config["data"], secret)
        assert holds_secret == type(settings).holds_service_secret, package
        with pytest.raises(ValueError, match="SERVICE_CLIENT_SECRET" if holds_secret else "EUREKA_SERVER_URL"):
            _settings(package, _environment(deployment, config["data"], placeholders), monkeypatch)


def _env_sources(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (container,) = _containers(deployment)
    return {entry["name"]: entry.get("valueFrom", {}) for entry in container["env"]}


def test_every_service_is_on_the_bus_as_its_own_user_with_its_password_from_the_secret(
        rendered: list[dict[str, Any]]) -> None:
    config = _by_kind(rendered, "ConfigMap")[CONFIG]["data"]
    keys = set()
    for deployment in _by_kind(rendered, "Deployment").values():
        package = _package(deployment)
        sources = _env_sources(deployment)
        assert sources["NATS_URL"] == {"configMapKeyRef": {"name": CONFIG, "key": "NATS_URL"}}, package
        user_key = sources["NATS_USER"]["configMapKeyRef"]
        assert user_key["name"] == CONFIG and config[user_key["key"]] == package, package
        # Never a literal value: the password is the Secret's, under the user's own key.
        assert sources["NATS_PASSWORD"] == {"secretKeyRef": {"name": "customer-service-secrets",
                                                              "key": password_variable(package)}}, package
        keys.add(password_variable(package))
    assert len(keys) == len(_by_kind(rendered, "Deployment"))
    assert {password_variable(user) for user in NATS_USERS} <= set(SECRET_KEYS)


def test_the_bus_is_a_statefulset_of_the_official_image_with_the_containers_configuration(
        rendered: list[dict[str, Any]]) -> None:
    """nats.yaml: the server compose runs (its pinned image, -js, the same nats.conf), its streams on a claimed
    volume, every user's password from the Secret, probes on the monitoring port; reached on the client port only."""
    (statefulset,) = _by_kind(rendered, "StatefulSet").values()
    (container,) = _containers(statefulset, kinds=("StatefulSet",))
    assert "${NATS_IMAGE:-" + container["image"] + "}" == COMPOSE["services"]["nats"]["image"]
    assert container["command"] == COMPOSE["services"]["nats"]["command"]
    assert container["command"][:2] == ["nats-server", "-js"] and "/etc/nats/nats.conf" in container["command"]
    config = _by_kind(rendered, "ConfigMap")["nats-config"]["data"]
    assert config == {"nats.conf": CONTAINER_CONFIG.read_text()}, "cp deploy/nats/nats.conf deploy/kubernetes/"
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts == {"config": "/etc/nats", "data": "/data"}
    (volume,) = statefulset["spec"]["template"]["spec"]["volumes"]
    assert volume == {"name": "config", "configMap": {"name": "nats-config"}}
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    env = {entry["name"]: entry.get("valueFrom", {}) for entry in container["env"]}
    for user in NATS_USERS:
        variable = password_variable(user)
        assert env[variable] == {"secretKeyRef": {"name": "customer-service-secrets", "key": variable}}, user
        assert f"${variable}" in config["nats.conf"], user
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz?js-enabled-only=true", "port": "monitor"}, probe
    assert statefulset["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    services = _by_kind(rendered, "Service")
    # The monitoring port is the probes' alone; NATS_URL names the client port of the Service.
    assert [(p["port"], p["targetPort"]) for p in services["nats"]["spec"]["ports"]] == [(4222, "client")]
    assert services["nats"]["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]
    assert services[statefulset["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    assert _by_kind(rendered, "ConfigMap")[CONFIG]["data"]["NATS_URL"] == "nats://nats:4222"
