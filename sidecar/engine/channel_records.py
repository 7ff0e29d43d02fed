"""What `ChannelState` keeps per channel, and the silent edits a node's share makes to it.

The records are ChannelState's own (sidecar/engine/channel_state.py): only it and the share
helpers here touch them, and these helpers produce no transitions: ChannelState compares the
channel before and after.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Member:
    __slots__ = ("info", "sockets")

    def __init__(self, info: Any) -> None:
        self.info = info
        self.sockets = 0


class ChannelRecord:
    __slots__ = ("by_origin", "members", "sockets", "total")

    def __init__(self) -> None:
        self.by_origin: dict[int, int] = {}  # origin -> subscriptions it holds
        self.total = 0
        self.members: dict[str, Member] = {}  # presence only: user_id -> member, join order
        self.sockets: dict[str, tuple[str, int]] = {}  # presence: socket_id -> (user_id, origin)


def forget_origins(state: ChannelRecord, mine: Callable[[int], bool]) -> None:
    """A node's subscriptions and sockets out of a channel, silently (totals kept right)."""
    for socket_id, (user_id, origin) in list(state.sockets.items()):
        if mine(origin):
            del state.sockets[socket_id]
            member = state.members[user_id]
            member.sockets -= 1
            if member.sockets == 0:
                del state.members[user_id]
    for origin, held in list(state.by_origin.items()):
        if mine(origin):
            del state.by_origin[origin]
            state.total -= held


def put_share(state: ChannelRecord, saved: dict[str, Any], mine: Callable[[int], bool]) -> None:
    """A channel's saved share added, silently; only what belongs to `mine` origins."""
    for origin, held in saved.get("o", ()):
        if mine(origin) and held > 0:
            state.by_origin[origin] = state.by_origin.get(origin, 0) + held
            state.total += held
    infos = {user_id: info for user_id, info in saved.get("m", ())}
    for socket_id, user_id, origin in saved.get("s", ()):
        if mine(origin) and socket_id not in state.sockets:
            member = state.members.get(user_id)
            if member is None:
                member = state.members[user_id] = Member(infos.get(user_id))
            member.sockets += 1
            state.sockets[socket_id] = (user_id, origin)
