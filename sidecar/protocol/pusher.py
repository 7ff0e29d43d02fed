"""The Pusher Channels protocol v7, browser side, without I/O.

Text in, typed messages out; typed replies in, bytes out. Nothing here imports asyncio or touches a
socket, so every rule of the protocol is tested with plain function calls
(tests/unit/protocol/test_pusher.py).

Errors carry their reply: a `ProtocolError` knows the pusher:error code to send and, when the
connection must end, the close code. Pusher's ranges decide what pusher-js does next:
4000-4099 do not reconnect unchanged, 4100-4199 reconnect after back-off, 4200-4299 reconnect
at once, 4300-4399 other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import orjson

PROTOCOL_VERSION = 7
# The oldest protocol pusher-js still speaks is 7; older ones had other framing rules.
SUPPORTED_PROTOCOLS = frozenset({7})
# Pusher's own limit on channel names; longer names are refused, not truncated.
MAX_CHANNEL_NAME_LENGTH = 164
# Pusher's limit on event names (the HTTP API documents 200 characters).
MAX_EVENT_NAME_LENGTH = 200
# The one exception to the character set: pusher-js subscribes a signed-in user to
# `#server-to-user-{id}`, the channel server libraries' send_to_user() publishes on.
USER_CHANNEL_PREFIX = "#server-to-user-"
CHANNEL_NAME_RE = re.compile(r"(?:#server-to-user-)?[A-Za-z0-9_\-=@,.;]+")
SOCKET_ID_RE = re.compile(r"\d+\.\d+")


class CloseCode(IntEnum):
    """WebSocket close codes the relay sends (Pusher's and the RFC's)."""

    NORMAL = 1000
    MESSAGE_TOO_BIG = 1009
    APP_NOT_FOUND = 4001
    OVER_QUOTA = 4004  # this relay holds as many connections as it is configured to
    PATH_NOT_FOUND = 4005
    UNSUPPORTED_PROTOCOL = 4007
    NO_PROTOCOL = 4008
    UNAUTHORIZED = 4009
    OVER_CAPACITY = 4100  # a client too slow to drain its send queue
    TOO_MANY_BAD_FRAMES = 4101  # refused frames past the budget (sidecar/engine/bad_frames.py)
    RECONNECT = 4200  # shutdown or reload: pusher-js reconnects at once
    PONG_NOT_RECEIVED = 4201
    CLOSED_FOR_INACTIVITY = 4202


class ErrorCode(IntEnum):
    """Codes of pusher:error frames; Pusher puts errors that fit no close code in 4300-4399."""

    UNAUTHORIZED = 4009  # a refused pusher:signin; the connection stays open
    INVALID_MESSAGE = 4300  # malformed or unknown frame; the connection stays open
    CLIENT_EVENT_RATE_LIMITED = 4301
    RATE_LIMITED = 4301  # Pusher's one code for "too many": subscriptions too


class ProtocolError(Exception):
    """A frame the relay refuses. `close` set means the connection ends with that code."""

    def __init__(
        self, message: str, code: int = ErrorCode.INVALID_MESSAGE, close: CloseCode | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.close = close


# Client -> server messages ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """Base of every message a client can send."""


@dataclass(frozen=True, slots=True)
class Ping(ClientMessage):
    pass


@dataclass(frozen=True, slots=True)
class Pong(ClientMessage):
    pass


@dataclass(frozen=True, slots=True)
class Subscribe(ClientMessage):
    channel: str
    auth: str | None = None
    channel_data: str | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe(ClientMessage):
    channel: str


@dataclass(frozen=True, slots=True)
class Signin(ClientMessage):
    """pusher:signin: `user_data` is the exact JSON string the app's endpoint signed."""

    auth: str
    user_data: str


@dataclass(frozen=True, slots=True)
class ClientEvent(ClientMessage):
    """A `client-*` event; whether it is allowed is the relay's decision, not the parser's."""

    event: str
    channel: str
    data: str


def validate_channel_name(channel: Any) -> str:
    """Return the channel name or raise a ProtocolError that says what is wrong with it."""
    if not isinstance(channel, str) or not channel:
        raise ProtocolError("channel must be a non-empty string")
    if len(channel) > MAX_CHANNEL_NAME_LENGTH:
        raise ProtocolError(
            f"channel name is {len(channel)} characters, over the limit of "
            f"{MAX_CHANNEL_NAME_LENGTH}"
        )
    if CHANNEL_NAME_RE.fullmatch(channel) is None:
        raise ProtocolError(
            f"channel name {channel[:40]!r} has characters outside A-Z a-z 0-9 _ - = @ , . ;"
        )
    return channel


def _as_data_string(data: Any) -> str:
    """pusher-js sends `data` as an object; other clients as a JSON string. Keep a string."""
    if isinstance(data, str):
        return data
    try:
        return orjson.dumps(data).decode()
    except orjson.JSONEncodeError:
        # Decoding takes 1024 levels, encoding 255: what is in between cannot be relayed.
        raise ProtocolError("data is nested too deeply") from None


def parse_client_frame(text: str | bytes) -> ClientMessage:
    """Decode one text frame from a client into a ClientMessage, or raise ProtocolError."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError("frame is not JSON") from None
    if not isinstance(frame, dict):
        raise ProtocolError("frame must be a JSON object")
    event = frame.get("event")
    if not isinstance(event, str) or not event:
        raise ProtocolError("frame has no 'event' string")
    data = frame.get("data")

    if event == "pusher:ping":
        return Ping()
    if event == "pusher:pong":
        return Pong()
    if event in ("pusher:subscribe", "pusher:unsubscribe"):
        if isinstance(data, str):
            # A few clients double-encode data on the way in too.
            try:
                data = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise ProtocolError(f"{event} data is not JSON") from None
        if not isinstance(data, dict):
            raise ProtocolError(f"{event} needs data with a 'channel'")
        channel = validate_channel_name(data.get("channel"))
        if event == "pusher:unsubscribe":
            return Unsubscribe(channel)
        auth = data.get("auth")
        channel_data = data.get("channel_data")
        if auth is not None and not isinstance(auth, str):
            raise ProtocolError("auth must be a string")
        if channel_data is not None and not isinstance(channel_data, str):
            raise ProtocolError("channel_data must be a string")
        return Subscribe(channel, auth, channel_data)
    if event == "pusher:signin":
        return _parse_signin(data)
    if event.startswith("pusher:") or event.startswith("pusher_internal:"):
        raise ProtocolError(f"unsupported event {event[:64]!r}")
    if event.startswith("client-"):
        if len(event) > MAX_EVENT_NAME_LENGTH:
            raise ProtocolError(f"event name is over {MAX_EVENT_NAME_LENGTH} characters")
        channel = validate_channel_name(frame.get("channel"))
        return ClientEvent(event, channel, _as_data_string(data))
    raise ProtocolError(f"unknown event {event[:64]!r}: clients may send pusher:* or client-*")


def _parse_signin(data: Any) -> Signin:
    if isinstance(data, str):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ProtocolError("pusher:signin data is not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("pusher:signin needs data with 'auth' and 'user_data'")
    auth, user_data = data.get("auth"), data.get("user_data")
    if not isinstance(auth, str) or not auth:
        raise ProtocolError("pusher:signin: auth must be a non-empty string")
    if not isinstance(user_data, str) or not user_data:
        raise ProtocolError("pusher:signin: user_data must be a JSON string")
    return Signin(auth, user_data)


# Server -> client frames --------------------------------------------------------------------
# Server-to-client `data` is a JSON string inside the JSON frame (double-encoded): pusher-js
# parses it a second time.


def encode_event(event: str, data: str, channel: str | None = None) -> bytes:
    """One server frame as JSON bytes. `data` is already the string clients will receive."""
    if channel is None:
        return orjson.dumps({"event": event, "data": data})
    return orjson.dumps({"event": event, "channel": channel, "data": data})


def event_prefix(event: str, channel: str) -> bytes:
    """The JSON of a channel event up to its data: `prefix + data literal + b"}"` is the frame.

    Lets one encoded data literal serve every channel of a publication without re-encoding.
    """
    return b'{"event":' + orjson.dumps(event) + b',"channel":' + orjson.dumps(channel) + b',"data":'


def encode_connection_established(socket_id: str, activity_timeout: int) -> bytes:
    data = orjson.dumps({"socket_id": socket_id, "activity_timeout": activity_timeout})
    return encode_event("pusher:connection_established", data.decode())


def encode_error(message: str, code: int | None) -> bytes:
    # Pusher documents pusher:error's data as an object, not a string; pusher-js takes both.
    return orjson.dumps({"event": "pusher:error", "data": {"message": message, "code": code}})


def encode_subscription_succeeded(channel: str, data: str = "{}") -> bytes:
    return encode_event("pusher_internal:subscription_succeeded", data, channel)


def encode_subscription_error(channel: str, error_type: str, error: str, status: int) -> bytes:
    """What pusher-js hands to the channel's pusher:subscription_error handlers."""
    data = orjson.dumps({"type": error_type, "error": error, "status": status})
    return encode_event("pusher:subscription_error", data.decode(), channel)


def encode_member_added(channel: str, user_id: str, user_info: Any) -> bytes:
    data = orjson.dumps({"user_id": user_id, "user_info": user_info})
    return encode_event("pusher_internal:member_added", data.decode(), channel)


def encode_member_removed(channel: str, user_id: str) -> bytes:
    data = orjson.dumps({"user_id": user_id})
    return encode_event("pusher_internal:member_removed", data.decode(), channel)


def encode_cache_miss(channel: str) -> bytes:
    return encode_event("pusher:cache_miss", "{}", channel)


def encode_signin_success(user_data: str) -> bytes:
    return encode_event("pusher:signin_success", orjson.dumps({"user_data": user_data}).decode())


PING_FRAME = encode_event("pusher:ping", "{}")
PONG_FRAME = encode_event("pusher:pong", "{}")


# Connecting ---------------------------------------------------------------------------------


def check_handshake(path_key: str, known_key: bool, protocol: str | None) -> CloseCode | None:
    """Decide the fate of a new connection from its URL: None to accept, else the close code.

    The WebSocket upgrade always completes first, so pusher-js sees the Pusher close code
    (and does not retry a 4001 or 4007 in a loop) instead of a bare HTTP failure.
    """
    if not known_key:
        return CloseCode.APP_NOT_FOUND
    if protocol is None or protocol == "":
        return CloseCode.NO_PROTOCOL
    try:
        version = int(protocol)
    except ValueError:
        return CloseCode.UNSUPPORTED_PROTOCOL
    if version not in SUPPORTED_PROTOCOLS:
        return CloseCode.UNSUPPORTED_PROTOCOL
    return None


CLOSE_REASONS: dict[int, str] = {
    CloseCode.APP_NOT_FOUND: "App key not in this relay",
    CloseCode.OVER_QUOTA: "Over connection quota: limits.max_connections",
    CloseCode.PATH_NOT_FOUND: "Path not found: connect to /app/{key}",
    CloseCode.UNSUPPORTED_PROTOCOL: f"Unsupported protocol; this relay speaks {PROTOCOL_VERSION}",
    CloseCode.NO_PROTOCOL: "No protocol version given; add ?protocol=7",
    CloseCode.OVER_CAPACITY: "Client too slow: send queue over its limit",
    CloseCode.TOO_MANY_BAD_FRAMES: "Too many invalid messages",
    CloseCode.RECONNECT: "Relay restarting: reconnect",
    CloseCode.PONG_NOT_RECEIVED: "Pong reply not received",
    CloseCode.CLOSED_FOR_INACTIVITY: "Closed after inactivity",
    CloseCode.MESSAGE_TOO_BIG: "Message too big",
}
