"""Fuzzing sidecar.protocol.http_head: any request head gives a RequestHead or None, any parsed
head gives a key or a HandshakeError, never another exception.

Round trip: a head written from a method, a path, a query and headers reads back as them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.edge.listener import EdgeProtocol
from sidecar.protocol.http_head import (
    HEAD_END,
    MAX_HEAD_BYTES,
    WEBSOCKET_GUID,
    HandshakeError,
    RequestHead,
    accept_response,
    check_upgrade,
    has_forbidden_bytes,
    read_head,
)
from tests.support.edge_fakes import (
    API_REQUEST,
    UPGRADE,
    FakeEndpoint,
    FakeHttp,
    FakePassthrough,
    FakeTransport,
)
from tests.support.fuzz import cut_points, held_bytes, split_at

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
token = st.text(TOKEN_CHARS, min_size=1, max_size=20)
# Header values: visible latin-1 and inner spaces (leading and trailing blanks are not kept).
value = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
).map(str.strip)
path = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~/", max_size=30).map(lambda p: "/" + p)
query_pairs = st.dictionaries(
    st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12),
    max_size=4,
)

# Pieces of real heads, shuffled and mutated: random bytes alone rarely get past the first line.
head_pieces = st.sampled_from(
    [
        b"GET /app/key?protocol=7 HTTP/1.1",
        b"\r\n",
        b"Host: localhost",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Version: 13",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Content-Length: 5",
        b"Transfer-Encoding: chunked",
        b" ",
        b":",
        b"\r",
        b"\n",
        b"\x00",
        b"//[x/",
        b"HTTP/1.0",
        b"?a=1&a=2&%zz",
        b"\xff\xfe",
    ]
)


def check_any_head(raw: bytes) -> None:
    head = read_head(raw)
    if head is None:
        return
    assert isinstance(head, RequestHead)
    assert not has_forbidden_bytes(raw)
    assert all(name == name.lower() for name in head.headers)
    _ = head.is_websocket_upgrade
    try:
        key = check_upgrade(head)
    except HandshakeError as exc:
        assert exc.status in (400, 426)
        assert exc.response().startswith(f"HTTP/1.1 {exc.status} ".encode())
    else:
        assert len(base64.b64decode(key, validate=True)) == 16
        assert accept_response(key).startswith(b"HTTP/1.1 101 ")


@given(st.binary(max_size=600))
def test_any_bytes_read_as_a_head_or_none(raw: bytes) -> None:
    check_any_head(raw)


@given(st.lists(head_pieces | st.binary(max_size=8), max_size=30))
def test_mutated_heads_read_as_a_head_or_none(pieces: list[bytes]) -> None:
    check_any_head(b"".join(pieces))


@given(
    st.sampled_from(["GET", "POST", "PUT", "OPTIONS"]),
    path,
    query_pairs,
    st.lists(st.tuples(token, value), max_size=8),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
)
def test_a_written_head_reads_back(
    method: str,
    target_path: str,
    query: dict[str, str],
    headers: list[tuple[str, str]],
    version: str,
) -> None:
    target = target_path + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    lines = [f"{method} {target} {version}", *(f"{name}: {v}" for name, v in headers)]
    head = read_head("\r\n".join(lines).encode("latin-1"))
    assert head is not None
    assert (head.method, head.path, head.version, head.query) == (
        method,
        target_path,
        version,
        query,
    )
    expected: dict[str, str] = {}
    for name, v in headers:
        key = name.lower()
        expected[key] = f"{expected[key]}, {v}" if key in expected else v
    assert head.headers == expected


@given(st.binary(min_size=16, max_size=16), st.text(max_size=30))
def test_a_valid_key_is_accepted_and_any_other_refused(nonce: bytes, other: str) -> None:
    key = base64.b64encode(nonce).decode()
    head = read_head(
        b"GET /app/k HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key.encode()
    )
    assert head is not None and head.is_websocket_upgrade
    assert check_upgrade(head) == key
    accept = base64.b64encode(hashlib.sha1(key.encode() + WEBSOCKET_GUID).digest())
    assert b"Sec-WebSocket-Accept: " + accept + b"\r\n" in accept_response(key)
    bad = RequestHead("GET", "/", "HTTP/1.1", {}, {**head.headers, "sec-websocket-key": other})
    try:
        valid = len(base64.b64decode(other, validate=True)) == 16
    except ValueError:
        valid = False
    if valid:
        assert check_upgrade(bad) == other
    else:
        with pytest.raises(HandshakeError) as caught:
            check_upgrade(bad)
        assert caught.value.status == 400


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("//apps/1/channels", "//apps/1/channels", {}),
        ("//", "//", {}),
        ("//app/key?protocol=7", "//app/key", {"protocol": "7"}),
        ("/a?b=1#frag", "/a", {"b": "1"}),
        ("http://host/x?y=2", "/x", {"y": "2"}),
    ],
)
def test_a_path_starting_with_two_slashes_is_a_path(
    target: str, path: str, query: dict[str, str]
) -> None:
    """Found by test_a_written_head_reads_back: urlsplit() reads "//apps/1/channels" as the
    host "apps" and the path "/1/channels", where aiohttp (and the app) see the path as sent."""
    head = read_head(f"GET {target} HTTP/1.1\r\nHost: x".encode())
    assert head is not None
    assert (head.path, head.query) == (path, query)


# The edge: EdgeProtocol reads the first head of each connection on the TLS port ---------------


def edge_outcome(pieces: list[bytes], passthrough: bool) -> tuple[str, bytes, bytes]:
    """Who got the connection (http, relay, app or no one yet) and what they were given."""

    async def scenario() -> tuple[str, bytes, bytes]:
        made: list[FakeHttp] = []

        def http() -> FakeHttp:
            made.append(FakeHttp())
            return made[-1]

        endpoint, app = FakeEndpoint(), FakePassthrough()
        edge = EdgeProtocol(http, endpoint, app if passthrough else None)  # type: ignore[arg-type]
        edge.connection_made(FakeTransport())  # type: ignore[arg-type]
        try:
            for piece in pieces:
                if made:
                    made[0].data_received(piece)  # aiohttp's connection from the hand-over on
                    continue
                if endpoint.upgrades or app.upgrades:
                    break  # the relay or the app reads the rest
                edge.data_received(piece)
                # Until it decides, the edge holds one head at most (and what one read brought).
                assert held_bytes(edge) <= MAX_HEAD_BYTES + len(HEAD_END) + len(piece)
        finally:
            edge.connection_lost(None)
        if made:
            return "http", b"".join(made[0].received), b""
        if endpoint.upgrades:
            _, head, rest = endpoint.upgrades[0]
            return "relay", head.path.encode("latin-1"), rest
        if app.upgrades:
            _, raw_head, rest = app.upgrades[0]
            return "app", raw_head, rest
        return "waiting", b"", b""

    return asyncio.run(scenario())


whole_requests = st.sampled_from(
    [UPGRADE, API_REQUEST, UPGRADE.replace(b"/app/key-one", b"/elsewhere"), b"\r\n\r\n"]
)


@given(
    st.lists(whole_requests | head_pieces | st.binary(max_size=40), max_size=40),
    st.booleans(),
    st.data(),
)
def test_the_edge_decides_the_same_however_the_bytes_are_split(
    chunks: list[bytes], passthrough: bool, draw: st.DataObject
) -> None:
    stream = b"".join(chunks)
    whole = edge_outcome([stream], passthrough)
    split = edge_outcome(split_at(stream, draw.draw(cut_points(len(stream)))), passthrough)
    if whole[0] in ("relay", "app"):
        # The bytes after the head may still be coming when the split stream decides.
        assert split[:2] == whole[:2]
        assert whole[2].startswith(split[2])
    else:
        assert split == whole
    if whole[0] == "waiting":
        assert len(stream) <= MAX_HEAD_BYTES and HEAD_END not in stream
