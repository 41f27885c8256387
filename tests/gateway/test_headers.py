"""Header rules of the proxy: hop-by-hop stripped both ways, identity replaced, forwarding and tracing added."""

from __future__ import annotations

import re

import pytest

from gateway.proxy import CallContext, client_response_headers, upstream_request_headers
from shared.tracing import new_traceparent, valid_traceparent

CLIENT_TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def raw(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs]


def ctx(traceparent: str = CLIENT_TP, client_addr: str | None = "198.51.100.7",
        forwarded_for: str | None = "198.51.100.7") -> CallContext:
    return CallContext(request_id="rid-1", traceparent=traceparent, client_addr=client_addr,
                       forwarded_for=forwarded_for, scheme="https", path_qs="/api/orders?x=1")


def test_hop_by_hop_and_connection_listed_headers_are_not_forwarded() -> None:
    headers = upstream_request_headers(raw(
        ("Host", "shop.example"),
        ("Connection", "keep-alive, X-Private-Hop"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic abc"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "websocket"),
        ("X-Private-Hop", "1"),
        ("Expect", "100-continue"),
        ("Accept", "application/json"),
        ("Content-Type", "application/json"),
    ), ctx(), {})
    names = {name.lower() for name in headers}
    for hop in ("connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer",
                "transfer-encoding", "upgrade", "x-private-hop", "expect"):
        assert hop not in names
    assert headers["Accept"] == "application/json"
    assert headers["Content-Type"] == "application/json"
    # Host is the instance's, set by aiohttp from the URL: a client's would steer the service's redirects.
    assert "host" not in names


def test_client_identity_headers_are_dropped_and_validated_ones_added() -> None:
    headers = upstream_request_headers(raw(
        ("X-User-Id", "admin"),
        ("x-user-roles", "admin"),
        ("X-User-Email", "boss@example.com"),
        ("X-User-Anything", "x"),
        ("Authorization", "Bearer jwt"),
    ), ctx(), {"X-User-Id": "u-1", "X-User-Roles": "customer"})
    assert headers.getall("X-User-Id") == ["u-1"]
    assert headers.getall("X-User-Roles") == ["customer"]
    assert "X-User-Email" not in headers and "X-User-Anything" not in headers
    # Services verify the JWT themselves: the client's Authorization goes along.
    assert headers["Authorization"] == "Bearer jwt"


def test_public_route_forwards_no_identity_at_all() -> None:
    headers = upstream_request_headers(raw(("X-User-Id", "admin"), ("X-User-Roles", "admin")), ctx(), {})
    assert not [name for name in headers if name.lower().startswith("x-user-")]


def test_a_clients_gateway_credential_is_dropped() -> None:
    """X-Gateway-Authorization is the gateway's own (Gateway.forward adds it towards auth_service): a client's
    copy, listed in Connection or not, never reaches an upstream."""
    for pairs in ((("X-Gateway-Authorization", "Bearer stolen"),),
                  (("Connection", "keep-alive"), ("x-gateway-authorization", "Bearer stolen"))):
        headers = upstream_request_headers(raw(*pairs), ctx(), {})
        assert "x-gateway-authorization" not in {name.lower() for name in headers}


def test_forwarding_headers_are_the_gateways_and_a_client_chain_is_dropped() -> None:
    headers = upstream_request_headers(raw(
        ("Host", "shop.example:8443"),
        ("X-Forwarded-For", "203.0.113.1"),
        ("X-Forwarded-For", "203.0.113.2, 10.0.0.1"),
        ("X-Forwarded-Proto", "gopher"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Request-ID", "client-chosen"),
    ), ctx(), {})
    # What CallContext resolved (tests/gateway/test_forwarded.py): here an untrusted peer, so the peer alone.
    assert headers.getall("X-Forwarded-For") == ["198.51.100.7"]
    assert headers.getall("X-Forwarded-Proto") == ["https"]
    assert headers.getall("X-Forwarded-Host") == ["shop.example:8443"]
    # The context carries the id the gateway chose (the client's when it sent one); one value only.
    assert headers.getall("X-Request-ID") == ["rid-1"]


def test_x_forwarded_for_is_the_resolved_chain_or_absent_without_a_peer() -> None:
    chain = "203.0.113.1, 10.0.0.1"
    headers = upstream_request_headers(raw(("X-Forwarded-For", "203.0.113.1")), ctx(forwarded_for=chain), {})
    assert headers.getall("X-Forwarded-For") == [chain]
    no_peer = ctx(client_addr=None, forwarded_for=None)
    assert "X-Forwarded-For" not in upstream_request_headers(raw(("X-Forwarded-For", "203.0.113.1")), no_peer, {})


def test_valid_client_traceparent_is_kept_with_its_tracestate() -> None:
    headers = upstream_request_headers(raw(("traceparent", CLIENT_TP), ("tracestate", "vendor=1")), ctx(), {})
    assert headers.getall("traceparent") == [CLIENT_TP]
    assert headers["tracestate"] == "vendor=1"


def test_invalid_client_traceparent_is_replaced_and_its_tracestate_dropped() -> None:
    generated = new_traceparent()
    headers = upstream_request_headers(raw(("traceparent", "garbage"), ("tracestate", "vendor=1")),
                                       ctx(traceparent=generated), {})
    assert headers.getall("traceparent") == [generated]
    assert "tracestate" not in headers


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (CLIENT_TP, True),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", True),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", False),
        ("", False),
    ],
)
def test_traceparent_validation(value: str, valid: bool) -> None:
    assert valid_traceparent(value) is valid


def test_generated_traceparent_has_the_w3c_shape() -> None:
    value = new_traceparent()
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", value)
    assert valid_traceparent(value)
    assert new_traceparent() != value


def test_response_hop_by_hop_headers_are_stripped_and_repeats_kept() -> None:
    headers = client_response_headers(raw(
        ("Content-Type", "application/json"),
        ("Content-Length", "12"),
        ("Connection", "keep-alive, X-Upstream-Hop"),
        ("X-Upstream-Hop", "secret"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Proxy-Authenticate", "Basic"),
        ("Upgrade", "h2c"),
        ("Trailer", "X-Checksum"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Server", "uvicorn"),
        ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ("Content-Encoding", "gzip"),
    ))
    assert headers == [
        (b"content-type", b"application/json"),
        (b"content-length", b"12"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"content-encoding", b"gzip"),
    ]
