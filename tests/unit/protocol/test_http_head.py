"""sidecar.protocol.http_head: the upgrade request (RFC 6455 section 4) read and answered, no
I/O."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from urllib.parse import parse_qs

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.protocol.http_head import (
    HEAD_END,
    HandshakeError,
    RequestHead,
    accept_response,
    check_upgrade,
    has_forbidden_bytes,
    http_response,
    parse_query,
    read_head,
)

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def raw_head(request_line: str, *headers: str) -> bytes:
    """What the edge passes to read_head(): everything before the blank line."""
    return "\r\n".join((request_line, *headers)).encode("latin-1")


def upgrade_head(**overrides: str | None) -> RequestHead:
    headers = {
        "Host": "localhost:8443",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": RFC_KEY,
        "Sec-WebSocket-Version": "13",
    }
    for name, value in overrides.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    head = read_head(
        raw_head("GET /app/key?protocol=7 HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()))
    )
    assert head is not None
    return head


def parse_response(data: bytes) -> tuple[str, dict[str, str], bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, "response head not terminated by a blank line"
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(": ")
        assert name.lower() not in headers, f"duplicate {name}"
        headers[name.lower()] = value
    return status, headers, body


# read_head ----------------------------------------------------------------------------------


def test_request_line_and_headers() -> None:
    head = read_head(
        raw_head(
            "GET /app/abc?protocol=7&client=js&version=8.4.0 HTTP/1.1",
            "Host: example.com",
            "Upgrade: websocket",
            "Sec-WebSocket-Key: " + RFC_KEY,
        )
    )
    assert head is not None
    assert head.method == "GET"
    assert head.path == "/app/abc"
    assert head.query == {"protocol": "7", "client": "js", "version": "8.4.0"}
    assert head.headers == {
        "host": "example.com",
        "upgrade": "websocket",
        "sec-websocket-key": RFC_KEY,
    }


def test_header_names_are_lower_cased_and_values_trimmed() -> None:
    head = read_head(raw_head("GET / HTTP/1.1", "ORIGIN:   https://a.example  ", "X-Mixed-Case:v"))
    assert head is not None
    assert head.header("origin") == "https://a.example"
    assert head.header("x-mixed-case") == "v"
    assert head.header("Origin") is None  # lookups take the lower-case name


def test_header_value_may_contain_colons() -> None:
    head = read_head(raw_head("GET / HTTP/1.1", "Host: localhost:8443", "Origin: http://a:1"))
    assert head is not None
    assert head.headers == {"host": "localhost:8443", "origin": "http://a:1"}


def test_repeated_headers_are_joined() -> None:
    head = read_head(
        raw_head("GET / HTTP/1.1", "Connection: keep-alive", "connection: Upgrade", "X: a", "x: b")
    )
    assert head is not None
    assert head.headers["connection"] == "keep-alive, Upgrade"
    assert head.headers["x"] == "a, b"


def test_empty_header_value() -> None:
    head = read_head(raw_head("GET / HTTP/1.1", "X-Empty:"))
    assert head is not None
    assert head.header("x-empty") == ""


def test_query_last_value_wins_and_is_decoded() -> None:
    head = read_head(raw_head("GET /app/k?protocol=6&protocol=7&a=b%20c&d=%2F HTTP/1.1"))
    assert head is not None
    assert head.query == {"protocol": "7", "a": "b c", "d": "/"}


def test_no_query() -> None:
    head = read_head(raw_head("GET /app/k HTTP/1.0"))
    assert head is not None
    assert (head.path, head.query, head.headers) == ("/app/k", {}, {})


def test_non_ascii_bytes_are_read_as_latin1() -> None:
    head = read_head(b"GET / HTTP/1.1\r\nX-Name: caf\xe9")
    assert head is not None
    assert head.header("x-name") == "caf\xe9"


@pytest.mark.parametrize(
    "request_line",
    [
        "GET / HTTP/2.0",
        "GET / HTTP/0.9",
        "GET / SPDY/1.1",
        "GET /",
        "GET",
        "",
        "GET  / HTTP/1.1",  # two spaces: four parts
        "GET / HTTP/1.1 extra",
        "\x16\x03\x01\x02\x00\x01",  # a TLS ClientHello on the wrong port
    ],
)
def test_unusual_request_lines_are_none(request_line: str) -> None:
    assert read_head(raw_head(request_line, "Host: x")) is None


@pytest.mark.parametrize(
    "line",
    [
        "no colon here",
        ": no name",
        "Name : space before colon",
        " Leading: space",
        "\tFolded: continuation",
        "",  # an empty line inside the head
    ],
)
def test_malformed_header_lines_are_none(line: str) -> None:
    assert read_head(raw_head("GET / HTTP/1.1", "Host: x", line, "Upgrade: websocket")) is None


# is_websocket_upgrade -----------------------------------------------------------------------


def test_a_plain_upgrade_is_one() -> None:
    assert upgrade_head().is_websocket_upgrade


@pytest.mark.parametrize(
    "connection",
    ["Upgrade", "upgrade", "UPGRADE", "keep-alive, Upgrade", "Upgrade, keep-alive", "a,upgrade,b"],
)
def test_connection_header_lists_are_understood(connection: str) -> None:
    assert upgrade_head(Connection=connection).is_websocket_upgrade


@pytest.mark.parametrize("upgrade", ["websocket", "WebSocket", "WEBSOCKET"])
def test_upgrade_header_is_case_insensitive(upgrade: str) -> None:
    assert upgrade_head(Upgrade=upgrade).is_websocket_upgrade


def test_connection_split_over_two_header_lines_is_an_upgrade() -> None:
    head = read_head(
        raw_head(
            "GET /app/k HTTP/1.1",
            "Upgrade: websocket",
            "Connection: keep-alive",
            "Connection: Upgrade",
        )
    )
    assert head is not None and head.is_websocket_upgrade


@pytest.mark.parametrize(
    "overrides",
    [
        {"Connection": None},
        {"Upgrade": None},
        {"Connection": "keep-alive"},
        {"Connection": "upgraded"},  # a token, not a substring
        {"Connection": "close"},
        {"Upgrade": "h2c"},
        {"Upgrade": "not-a-websocket-at-all"},  # a token, not a substring (issue 13)
        {"Upgrade": "websockets"},
    ],
)
def test_not_an_upgrade(overrides: dict[str, str | None]) -> None:
    assert not upgrade_head(**overrides).is_websocket_upgrade


@pytest.mark.parametrize("method", ["POST", "HEAD", "PUT", "get"])
def test_only_get_upgrades(method: str) -> None:
    head = read_head(
        raw_head(f"{method} /app/k HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade")
    )
    assert head is not None
    assert not head.is_websocket_upgrade


# check_upgrade ------------------------------------------------------------------------------


def test_valid_upgrade_returns_the_key() -> None:
    assert check_upgrade(upgrade_head()) == RFC_KEY


@pytest.mark.parametrize("version", [None, "8", "12", "14", "13, 8", ""])
def test_only_version_13_is_accepted(version: str | None) -> None:
    with pytest.raises(HandshakeError) as info:
        check_upgrade(upgrade_head(Sec_WebSocket_Version=version))
    error = info.value
    assert error.status == 426
    status, headers, body = parse_response(error.response())
    assert status == "HTTP/1.1 426 Upgrade Required"
    assert headers["sec-websocket-version"] == "13"
    assert "13" in json.loads(body)["error"]


@pytest.mark.parametrize(
    "key",
    [
        None,
        "",
        "dGhlIHNhbXBsZSBub25jZQ",  # no padding
        "dGhlIHNhbXBsZSBub25jZQ==dGhl",  # trailing garbage
        "dGhlIHNhbXBsZQ==",  # 10 bytes
        base64.b64encode(b"x" * 17).decode(),
        "not base64 at all!!!!!!!",
        "dGhlIHNhbXBsZSBub25jZQ==, dGhlIHNhbXBsZSBub25jZQ==",  # sent twice
        "d\xe9hlIHNhbXBsZSBub25jZQ==",  # a latin-1 character
    ],
)
def test_missing_or_bad_key_is_400(key: str | None) -> None:
    with pytest.raises(HandshakeError) as info:
        check_upgrade(upgrade_head(Sec_WebSocket_Key=key))
    assert info.value.status == 400
    status, _headers, body = parse_response(info.value.response())
    assert status == "HTTP/1.1 400 Bad Request"
    assert "Sec-WebSocket-Key" in json.loads(body)["error"]


def test_any_16_byte_key_is_accepted() -> None:
    key = base64.b64encode(bytes(range(16))).decode()
    assert check_upgrade(upgrade_head(Sec_WebSocket_Key=key)) == key


# accept_response ----------------------------------------------------------------------------


def test_accept_matches_the_rfc_example() -> None:
    status, headers, body = parse_response(accept_response(RFC_KEY))
    assert status == "HTTP/1.1 101 Switching Protocols"
    assert headers["sec-websocket-accept"] == RFC_ACCEPT
    assert headers["upgrade"].lower() == "websocket"
    assert headers["connection"].lower() == "upgrade"
    assert body == b""


def test_accept_for_another_key() -> None:
    key = base64.b64encode(b"0123456789abcdef").decode()
    expected = base64.b64encode(
        hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    ).decode()
    _status, headers, _body = parse_response(accept_response(key))
    assert headers["sec-websocket-accept"] == expected


def test_accept_response_ends_at_the_blank_line() -> None:
    assert accept_response(RFC_KEY).endswith(HEAD_END)
    assert accept_response(RFC_KEY).count(HEAD_END) == 1


# http_response ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [(400, "Bad Request"), (403, "Forbidden"), (408, "Request Timeout"), (426, "Upgrade Required")],
)
def test_http_response_shape(status: int, reason: str) -> None:
    body = {"error": 'something went wrong: ✓ "quoted"'}
    line, headers, payload = parse_response(http_response(status, body))
    assert line == f"HTTP/1.1 {status} {reason}"
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(payload)
    assert json.loads(payload) == body


def test_http_response_unknown_status_still_has_a_reason() -> None:
    line, _headers, _payload = parse_response(http_response(418, {"error": "x"}))
    assert line.startswith("HTTP/1.1 418 ")
    assert len(line) > len("HTTP/1.1 418 ")


def test_http_response_extra_headers_are_included() -> None:
    _line, headers, _payload = parse_response(
        http_response(426, {"error": "x"}, "Sec-WebSocket-Version: 13\r\n")
    )
    assert headers["sec-websocket-version"] == "13"
    assert headers["connection"] == "close"


def test_handshake_error_response_is_an_http_response() -> None:
    error = HandshakeError(400, "bad")
    assert error.response() == http_response(400, {"error": "bad"})
    assert str(error) == "bad"


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /app/k HTTP/1.1\r\nUser-Agent: x\nX-Forwarded-For: 6.6.6.6",  # bare LF
        b"GET /app/k HTTP/1.1\r\nUser-Agent: x\rX-Real-IP: 7.7.7.7",  # bare CR
        b"GET /app/k HTTP/1.1\r\nHost: a\x00b",  # NUL
        b"GET /app/k HTTP/1.1\r\nHost: a\x1bb",  # another control character
        b"GET /app/k HTTP/1.1\r\nBad Name: x",  # a space in a header name
        b"GET /app/k HTTP/1.1\r\nBad(name): x",  # a separator in a header name
        b"GET http://[x/app/k HTTP/1.1\r\nHost: a",  # a target urlsplit cannot read
    ],
)
def test_heads_that_could_smuggle_or_break_are_not_read(raw: bytes) -> None:
    assert read_head(raw) is None


# The rule has_forbidden_bytes() keeps, as a regular expression (what it replaced: 9x slower).
FORBIDDEN_IN_HEAD = re.compile(rb"\r(?!\n)|(?<!\r)\n|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Bytes near the rule's edges, so that short random heads hit them often.
edge_bytes = st.lists(
    st.sampled_from(
        [b"\r", b"\n", b"\r\n", b"\n\r", b"\t", b"\x00", b"\x1f", b"\x7f", b" ", b"a", b"\xff"]
    )
    | st.binary(max_size=3),
    max_size=20,
).map(b"".join)


@given(edge_bytes | st.binary(max_size=200))
def test_forbidden_bytes_are_those_of_the_rule(raw: bytes) -> None:
    assert has_forbidden_bytes(raw) == (FORBIDDEN_IN_HEAD.search(raw) is not None)


@pytest.mark.parametrize(
    ("raw", "forbidden"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\tb", False),  # tab is allowed
        (b"GET / HTTP/1.1\r\r\nHost: a", True),  # a CR before the CRLF
        (b"GET / HTTP/1.1\n\r\nHost: a", True),  # an LF before the CRLF
        (b"GET / HTTP/1.1\r\nHost: a\r", True),  # a CR at the end
        (b"\nGET / HTTP/1.1", True),  # an LF at the start
        (b"GET / HTTP/1.1\r\nHost: a\x7f", True),  # DEL
        (b"GET / HTTP/1.1\r\nHost: caf\xe9", False),  # latin-1 is not a control
    ],
)
def test_forbidden_bytes_at_the_edges(raw: bytes, forbidden: bool) -> None:
    assert has_forbidden_bytes(raw) is forbidden


def parse_qs_last(query_string: str) -> dict[str, str]:
    return {name: values[-1] for name, values in parse_qs(query_string).items()}


@given(
    st.lists(st.sampled_from(["a", "b", "=", "&", "%20", "+", "%", "\xe9", ";", ""]), max_size=12)
)
def test_query_is_read_as_parse_qs_reads_it(pieces: list[str]) -> None:
    query_string = "".join(pieces)
    assert parse_query(query_string) == parse_qs_last(query_string)
    assert list(parse_query(query_string)) == list(parse_qs_last(query_string))  # order too


def test_query_by_hand_keeps_parse_qs_rules() -> None:
    # Blank values and names without "=" are left out, an empty name is kept, the last wins.
    assert parse_query("a=&b&=x&c=1=2&c=3") == {"": "x", "c": "3"}


@pytest.mark.parametrize(
    ("headers", "has_body"),
    [
        ({}, False),
        ({"Content-Length": "0"}, False),
        ({"Content-Length": "5"}, True),
        ({"Transfer-Encoding": "chunked"}, True),
    ],
)
def test_has_body(headers: dict[str, str], has_body: bool) -> None:
    assert upgrade_head(**headers).has_body is has_body


@pytest.mark.parametrize(
    ("overrides", "asks"),
    [
        ({}, False),
        ({"Upgrade": "h2c"}, True),
        ({"Upgrade": "not-a-websocket-at-all"}, True),
        ({"Connection": "keep-alive"}, False),
        ({"Upgrade": None}, False),
    ],
)
def test_other_upgrades(overrides: dict[str, str | None], asks: bool) -> None:
    assert upgrade_head(**overrides).asks_other_upgrade is asks


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("//apps/1/channels", "//apps/1/channels", {}),  # not host `apps` (urlsplit's reading)
        ("//[x/app/k", "//[x/app/k", {}),
        ("/app/k?protocol=7&client=js#frag", "/app/k", {"protocol": "7", "client": "js"}),
        ("/cable#x", "/cable", {}),
        ("http://example.com/app/k?protocol=7", "/app/k", {"protocol": "7"}),
    ],
)
def test_the_path_is_the_targets_as_written(target: str, path: str, query: dict) -> None:
    head = read_head(raw_head(f"GET {target} HTTP/1.1", "Host: a"))
    assert head is not None
    assert (head.path, head.query) == (path, query)
