"""What the app behind the sidecar is told, and what it answers, header by header (no I/O).

A proxy drops the hop-by-hop headers (RFC 9110 section 7.6.1: they describe one connection,
not the message) both ways, and says who the client is: X-Forwarded-For, -Proto and -Host.
Those are believed by Rack and Rails, so one sent by the client itself must never reach the
app: every forwarding header is removed unless the peer is one of `listen.trusted_proxies`,
whose chain is then extended. `Forwarded` (RFC 7239) is always removed: Rack prefers it to
X-Forwarded-*, and this proxy does not write it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sidecar.protocol.forwarded import TrustedProxies, parse_address

Headers = list[tuple[str, str]]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Headers that claim something about the client; believed from a trusted proxy only. Rack also
# reads X-Forwarded-Ssl, -Scheme, -Port and -Prefix; Rails reads Client-Ip.
CLIENT_CLAIMS_PREFIX = "x-forwarded-"
CLIENT_CLAIMS = frozenset({"x-real-ip", "client-ip"})
# The sidecar has already answered `Expect: 100-continue` itself (aiohttp does); passed on, it
# would make the upstream request wait for a second 100 that the proxy's client never reads.
NOT_PASSED_ON = frozenset({"forwarded", "expect"})


@dataclass(frozen=True, slots=True)
class Hop:
    """The connection a request came in on: the peer's address and its scheme."""

    peer: str | None  # None when unknown (the socket is already gone)
    scheme: str  # "https" on the TLS port, "http" with tls.mode off


def connection_tokens(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The header names a Connection header lists: hop-by-hop too (RFC 9110 7.6.1)."""
    return frozenset(
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
        if token.strip()
    )


def end_to_end(headers: Iterable[tuple[str, str]]) -> Headers:
    """`headers` without the hop-by-hop ones: a response on its way to the client."""
    headers = list(headers)
    listed = connection_tokens(headers)
    return [
        (name, value)
        for name, value in headers
        if name.lower() not in HOP_BY_HOP and name.lower() not in listed
    ]


def upstream_request_headers(
    headers: Iterable[tuple[str, str]],
    hop: Hop,
    trusted: TrustedProxies,
    *,
    upgrade: str | None = None,
) -> Headers:
    """The request headers the app receives; `upgrade` keeps a WebSocket upgrade an upgrade."""
    headers = list(headers)
    listed = connection_tokens(headers)
    vouched = trusted.trusts(hop.peer)
    chain: list[str] = []
    protos: list[str] = []
    hosts: list[str] = []
    host: str | None = None
    out: Headers = []
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in listed or lower in NOT_PASSED_ON:
            continue
        if lower == "x-forwarded-for":
            chain.append(value.strip())
        elif lower == "x-forwarded-proto":
            protos.append(value)
        elif lower == "x-forwarded-host":
            hosts.append(value)
        elif lower.startswith(CLIENT_CLAIMS_PREFIX) or lower in CLIENT_CLAIMS:
            if vouched:
                out.append((name, value))
        else:
            if lower == "host":
                host = value.strip()
            out.append((name, value))
    peer = _address(hop.peer)
    forwarded_for = [address for address in ([*chain, peer] if vouched else [peer]) if address]
    if forwarded_for:
        out.append(("X-Forwarded-For", ", ".join(forwarded_for)))
    out.append(("X-Forwarded-Proto", trusted.scheme(hop.peer, protos) or hop.scheme))
    forwarded_host = _last_hop(hosts) if vouched else None
    if forwarded_host or host:
        out.append(("X-Forwarded-Host", forwarded_host or host or ""))
    if upgrade is not None:
        out.append(("Connection", "Upgrade"))
        out.append(("Upgrade", upgrade))
    return out


def _address(peer: str | None) -> str | None:
    """The peer as the app should read it: an IPv4-mapped IPv6 address as plain IPv4."""
    if peer is None:
        return None
    address = parse_address(peer)
    return str(address) if address is not None else peer


def _last_hop(values: list[str]) -> str | None:
    hops = [hop.strip() for value in values for hop in value.split(",") if hop.strip()]
    return hops[-1] if hops else None


# A raw request head (the WebSocket passthrough forwards bytes, not an aiohttp request) ------


def split_head(raw: bytes) -> tuple[str, Headers]:
    """The request line and the headers of a head already checked by `read_head`."""
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return lines[0], headers


def upgrade_request(raw_head: bytes, hop: Hop, trusted: TrustedProxies) -> bytes:
    """An upgrade request head (without its blank line) rewritten for the app, blank line on."""
    request_line, headers = split_head(raw_head)
    # Only `Upgrade: websocket` is spliced (sidecar/edge/passthrough.py): nothing else is asked.
    rewritten = upstream_request_headers(headers, hop, trusted, upgrade="websocket")
    lines = [request_line, *(f"{name}: {value}" for name, value in rewritten), "", ""]
    return "\r\n".join(lines).encode("latin-1")
