"""Which client a request is from: the socket peer, or, behind trusted proxies, the address they forwarded.

The gateway uses it for its rate limits and the X-Forwarded-For it sends on; auth_service for login throttling
(every login reaches it through the gateway, so the peer alone would make all clients one).

The rule of nginx's `real_ip_recursive on`: only a trusted peer's X-Forwarded-For is read, from the right,
past the proxies we trust; the first address we do not trust is the client (anything left of it was written
by that client and proves nothing). Not uvicorn's ProxyHeadersMiddleware: it replaces the peer (which the
chain sent upstream still needs), rewrites the scheme too, and takes a malformed entry as the client.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import NamedTuple

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address


def parse_networks(spec: str | Iterable[str | Network], setting: str = "TRUSTED_PROXIES") -> tuple[Network, ...]:
    """Comma-separated addresses and CIDR networks (or a list of them); a bad entry is a ValueError naming it."""
    entries = spec.split(",") if isinstance(spec, str) else spec
    networks: list[Network] = []
    for entry in entries:
        if isinstance(entry, IPv4Network | IPv6Network):
            networks.append(entry)
            continue
        text = entry.strip()
        if not text:
            continue
        try:
            # strict: "10.0.0.1/8" is more likely a typo than a wish to trust all of 10/8.
            networks.append(ip_network(text, strict=True))
        except ValueError as exc:
            raise ValueError(f"{setting}: {text!r} is not an IP address or CIDR network ({exc})") from None
    return tuple(networks)


def parse_address(text: str) -> Address | None:
    """An address as the peer or an X-Forwarded-For entry gives it; None if it is not one (ports included)."""
    try:
        address = ip_address(text.strip())
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; they must match IPv4 networks and buckets.
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class Forwarded(NamedTuple):
    """The client's address and the X-Forwarded-For to send upstream (the gateway's); None without a peer."""

    client: str | None
    chain: str | None


class TrustedProxies:
    """The proxies whose X-Forwarded-For this service believes (TRUSTED_PROXIES). Empty: the peer is the client."""

    def __init__(self, networks: Sequence[Network] = ()) -> None:
        self.networks = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: Address) -> bool:
        # `in` across IP versions is simply False.
        return any(address in network for network in self.networks)

    def resolve(self, peer: str | None, forwarded_for: Iterable[str]) -> Forwarded:
        """The client behind `peer`, given the X-Forwarded-For header values in the order received.

        An untrusted peer's header is ignored and dropped: it is the client, and the chain starts with it.
        A trusted peer's chain is walked from the right past trusted proxies; an entry that is not an address
        ends the walk at the last good one (as no header at all ends it at the peer).
        """
        if peer is None:
            return Forwarded(None, None)
        if not self.networks:
            return Forwarded(peer, peer)
        peer_address = parse_address(peer)
        if peer_address is None or not self.trusts(peer_address):
            return Forwarded(peer, peer)
        values = [value.strip() for value in forwarded_for if value.strip()]
        client = str(peer_address)
        for entry in reversed(",".join(values).split(",") if values else []):
            address = parse_address(entry)
            if address is None:
                break
            client = str(address)
            if not self.trusts(address):
                break
        chain = ", ".join([*values, peer])
        return Forwarded(client, chain)
