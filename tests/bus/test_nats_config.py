"""The bus's server configuration: the committed container file is the generator's, the users are the fleet's, each
service's permissions stay in its own subjects, and every fleet hands each service its own NATS credentials."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from customer_cli import local_secrets
from customer_cli.fleet import COMPONENTS, SERVICES, PostgresServer, ServiceProcess, local_fleet, postgres_fleet
from customer_cli.nats import (
    CONTAINER_CONFIG,
    GATEWAY_USER,
    NATS_USERS,
    OPERATOR_USER,
    SERVICE_USERS,
    binary,
    container_config,
    nats_config,
    password_variable,
    permissions,
)
from shared.events import CONSUMERS, dead_letter_subject, durable_name, subject_prefixes

NATS_ENV = ("NATS_URL", "NATS_USER", "NATS_PASSWORD")


def test_the_committed_container_config_is_the_generators() -> None:
    assert CONTAINER_CONFIG.read_text() == container_config(), (
        "deploy/nats/nats.conf is stale (the catalogue's producers or consumers changed); write it again: .venv/bin/"
        "python -c 'from customer_cli import nats; nats.CONTAINER_CONFIG.write_text(nats.container_config())'")


def test_the_container_config_starts_only_with_every_password_in_the_environment(tmp_path: Path) -> None:
    variables = {password_variable(user): f"a{index}b" for index, user in enumerate(NATS_USERS)}
    assert set(variables) >= {"ORDER_SERVICE_NATS_PASSWORD", "SAGA_ORCHESTRATOR_NATS_PASSWORD",
                              "GATEWAY_NATS_PASSWORD", "OPERATOR_NATS_PASSWORD"}
    checked = subprocess.run([binary(), "-c", CONTAINER_CONFIG, "-t"], env={**os.environ, **variables},
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    del variables["OPERATOR_NATS_PASSWORD"]
    env = {name: value for name, value in os.environ.items() if not name.endswith("_NATS_PASSWORD")}
    refused = subprocess.run([binary(), "-c", CONTAINER_CONFIG, "-t"], env={**env, **variables},
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "OPERATOR_NATS_PASSWORD" in refused.stderr


def test_the_users_are_the_services_with_a_database_the_gateway_and_the_operator() -> None:
    assert set(SERVICE_USERS) == {c.package for c in COMPONENTS.values() if c.database}
    assert NATS_USERS == (*SERVICE_USERS, GATEWAY_USER, OPERATOR_USER)
    # Every service connects with its package's name: a user for each.
    assert set(SERVICES) <= set(NATS_USERS)
    with pytest.raises(ValueError, match="operator"):
        nats_config({user: "x" for user in NATS_USERS if user != OPERATOR_USER}, port=1, monitor_port=2,
                    store_dir="/tmp/x")
    assert "no_auth_user" not in container_config().replace("(there is no no_auth_user)", "")


def test_a_service_may_publish_only_its_own_subjects_and_reach_only_its_own_durables() -> None:
    for user in SERVICE_USERS:
        rules = permissions(user)
        durables = [durable_name(user, name) for name in CONSUMERS.get(user, {})]
        own = (*(prefix.removesuffix(">") for prefix in subject_prefixes(user)),
               *(dead_letter_subject(user, name) for name in CONSUMERS.get(user, {})),
               "$JS.API.INFO", "$JS.API.STREAM.INFO.", "$JS.API.STREAM.CREATE.",
               *(f"$JS.API.CONSUMER.{call}.EVENTS.{durable}" for durable in durables
                 for call in ("INFO", "CREATE", "DURABLE.CREATE", "MSG.NEXT")),
               *(f"$JS.ACK.EVENTS.{durable}." for durable in durables))
        assert all(subject.startswith(own) for subject in rules["publish"]["allow"]), (user, rules)
        assert set(subject_prefixes(user)) <= set(rules["publish"]["allow"])
        assert "deny" not in rules["publish"] and rules["subscribe"] == {"allow": [f"_INBOX_{user}.>"]}
        assert not any(s.startswith(("$JS.API.STREAM.DELETE", "$JS.API.STREAM.PURGE", "$JS.API.CONSUMER.DELETE"))
                       for s in rules["publish"]["allow"])
    assert permissions(GATEWAY_USER) == {"publish": {"deny": [">"]},
                                         "subscribe": {"allow": ["events.>", "_INBOX_gateway.>"]}}
    assert permissions(OPERATOR_USER) == {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*NATS_ENV, "SERVICE_CLIENT_SECRET", "EUREKA_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


def test_every_service_of_the_tests_fleet_gets_its_own_nats_user_and_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("NATS_URL", "nats://somewhere-else:4222")  # the tests' fleet has its own server anyway
    server = PostgresServer("postgresql://pg@127.0.0.1:1/postgres", "postgresql+asyncpg://pg@127.0.0.1:1", "_x")
    fleet = postgres_fleet(tmp_path, server, "cs_t")
    fleet.registry = ServiceProcess("registry", "registry", 8761, {}, tmp_path / "registry.log")  # not started
    assert fleet.nats is not None and fleet.nats.port != fleet.nats.monitor_port
    assert fleet.nats.directory.parent == tmp_path and not fleet.nats.alive()
    envs = {package: fleet.service_env(package, 8000) for package in SERVICES}
    for package, env in envs.items():
        assert env["NATS_URL"] == fleet.nats.url == f"nats://127.0.0.1:{fleet.nats.port}", package
        assert env["NATS_USER"] == package and env["NATS_PASSWORD"] == fleet.nats_passwords[package]
    assert envs["gateway"]["NATS_USER"] == GATEWAY_USER
    assert envs["order_service"]["NATS_PASSWORD"] != envs["payment_service"]["NATS_PASSWORD"]
    assert len({env["NATS_PASSWORD"] for env in envs.values()}) == len(envs)
    # A replica is the same user; a test may still override what one instance gets.
    assert fleet.service_env("order_service", 8001, NATS_PASSWORD="wrong")["NATS_PASSWORD"] == "wrong"
    config = fleet.bus_config(OPERATOR_USER)
    assert (config.url, config.user, config.password) == (fleet.nats.url, "operator", fleet.nats_passwords["operator"])
    assert postgres_fleet(tmp_path, server, "cs_t").nats_passwords != fleet.nats_passwords  # made per fleet


def test_the_local_fleet_runs_its_bus_beside_the_others_or_uses_the_environments(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    var = tmp_path / "var"
    local = local_fleet(var, port_offset=100)
    assert local.nats is not None
    assert (local.nats.port, local.nats.monitor_port, local.nats.directory) == (4322, 8322, var / "nats")
    made = json.loads((var / local_secrets.FILE_NAME).read_text())
    assert made["nats_passwords"] == local.nats_passwords and set(local.nats_passwords) == set(NATS_USERS)
    assert local_fleet(var).nats_passwords == local.nats_passwords  # kept across runs

    monkeypatch.setenv("NATS_URL", "nats://bus.example:4222")
    monkeypatch.setenv("NATS_USER", "fleet")
    monkeypatch.setenv("NATS_PASSWORD", "theirs")
    external = local_fleet(var)
    external.registry = ServiceProcess("registry", "registry", 8761, {}, tmp_path / "registry.log")
    assert external.nats is None
    for package in SERVICES:
        env = external.service_env(package, 8000)
        assert (env["NATS_URL"], env["NATS_USER"], env["NATS_PASSWORD"]) == ("nats://bus.example:4222", "fleet",
                                                                              "theirs")
    assert external.bus_config(OPERATOR_USER).url == "nats://bus.example:4222"


def test_an_older_secrets_file_gets_the_nats_passwords_added(tmp_path: Path) -> None:
    made = local_secrets.load_or_create(tmp_path)
    path = tmp_path / local_secrets.FILE_NAME
    older = {k: v for k, v in json.loads(path.read_text()).items() if k != "nats_passwords"}
    path.write_text(json.dumps(older))  # as a runner before the bus wrote it
    read = local_secrets.read(tmp_path)
    assert read is not None and read.service_client_secret == made.service_client_secret
    assert set(read.nats_passwords) == set(NATS_USERS) and read.nats_passwords != made.nats_passwords
    assert local_secrets.read(tmp_path) == read  # written back: the same on the next run
    # A user added later gets a password; the others keep theirs.
    partial = {**json.loads(path.read_text())}
    kept = dict(partial["nats_passwords"])
    del partial["nats_passwords"]["gateway"]
    path.write_text(json.dumps(partial))
    again = local_secrets.read(tmp_path)
    assert again is not None and {u: p for u, p in again.nats_passwords.items() if u != "gateway"} == {
        u: p for u, p in kept.items() if u != "gateway"}
    assert len(again.nats_passwords["gateway"]) == 48
