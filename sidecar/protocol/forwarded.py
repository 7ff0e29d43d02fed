"""X-Forwarded-For and X-Forwarded-Proto, believed only from `listen.trusted_proxies`.

Behind another TLS terminator (`tls.mode: off`), every request comes from the proxy: the
client's address and scheme are in headers that anyone else could also send. They are taken
only when the peer is a configured proxy; X-Forwarded-For is read from the nearest hop back,
skipping trusted proxies, and the first address that is not one is the client (an address
further left was written by the client itself and proves nothing).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse_address(text: str) -> Address | None:
    """An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `[::1]:80`, `::1`."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _hops(headers: Iterable[str]) -> list[str]:
    return [hop.strip() for header in headers for hop in header.split(",") if hop.strip()]


@dataclass(frozen=True)
class TrustedProxies:
    networks: tuple[Network, ...] = ()

    def trusts(self, address: str | Address | None) -> bool:
        if address is None or not self.networks:
            return False
        parsed = parse_address(address) if isinstance(address, str) else address
        return parsed is not None and any(parsed in network for network in self.networks)

    def client(self, peer: str | None, forwarded_for: Iterable[str]) -> str | None:
        """The client's address: the peer itself unless the peer is a trusted proxy."""
        if not self.trusts(peer):
            return peer
        client = peer
        for hop in reversed(_hops(forwarded_for)):
            address = parse_address(hop)
            if address is None:
                break  # garbage in the chain: keep the last address a trusted hop vouched for
            client = str(address)
            if not self.trusts(address):
                break
        return client

    def scheme(self, peer: str | None, forwarded_proto: Iterable[str]) -> str | None:
        """http or https as the nearest trusted proxy says; None to keep the connection's."""
        if not self.trusts(peer):
            return None
        hops = _hops(forwarded_proto)
        value = hops[-1].lower() if hops else None
        return value if value in ("http", "https") else None


def forwarded_middleware(trusted: TrustedProxies) -> Callable[..., Awaitable[web.StreamResponse]]:
    """request.remote and request.scheme as the trusted proxy saw the client."""

    @web.middleware
    async def forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.remote
        if peer is not None and trusted.trusts(peer):
            client = trusted.client(peer, request.headers.getall("X-Forwarded-For", ())) or peer
            scheme = trusted.scheme(peer, request.headers.getall("X-Forwarded-Proto", ()))
            scheme = scheme or request.scheme
            if client != peer or scheme != request.scheme:
                request = request.clone(remote=client, scheme=scheme)
        return await handler(request)

    return forwarded
