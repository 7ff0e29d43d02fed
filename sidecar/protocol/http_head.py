"""The HTTP request that opens a WebSocket (RFC 6455 section 4), read and answered without I/O.

The edge reads a request head, asks `read_head()` what it is and, for a WebSocket upgrade,
answers with `accept_response()` or one of the refusals below. Anything that is not an upgrade
it hands on to the HTTP server untouched, so this parser only needs to recognise upgrades and
may give up (None) on anything unusual.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import orjson

# Request heads longer than this are not upgrades we answer: the HTTP server refuses them.
MAX_HEAD_BYTES = 16 * 1024
HEAD_END = b"\r\n\r\n"
# Control characters other than tab, CR and LF: none belongs in a head.
CONTROLS = bytes(range(0x00, 0x09)) + b"\x0b\x0c" + bytes(range(0x0E, 0x20)) + b"\x7f"
# A header name: RFC 9110's token characters (no spaces, no separators).
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    path: str
    version: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def asks_other_upgrade(self) -> bool:
        """A switch to a protocol other than WebSocket (`Upgrade: h2c`, say)."""
        return (
            "upgrade" in self.headers
            and "websocket" not in tokens(self.headers["upgrade"])
            and "upgrade" in tokens(self.headers.get("connection", ""))
        )

    @property
    def is_websocket_upgrade(self) -> bool:
        """A GET asking for `Upgrade: websocket` (the token, not a value that contains it)."""
        return (
            self.method == "GET"
            and "websocket" in tokens(self.headers.get("upgrade", ""))
            and "upgrade" in tokens(self.headers.get("connection", ""))
        )

    @property
    def has_body(self) -> bool:
        return "transfer-encoding" in self.headers or self.headers.get(
            "content-length", "0"
        ).strip() not in ("", "0")


def tokens(value: str) -> list[str]:
    """A comma-separated header value's items, lower-case (`Connection: keep-alive, Upgrade`)."""
    return [token.strip().lower() for token in value.split(",")]


def has_forbidden_bytes(raw: bytes) -> bool:
    """A CR not followed by LF, an LF not preceded by CR, or a control character (`CONTROLS`).

    Counted and deleted in C: a regular expression of the same rule took 17.6 µs on a 535-byte
    browser head (it tries its alternatives at every byte); this takes ~2.
    """
    # Every CR is followed by an LF and every LF preceded by a CR exactly when there are as
    # many of each as of CRLF pairs (which cannot overlap).
    pairs = raw.count(b"\r\n")
    if raw.count(b"\r") != pairs or raw.count(b"\n") != pairs:
        return True
    return len(raw.translate(None, CONTROLS)) != len(raw)


def parse_query(query_string: str) -> dict[str, str]:
    """A query's names and values, the last of a repeated name (as `parse_qs`, blank values
    left out); split by hand when nothing needs decoding (`parse_qs` takes ~1 µs a pair)."""
    if "%" in query_string or "+" in query_string:
        return {name: values[-1] for name, values in parse_qs(query_string).items()}
    query: dict[str, str] = {}
    for pair in query_string.split("&"):
        name, _, value = pair.partition("=")
        if value:
            query[name] = value
    return query


def read_head(raw: bytes) -> RequestHead | None:
    """The request line and headers of `raw` (everything before the blank line), or None."""
    if has_forbidden_bytes(raw):
        # A bare CR or LF inside a line would reach an upstream as a line of its own (a header
        # this parser never saw); NUL and other controls have no place in a head either.
        return None
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or TOKEN.fullmatch(name) is None:
            return None
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if target.startswith("/"):
        # Origin form, split by hand: urlsplit reads `//apps/1` as host `apps`, path `/1`.
        path, _, query_string = target.partition("#")[0].partition("?")
    else:
        try:
            url = urlsplit(target)
        except ValueError:  # e.g. "http://[x/": an unclosed IPv6 bracket
            return None
        path, query_string = url.path, url.query
    return RequestHead(method, path, version, parse_query(query_string), headers)


class HandshakeError(Exception):
    """The upgrade is refused before it happens: an HTTP error response."""

    def __init__(self, status: int, message: str, extra_headers: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra_headers = extra_headers

    def response(self) -> bytes:
        return http_response(self.status, {"error": self.message}, self.extra_headers)


def check_upgrade(head: RequestHead) -> str:
    """The Sec-WebSocket-Key of a valid upgrade request; HandshakeError when it is not one."""
    version = head.header("sec-websocket-version")
    if version != "13":
        raise HandshakeError(
            426, "unsupported WebSocket version: 13 only", "Sec-WebSocket-Version: 13\r\n"
        )
    key = head.header("sec-websocket-key") or ""
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise HandshakeError(400, "Sec-WebSocket-Key missing or not 16 bytes in base64")
    return key


def accept_response(key: str) -> bytes:
    accept = base64.b64encode(hashlib.sha1(key.encode() + WEBSOCKET_GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    413: "Payload Too Large",
    426: "Upgrade Required",
    429: "Too Many Requests",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def json_reply(status: int, payload: bytes, *, close: bool, extra_headers: str = "") -> bytes:
    """A complete JSON response written by hand (the upgrade edge, the publish fast path)."""
    connection = "Connection: close\r\n" if close else ""
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        f"{extra_headers}{connection}\r\n"
    )
    return head.encode() + payload


def http_response(status: int, body: dict[str, str], extra_headers: str = "") -> bytes:
    """A complete JSON response that ends the connection."""
    return json_reply(status, orjson.dumps(body), close=True, extra_headers=extra_headers)
