"""sidecar.edge.proxy_headers: hop-by-hop headers dropped, forwarding headers told truthfully."""

from __future__ import annotations

import ipaddress

from sidecar.edge.proxy_headers import (
    Hop,
    connection_tokens,
    end_to_end,
    split_head,
    upgrade_request,
    upstream_request_headers,
)
from sidecar.protocol.forwarded import TrustedProxies

NOBODY = TrustedProxies()
LOCAL_PROXY = TrustedProxies((ipaddress.ip_network("10.0.0.0/8"),))
BROWSER = Hop("203.0.113.7", "https")


def as_dict(headers: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in headers:
        out.setdefault(name.lower(), []).append(value)
    return out


def test_connection_tokens_are_lower_case_and_split() -> None:
    tokens = connection_tokens([("Connection", "keep-alive, X-Hop ,Upgrade"), ("Host", "a")])
    assert tokens == {"keep-alive", "x-hop", "upgrade"}


def test_end_to_end_drops_hop_by_hop_and_the_headers_connection_names() -> None:
    headers = [
        ("Content-Type", "text/html"),
        ("Connection", "X-Session-Hop"),
        ("X-Session-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Proxy-Authenticate", "Basic"),
        ("Trailer", "X-Checksum"),
        ("Upgrade", "h2c"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "12"),
    ]
    assert end_to_end(headers) == [
        ("Content-Type", "text/html"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "12"),
    ]


def test_request_headers_for_the_app() -> None:
    headers = [
        ("Host", "app.example.com"),
        ("Connection", "keep-alive, X-Private"),
        ("X-Private", "secret"),
        ("Keep-Alive", "300"),
        ("TE", "trailers"),
        ("Proxy-Authorization", "Basic eA=="),
        ("Expect", "100-continue"),
        ("Cookie", "session=1"),
        ("Content-Length", "5"),
    ]
    out = upstream_request_headers(headers, BROWSER, NOBODY)
    assert out == [
        ("Host", "app.example.com"),
        ("Cookie", "session=1"),
        ("Content-Length", "5"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "app.example.com"),
    ]


def test_what_a_client_claims_about_itself_never_reaches_the_app() -> None:
    headers = [
        ("Host", "app.example.com"),
        ("X-Forwarded-For", "127.0.0.1"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "admin.internal"),
        ("X-Forwarded-Ssl", "on"),
        ("X-Forwarded-Port", "443"),
        ("X-Forwarded-Prefix", "/admin"),
        ("Forwarded", "for=127.0.0.1;proto=https"),
        ("X-Real-IP", "127.0.0.1"),
        ("Client-IP", "127.0.0.1"),
    ]
    out = as_dict(upstream_request_headers(headers, Hop("203.0.113.7", "http"), NOBODY))
    assert out == {
        "host": ["app.example.com"],
        "x-forwarded-for": ["203.0.113.7"],
        "x-forwarded-proto": ["http"],
        "x-forwarded-host": ["app.example.com"],
    }


def test_a_trusted_proxy_chain_is_extended() -> None:
    headers = [
        ("Host", "internal:8443"),
        ("X-Forwarded-For", "198.51.100.1, 203.0.113.7"),
        ("X-Forwarded-For", "10.1.1.1"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "app.example.com"),
        ("X-Forwarded-Port", "443"),
        ("X-Real-IP", "203.0.113.7"),
        ("Forwarded", "for=203.0.113.7"),
    ]
    out = as_dict(upstream_request_headers(headers, Hop("10.0.0.2", "http"), LOCAL_PROXY))
    assert out == {
        "host": ["internal:8443"],
        "x-forwarded-port": ["443"],
        "x-real-ip": ["203.0.113.7"],
        "x-forwarded-for": ["198.51.100.1, 203.0.113.7, 10.1.1.1, 10.0.0.2"],
        "x-forwarded-proto": ["https"],  # the terminator in front saw HTTPS
        "x-forwarded-host": ["app.example.com"],
    }


def test_a_trusted_proxy_without_forwarding_headers() -> None:
    out = as_dict(upstream_request_headers([("Host", "h")], Hop("10.0.0.2", "http"), LOCAL_PROXY))
    assert out["x-forwarded-for"] == ["10.0.0.2"]
    assert out["x-forwarded-proto"] == ["http"]
    assert out["x-forwarded-host"] == ["h"]


def test_an_ipv4_mapped_peer_is_written_as_ipv4_and_an_unknown_peer_is_left_out() -> None:
    out = as_dict(upstream_request_headers([], Hop("::ffff:192.0.2.1", "https"), NOBODY))
    assert out["x-forwarded-for"] == ["192.0.2.1"]
    assert "x-forwarded-host" not in out  # no Host to repeat
    out = as_dict(upstream_request_headers([], Hop(None, "https"), NOBODY))
    assert "x-forwarded-for" not in out
    assert out["x-forwarded-proto"] == ["https"]


def test_an_upgrade_stays_an_upgrade() -> None:
    headers = [
        ("Host", "app.example.com"),
        ("Connection", "keep-alive, Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Protocol", "actioncable-v1-json"),
    ]
    out = upstream_request_headers(headers, BROWSER, NOBODY, upgrade="websocket")
    assert out[-2:] == [("Connection", "Upgrade"), ("Upgrade", "websocket")]
    assert ("Sec-WebSocket-Protocol", "actioncable-v1-json") in out
    assert [name for name, _ in out].count("Connection") == 1


def test_upgrade_request_rewrites_a_raw_head() -> None:
    raw = (
        b"GET /cable?token=a%20b HTTP/1.1\r\n"
        b"Host: app.example.com\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"X-Forwarded-For: 6.6.6.6\r\n"
        b"Origin: https://app.example.com\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate"
    )
    head = upgrade_request(raw, BROWSER, NOBODY)
    assert head.endswith(b"\r\n\r\n")
    assert head.count(b"\r\n\r\n") == 1
    request_line, headers = split_head(head[:-4])
    assert request_line == "GET /cable?token=a%20b HTTP/1.1"
    assert headers == [
        ("Host", "app.example.com"),
        ("Origin", "https://app.example.com"),
        ("Sec-WebSocket-Extensions", "permessage-deflate"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "app.example.com"),
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
    ]


def test_a_raw_head_keeps_latin1_bytes() -> None:
    raw = b"GET /cable HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nX-Name: caf\xe9"
    assert b"X-Name: caf\xe9\r\n" in upgrade_request(raw, BROWSER, NOBODY)
