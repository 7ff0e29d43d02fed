"""Rules for what a browser may send beyond subscriptions: client events and sign-in. No I/O.

Each refusal is a ProtocolError: a pusher:error on the connection, which stays open.
"""

from __future__ import annotations

import re
from collections.abc import Container
from typing import Any

import orjson

from sidecar.config.model import AppConfig
from sidecar.engine.broker.base import Publication
from sidecar.engine.session import RateLimiter, Session
from sidecar.protocol.channel_rules import MAX_USER_ID_LENGTH, Kind, channel_kind
from sidecar.protocol.pusher import ClientEvent, ErrorCode, ProtocolError, Signin
from sidecar.protocol.signatures import SignatureError, user_string, verify_auth

# A signed-in user gets the channel `#server-to-user-{id}`: the id must fit in a channel name.
USER_ID_RE = re.compile(r"[A-Za-z0-9_\-=@,.;]+")


def check_client_event(app: AppConfig, event: ClientEvent, subscriptions: Container[str]) -> None:
    """Raise ProtocolError unless this connection may send this client event now."""
    channel = event.channel
    kind = channel_kind(channel)
    if kind not in (Kind.PRIVATE, Kind.PRESENCE, Kind.ENCRYPTED):
        raise ProtocolError(
            f"client events are only allowed on private and presence channels; "
            f"{channel!r} is {'public' if kind is Kind.PUBLIC else 'a user channel'}"
        )
    if kind is Kind.ENCRYPTED:
        # The relay cannot encrypt for the other subscribers; pusher-js refuses them too.
        raise ProtocolError(f"client events are not supported on encrypted channels ({channel!r})")
    if not app.client_events:
        raise ProtocolError("client events are not enabled for this app (apps[].client_events)")
    if channel not in subscriptions:
        raise ProtocolError(f"not subscribed to {channel!r}")


def accept_client_event(
    app: AppConfig,
    socket_id: str,
    event: ClientEvent,
    subscriptions: Container[str],
    session: Session,
    per_second: int,
    now: float,
) -> tuple[Publication, dict[str, Any]]:
    """The publication a client event becomes (the sender left out of its delivery) and its
    client_event webhook, or ProtocolError: refused, or 4301 over the connection's rate."""
    check_client_event(app, event, subscriptions)
    if session.limiter is None:
        session.limiter = RateLimiter(per_second, now)
    if not session.limiter.allow(now):
        raise ProtocolError(
            f"client event refused: over the limit of {per_second} per second",
            ErrorCode.CLIENT_EVENT_RATE_LIMITED,
        )
    channel = event.channel
    user_id = session.members.get(channel)  # presence channels say who sent it
    publication = Publication.of(app.id, (channel,), event.event, event.data, socket_id, user_id)
    report: dict[str, Any] = {
        "name": "client_event",
        "channel": channel,
        "event": event.event,
        "data": event.data,
        "socket_id": socket_id,
    }
    if user_id is not None:
        report["user_id"] = user_id
    return publication, report


def check_signin(app: AppConfig, socket_id: str, signin: Signin) -> str:
    """The user id a pusher:signin proves, or ProtocolError (code 4009) saying why not."""
    try:
        verify_auth(
            signin.auth,
            key=app.key,
            secret=app.secret,
            signed=user_string(socket_id, signin.user_data),
            what="socket_id::user::user_data",
        )
    except SignatureError as exc:
        raise ProtocolError(f"pusher:signin refused: {exc}", ErrorCode.UNAUTHORIZED) from None
    try:
        user = orjson.loads(signin.user_data)
    except orjson.JSONDecodeError:
        user = None
    user_id = user.get("id") if isinstance(user, dict) else None
    if not isinstance(user_id, str) or not user_id:
        raise ProtocolError(
            "pusher:signin refused: user_data must be a JSON object with a non-empty string id",
            ErrorCode.UNAUTHORIZED,
        )
    if len(user_id) > MAX_USER_ID_LENGTH or USER_ID_RE.fullmatch(user_id) is None:
        raise ProtocolError(
            f"pusher:signin refused: user id must be at most {MAX_USER_ID_LENGTH} characters "
            "of A-Z a-z 0-9 _ - = @ , . ;",
            ErrorCode.UNAUTHORIZED,
        )
    return user_id
