"""Who may subscribe to what: channel kinds, authorization, presence channel_data. No I/O.

Prefixes are matched at the start of the name only: `not-private-x` is a public channel.
A refusal is a `SubscriptionRefused`, which the relay answers with pusher:subscription_error on
that channel; the connection and its other subscriptions are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from sidecar.config.model import AppConfig
from sidecar.protocol.pusher import USER_CHANNEL_PREFIX, Subscribe
from sidecar.protocol.signatures import SignatureError, channel_string, verify_auth

# A user id is sent to every member and kept per member; the Pusher libraries refuse longer.
MAX_USER_ID_LENGTH = 200
# A member's user_info is a small record. It travels inside the broker's changes and inside
# every subscription_succeeded, a few levels deeper each time, and the JSON encoder stops at 255
# levels: deeper info would fail far from here, so it is refused here.
MAX_USER_INFO_DEPTH = 32
CACHE_PREFIXES = ("cache-", "private-cache-", "private-encrypted-cache-", "presence-cache-")


class Kind(Enum):
    PUBLIC = "public"
    PRIVATE = "private"
    ENCRYPTED = "encrypted"  # private too; payloads are end-to-end encrypted, passed untouched
    PRESENCE = "presence"
    USER = "user"  # #server-to-user-{id}: only that signed-in user


def channel_kind(channel: str) -> Kind:
    if channel.startswith("private-encrypted-"):
        return Kind.ENCRYPTED
    if channel.startswith("private-"):
        return Kind.PRIVATE
    if channel.startswith("presence-"):
        return Kind.PRESENCE
    if channel.startswith(USER_CHANNEL_PREFIX):
        return Kind.USER
    return Kind.PUBLIC


def is_cache(channel: str) -> bool:
    return channel.startswith(CACHE_PREFIXES)


def is_presence(channel: str) -> bool:
    return channel.startswith("presence-")


class SubscriptionRefused(Exception):
    """pusher:subscription_error data: {type, error, status}."""

    def __init__(self, message: str, status: int = 401, error_type: str = "AuthError") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type


@dataclass(frozen=True, slots=True)
class Presence:
    """Who a presence subscription says it is, from its signed channel_data."""

    user_id: str
    user_info: Any = None


def parse_channel_data(channel_data: str | None, max_user_info_bytes: int) -> Presence:
    if channel_data is None:
        raise SubscriptionRefused(
            "channel_data is missing: a presence subscription needs the user_id (and "
            "user_info) your auth endpoint signed",
            status=400,
        )
    try:
        data = orjson.loads(channel_data)
    except orjson.JSONDecodeError:
        raise SubscriptionRefused("channel_data is not JSON", status=400) from None
    if not isinstance(data, dict):
        raise SubscriptionRefused("channel_data must be a JSON object", status=400)
    user_id = data.get("user_id")
    if isinstance(user_id, int | float) and not isinstance(user_id, bool):
        # Pusher's libraries accept numbers; members are keyed by the string.
        user_id = str(int(user_id)) if float(user_id).is_integer() else str(user_id)
    if not isinstance(user_id, str) or not user_id:
        raise SubscriptionRefused(
            "channel_data has no user_id (a non-empty string or a number)", status=400
        )
    if len(user_id) > MAX_USER_ID_LENGTH:
        raise SubscriptionRefused(
            f"channel_data user_id is over {MAX_USER_ID_LENGTH} characters", status=400
        )
    user_info = data.get("user_info")
    if user_info is not None:
        if _depth(user_info) > MAX_USER_INFO_DEPTH:
            raise SubscriptionRefused(
                f"channel_data user_info is nested over {MAX_USER_INFO_DEPTH} levels deep",
                status=400,
            )
        size = len(orjson.dumps(user_info))
        if size > max_user_info_bytes:
            raise SubscriptionRefused(
                f"channel_data user_info is {size} bytes, over the limit of {max_user_info_bytes}",
                status=413,
            )
    return Presence(user_id, user_info)


def _depth(value: Any) -> int:
    """How deeply a decoded JSON value nests (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            level += 1
            deepest = max(deepest, level)
            if level > MAX_USER_INFO_DEPTH:
                break
            stack.extend((child, level) for child in item)
    return deepest


def _signed_with_data(app: AppConfig, socket_id: str, subscribe: Subscribe) -> bool:
    try:
        verify_auth(
            subscribe.auth,
            key=app.key,
            secret=app.secret,
            signed=channel_string(socket_id, subscribe.channel, subscribe.channel_data),
            what="socket_id:channel_name:channel_data",
        )
    except SignatureError:
        return False
    return True


def authorize(
    app: AppConfig,
    socket_id: str,
    subscribe: Subscribe,
    *,
    signed_in_user: str | None,
    max_user_info_bytes: int,
) -> Presence | None:
    """Allow a subscription (with the member it makes on presence) or raise SubscriptionRefused."""
    channel = subscribe.channel
    kind = channel_kind(channel)
    if kind is Kind.PUBLIC:
        return None
    if kind is Kind.USER:
        if signed_in_user is None or channel != USER_CHANNEL_PREFIX + signed_in_user:
            raise SubscriptionRefused(
                f"{channel!r} is only for the user it names, signed in with pusher:signin"
            )
        return None
    presence = kind is Kind.PRESENCE
    try:
        verify_auth(
            subscribe.auth,
            key=app.key,
            secret=app.secret,
            signed=channel_string(socket_id, channel, subscribe.channel_data if presence else None),
            what="socket_id:channel_name:channel_data" if presence else "socket_id:channel_name",
        )
    except SignatureError as exc:
        # The pusher server libraries sign a private channel's custom data too when the app
        # passes it (`authenticate(socket_id, custom_data)`), and pusher-js then sends it as
        # channel_data: that signature is as good as the plain one.
        if (
            presence
            or subscribe.channel_data is None
            or not _signed_with_data(app, socket_id, subscribe)
        ):
            raise SubscriptionRefused(str(exc)) from None
    if presence:
        return parse_channel_data(subscribe.channel_data, max_user_info_bytes)
    return None
