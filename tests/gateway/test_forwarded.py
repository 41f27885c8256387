"""Trusted proxies: which client a request is from (rate limits, X-Forwarded-For) and the TRUSTED_PROXIES setting."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from ipaddress import ip_network

import httpx
import pytest
from pydantic import ValidationError

from gateway.app import create_app
from gateway.routes import Route
from gateway.settings import Settings
from shared.forwarded import Forwarded, TrustedProxies, parse_networks
from tests.gateway.conftest import Instance, quiet_settings, serving


def trusting(*entries: str) -> TrustedProxies:
    return TrustedProxies(parse_networks(",".join(entries)))


# ---------------------------------------------------------------- resolving the client


def test_nobody_is_trusted_by_default_so_a_forged_header_is_ignored_and_dropped() -> None:
    assert not TrustedProxies()
    assert TrustedProxies().resolve("192.0.2.10", ["203.0.113.9"]) == Forwarded("192.0.2.10", "192.0.2.10")
    assert Settings(env="test").trusted_proxies == ()


def test_an_untrusted_peer_is_the_client_whatever_it_sends() -> None:
    proxies = trusting("10.0.0.0/8")
    assert proxies.resolve("192.0.2.10", ["203.0.113.9, 10.0.0.1"]) == Forwarded("192.0.2.10", "192.0.2.10")


def test_a_trusted_peer_names_the_client_and_the_chain_is_appended_to() -> None:
    proxies = trusting("10.0.0.5")
    assert proxies.resolve("10.0.0.5", ["203.0.113.9"]) == Forwarded("203.0.113.9", "203.0.113.9, 10.0.0.5")
    # No header: the proxy itself is the client (a health check, say).
    assert proxies.resolve("10.0.0.5", []) == Forwarded("10.0.0.5", "10.0.0.5")


def test_the_walk_skips_trusted_proxies_from_the_right_and_ignores_what_the_client_wrote() -> None:
    proxies = trusting("10.0.0.0/8", "192.0.2.1")
    # client → CDN-ish proxy 192.0.2.1 → internal LB 10.1.1.1 → gateway; "6.6.6.6" is the client's own forgery.
    found = proxies.resolve("10.1.1.1", ["6.6.6.6, 203.0.113.9", "192.0.2.1"])
    assert found == Forwarded("203.0.113.9", "6.6.6.6, 203.0.113.9, 192.0.2.1, 10.1.1.1")
    # Every address trusted: the left-most one is as far as anyone can tell.
    assert proxies.resolve("10.1.1.1", ["10.2.2.2, 192.0.2.1"]).client == "10.2.2.2"


@pytest.mark.parametrize("header, client", [
    ("203.0.113.9, not-an-ip, 10.0.0.7", "10.0.0.7"),  # ends at the last good (trusted) entry
    ("203.0.113.9, garbage", "10.0.0.1"),  # nothing good after the peer: the peer
    ("203.0.113.9:4711", "10.0.0.1"),  # ports are not addresses
    ("203.0.113.9,,10.0.0.7", "10.0.0.7"),
    ("", "10.0.0.1"),
    (" 203.0.113.9 ,10.0.0.7 ", "203.0.113.9"),  # blanks around entries are fine
])
def test_a_malformed_entry_ends_the_walk_at_the_last_good_one(header: str, client: str) -> None:
    assert trusting("10.0.0.0/8").resolve("10.0.0.1", [header]).client == client


def test_ipv6_and_ipv4_mapped_addresses() -> None:
    proxies = trusting("2001:db8::/32", "10.0.0.0/8")
    assert proxies.resolve("2001:db8::1", ["2001:DB8:0:0::42, 2001:db8::2"]).client == "2001:db8::42"
    assert proxies.resolve("2001:db8::1", ["2001:db9::7"]).client == "2001:db9::7"
    # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; they still match IPv4 networks.
    assert proxies.resolve("::ffff:10.0.0.1", ["198.51.100.4"]).client == "198.51.100.4"


# ---------------------------------------------------------------- the setting


def test_setting_takes_addresses_and_cidr_networks_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTED_PROXIES", " 10.0.0.0/8, 192.0.2.7 ,2001:db8::/32,")
    settings = Settings(env="test")
    assert settings.trusted_proxies == (ip_network("10.0.0.0/8"), ip_network("192.0.2.7/32"),
                                        ip_network("2001:db8::/32"))
    monkeypatch.setenv("TRUSTED_PROXIES", "")
    assert Settings(env="test").trusted_proxies == ()


@pytest.mark.parametrize("value, named", [
    ("10.0.0.0/8, proxy.example", "'proxy.example'"),
    ("10.0.0.300", "'10.0.0.300'"),
    ("10.0.0.0/33", "'10.0.0.0/33'"),
    ("10.0.0.1/8", "host bits set"),  # a typo more likely than a wish to trust all of 10/8
])
def test_a_malformed_setting_is_refused_naming_the_entry(monkeypatch: pytest.MonkeyPatch, value: str,
                                                         named: str) -> None:
    monkeypatch.setenv("TRUSTED_PROXIES", value)
    with pytest.raises(ValidationError) as refused:
        Settings(env="test")
    assert "TRUSTED_PROXIES" in str(refused.value) and named in str(refused.value)


def test_the_gateway_does_not_start_with_a_malformed_setting() -> None:
    env = {**os.environ, "TRUSTED_PROXIES": "10.0.0.0/8, not-an-address", "EUREKA_SERVER_URL": "", "ENV": "test",
           "PORT": "1"}
    done = subprocess.run([sys.executable, "-m", "gateway"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "TRUSTED_PROXIES: 'not-an-address' is not an IP address or CIDR network" in done.stderr


# ---------------------------------------------------------------- through a gateway (clients come from 127.0.0.1)


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[tuple[Instance, str]]:
    instance = Instance("u")
    async with serving(instance.app()) as server:
        yield instance, server.url


async def statuses_and_forwarded_for(upstream: tuple[Instance, str], trusted: Sequence[str],
                                     headers: list[dict[str, str]]) -> tuple[list[int], list[str]]:
    """One request per header set through a gateway whose address bucket holds 2; what the service saw."""
    instance, url = upstream
    instance.calls.clear()
    settings = quiet_settings(
        routes=[Route(prefix="/api/open", app="OPEN-SERVICE", public=True)],
        static_instances={"OPEN-SERVICE": [url]},
        rate_limit_address_rps=0.01, rate_limit_address_burst=2,
        trusted_proxies=list(trusted),
    )
    async with serving(create_app(settings)) as gateway, httpx.AsyncClient(base_url=gateway.url) as client:
        statuses = [(await client.get("/api/open/x", headers=sent)).status_code for sent in headers]
    return statuses, [seen["x-forwarded-for"] for _, _, seen in instance.calls]


async def test_untrusted_peer_with_forged_headers_is_limited_by_its_own_address(
    upstream: tuple[Instance, str],
) -> None:
    forged = [{"X-Forwarded-For": f"203.0.113.{n}"} for n in range(4)]
    statuses, forwarded = await statuses_and_forwarded_for(upstream, ["10.0.0.0/8"], forged)
    assert statuses == [200, 200, 429, 429]
    assert forwarded == ["127.0.0.1", "127.0.0.1"]  # the forged chain is not passed on


async def test_clients_behind_a_trusted_proxy_get_a_bucket_each(upstream: tuple[Instance, str]) -> None:
    one, two = {"X-Forwarded-For": "203.0.113.1"}, {"X-Forwarded-For": "203.0.113.2"}
    statuses, forwarded = await statuses_and_forwarded_for(upstream, ["127.0.0.0/8"], [one, two, one, two, one, two])
    assert statuses == [200, 200, 200, 200, 429, 429]
    assert forwarded == ["203.0.113.1, 127.0.0.1", "203.0.113.2, 127.0.0.1"] * 2


async def test_a_client_behind_two_proxies_cannot_escape_its_bucket_by_prepending(
    upstream: tuple[Instance, str],
) -> None:
    # The client sends its own X-Forwarded-For; the first proxy (10.9.9.9) appends the client's real address.
    sent = [{"X-Forwarded-For": f"198.51.100.{n}, 203.0.113.7, 10.9.9.9"} for n in range(3)]
    statuses, forwarded = await statuses_and_forwarded_for(upstream, ["127.0.0.1", "10.0.0.0/8"], sent)
    assert statuses == [200, 200, 429]
    assert forwarded[0] == "198.51.100.0, 203.0.113.7, 10.9.9.9, 127.0.0.1"


async def test_a_malformed_header_from_a_trusted_proxy_falls_back_to_the_last_good_address(
    upstream: tuple[Instance, str],
) -> None:
    bad = [{"X-Forwarded-For": f"203.0.113.{n}, unknown"} for n in range(3)]
    statuses, _ = await statuses_and_forwarded_for(upstream, ["127.0.0.1"], bad)
    assert statuses == [200, 200, 429]  # all of them the proxy's own
