"""What a change to the channel state did: the transitions `ChannelState` returns. No I/O.

A worker turns them into frames for its own subscribers (member_added, the answer to a pending
presence join), the process that sends webhooks into webhook events (`webhook_event`), the
debug console into its items.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Occupied:
    app_id: str
    channel: str


@dataclass(frozen=True, slots=True)
class Vacated:
    app_id: str
    channel: str


@dataclass(frozen=True, slots=True)
class MemberAdded:
    """A user's first socket joined; `socket_id` is that socket, which is not told of itself."""

    app_id: str
    channel: str
    user_id: str
    user_info: Any
    socket_id: str


@dataclass(frozen=True, slots=True)
class MemberRemoved:
    """A user's last socket left."""

    app_id: str
    channel: str
    user_id: str


@dataclass(frozen=True, slots=True)
class JoinAccepted:
    """A socket is in: its worker answers it with subscription_succeeded and the members."""

    app_id: str
    channel: str
    socket_id: str
    user_id: str


@dataclass(frozen=True, slots=True)
class JoinRefused:
    app_id: str
    channel: str
    socket_id: str
    reason: str


Transition = Occupied | Vacated | MemberAdded | MemberRemoved | JoinAccepted | JoinRefused
# Webhook-shaped events: (app_id, {"name": "channel_occupied", "channel": ...}).
EventSink = Callable[[str, dict[str, Any]], None]


def webhook_event(transition: Transition) -> dict[str, Any] | None:
    """The Pusher webhook event for a transition, or None when webhooks have none for it."""
    match transition:
        case Occupied(_, channel):
            return {"name": "channel_occupied", "channel": channel}
        case Vacated(_, channel):
            return {"name": "channel_vacated", "channel": channel}
        case MemberAdded(_, channel, user_id, _, _):
            return {"name": "member_added", "channel": channel, "user_id": user_id}
        case MemberRemoved(_, channel, user_id):
            return {"name": "member_removed", "channel": channel, "user_id": user_id}
    return None
