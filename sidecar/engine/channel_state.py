"""The cluster-wide state of channels: subscription counts and presence members. No I/O.

Every process (each worker and the supervisor) keeps one `ChannelState` and feeds it the same
changes in the same order (sidecar/engine/broker/changes.py), so all of them agree on which channels
are occupied, how many subscriptions each has and who is present, however the connections are
spread over workers. `apply()` returns what changed as transitions: a worker turns them into
frames for its own subscribers (member_added, the answer to a pending presence join), the
supervisor into webhooks through `on_event`.

Who is present is decided here, in order, not by the worker that holds the socket: two workers
letting in the 100th member of a full channel at once is impossible, because one of the two
joins comes first in the shared order and the other finds the channel full.

Each subscription is kept with the process (origin) it came from, so a process that dies has
its share taken back in one step (`OriginGone`) and the members it held leave.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sidecar.config.model import DEFAULT_MAX_PRESENCE_MEMBERS
from sidecar.engine.broker.changes import (
    Change,
    CountDelta,
    MemberJoin,
    MemberLeave,
    OriginGone,
    Reset,
    TerminateUser,
)

log = logging.getLogger("sidecar.channels")


# Transitions --------------------------------------------------------------------------------


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


# The state ----------------------------------------------------------------------------------


class _Member:
    __slots__ = ("info", "sockets")

    def __init__(self, info: Any) -> None:
        self.info = info
        self.sockets = 0


class _Channel:
    __slots__ = ("by_origin", "members", "sockets", "total")

    def __init__(self) -> None:
        self.by_origin: dict[int, int] = {}  # origin -> subscriptions it holds
        self.total = 0
        self.members: dict[str, _Member] = {}  # presence only: user_id -> member, join order
        self.sockets: dict[str, tuple[str, int]] = {}  # presence: socket_id -> (user_id, origin)


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    subscription_count: int
    user_count: int  # presence channels; 0 elsewhere


class ChannelState:
    """Counts and members of every channel of every app, as the ordered changes made them.

    The first PresenceStore (sidecar/engine/presence.py): a replica in every process."""

    def __init__(
        self,
        max_presence_members: int = DEFAULT_MAX_PRESENCE_MEMBERS,
        on_event: EventSink | None = None,
    ) -> None:
        self.max_presence_members = max_presence_members
        # Set where webhooks are sent from (the supervisor, or the single process); called with
        # each channel_occupied, channel_vacated, member_added and member_removed event.
        self.on_event = on_event
        # The debug console's tap (sidecar/observe/console.py), where webhooks are sent from,
        # while a console is open: every batch of transitions. None otherwise.
        self.on_transitions: Callable[[list[Transition]], None] | None = None
        self._apps: dict[str, dict[str, _Channel]] = {}

    # Changes -------------------------------------------------------------------------------

    def apply_all(self, origin: int, changes: list[Change]) -> list[Transition]:
        transitions: list[Transition] = []
        for change in changes:
            transitions += self.apply(origin, change)
        return transitions

    def apply(self, origin: int, change: Change) -> list[Transition]:
        match change:
            case CountDelta():
                return self.count(origin, change)
            case MemberJoin():
                return self.join(origin, change)
            case MemberLeave():
                return self.leave(origin, change)
            case OriginGone(gone):
                return self.release(gone)
            case Reset(snapshot):
                self.restore(snapshot)
                return []
            case TerminateUser():
                return []  # not state: the workers close the user's connections

    def count(self, origin: int, change: CountDelta) -> list[Transition]:
        return self._emit(self._count(change.app_id, change.channel, origin, change.delta))

    def join(self, origin: int, change: MemberJoin) -> list[Transition]:
        return self._emit(self._join(origin, change))

    def leave(self, origin: int, change: MemberLeave) -> list[Transition]:
        return self._emit(self._leave(change.app_id, change.channel, change.socket_id))

    def release(self, origin: int) -> list[Transition]:
        """Everything `origin` held goes (its node is gone)."""
        return self._emit(self._origin_gone(origin))

    def _emit(self, out: list[Transition]) -> list[Transition]:
        if out and self.on_event is not None:
            self._notify(out)
        if out and self.on_transitions is not None:
            try:
                self.on_transitions(out)
            except Exception:  # as in _notify: the state must not fall behind the others
                log.exception("channel transitions observer failed")
        return out

    def _notify(self, transitions: list[Transition]) -> None:
        assert self.on_event is not None
        for transition in transitions:
            event = webhook_event(transition)
            if event is not None:
                try:
                    self.on_event(transition.app_id, event)
                except Exception:
                    # An observer's bug must not leave this process's state behind the others.
                    log.exception("channel event observer failed")

    def _channel(self, app_id: str, channel: str) -> _Channel:
        channels = self._apps.get(app_id)
        if channels is None:
            channels = self._apps[app_id] = {}
        state = channels.get(channel)
        if state is None:
            state = channels[channel] = _Channel()
        return state

    def _add(
        self, app_id: str, name: str, state: _Channel, origin: int, delta: int
    ) -> list[Transition]:
        """Move the count of `origin` by delta (never below zero); occupied/vacated as it goes."""
        held = state.by_origin.get(origin, 0)
        delta = max(delta, -held)
        if delta == 0:
            return []
        before = state.total
        state.total += delta
        if held + delta:
            state.by_origin[origin] = held + delta
        else:
            del state.by_origin[origin]
        if before == 0 and state.total > 0:
            return [Occupied(app_id, name)]
        if state.total == 0:
            del self._apps[app_id][name]
            if not self._apps[app_id]:
                del self._apps[app_id]
            return [Vacated(app_id, name)]
        return []

    def _count(self, app_id: str, channel: str, origin: int, delta: int) -> list[Transition]:
        state = self._channel(app_id, channel)
        out = self._add(app_id, channel, state, origin, delta)
        if state.total == 0 and not out:
            self._drop_if_empty(app_id, channel)
        return out

    def _drop_if_empty(self, app_id: str, channel: str) -> None:
        channels = self._apps.get(app_id)
        if channels is not None and (state := channels.get(channel)) and state.total == 0:
            del channels[channel]
            if not channels:
                del self._apps[app_id]

    def _join(self, origin: int, join: MemberJoin) -> list[Transition]:
        app_id, channel, socket_id, user_id = (
            join.app_id,
            join.channel,
            join.socket_id,
            join.user_id,
        )
        state = self._channel(app_id, channel)
        if socket_id in state.sockets:
            return []
        member = state.members.get(user_id)
        out: list[Transition] = []
        if member is None:
            if len(state.members) >= self.max_presence_members:
                self._drop_if_empty(app_id, channel)
                reason = (
                    f"presence channel {channel!r} is full: "
                    f"{self.max_presence_members} members at most"
                )
                return [JoinRefused(app_id, channel, socket_id, reason)]
            member = state.members[user_id] = _Member(join.user_info)
            out.append(MemberAdded(app_id, channel, user_id, join.user_info, socket_id))
        member.sockets += 1
        state.sockets[socket_id] = (user_id, origin)
        out = self._add(app_id, channel, state, origin, 1) + out
        out.append(JoinAccepted(app_id, channel, socket_id, user_id))
        return out

    def _leave(self, app_id: str, channel: str, socket_id: str) -> list[Transition]:
        state = self._apps.get(app_id, {}).get(channel)
        if state is None or socket_id not in state.sockets:
            return []
        return self._remove_socket(app_id, channel, state, socket_id)

    def _remove_socket(
        self, app_id: str, channel: str, state: _Channel, socket_id: str
    ) -> list[Transition]:
        user_id, origin = state.sockets.pop(socket_id)
        out: list[Transition] = []
        member = state.members[user_id]
        member.sockets -= 1
        if member.sockets == 0:
            del state.members[user_id]
            out.append(MemberRemoved(app_id, channel, user_id))
        return out + self._add(app_id, channel, state, origin, -1)

    def _origin_gone(self, gone: int) -> list[Transition]:
        out: list[Transition] = []
        for app_id, channels in list(self._apps.items()):
            for name, state in list(channels.items()):
                for socket_id, (_, origin) in list(state.sockets.items()):
                    if origin == gone:
                        out += self._remove_socket(app_id, name, state, socket_id)
                held = state.by_origin.get(gone, 0)
                if held:
                    out += self._add(app_id, name, state, gone, -held)
        return out

    # Queries -------------------------------------------------------------------------------

    def info(self, app_id: str, channel: str) -> ChannelInfo | None:
        """None: nobody is subscribed (the channel is not occupied)."""
        state = self._apps.get(app_id, {}).get(channel)
        if state is None or state.total == 0:
            return None
        return ChannelInfo(state.total, len(state.members))

    def channels(self, app_id: str, prefix: str = "") -> Iterator[tuple[str, ChannelInfo]]:
        """Occupied channels of an app whose names start with `prefix`."""
        for name, state in self._apps.get(app_id, {}).items():
            if state.total and name.startswith(prefix):
                yield name, ChannelInfo(state.total, len(state.members))

    def members(self, app_id: str, channel: str) -> dict[str, Any]:
        """user_id -> user_info of a presence channel, in the order they joined."""
        state = self._apps.get(app_id, {}).get(channel)
        if state is None:
            return {}
        return {user_id: member.info for user_id, member in state.members.items()}

    def presence_data(self, app_id: str, channel: str) -> dict[str, Any]:
        """What pusher_internal:subscription_succeeded carries on a presence channel."""
        members = self.members(app_id, channel)
        return {"presence": {"ids": list(members), "hash": members, "count": len(members)}}

    # Whole state, for a process that starts late ------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            app_id: {
                name: {
                    "o": [[o, n] for o, n in state.by_origin.items()],
                    "m": [[u, m.info] for u, m in state.members.items()],
                    "s": [[s, u, o] for s, (u, o) in state.sockets.items()],
                }
                for name, state in channels.items()
            }
            for app_id, channels in self._apps.items()
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        self._apps = {}
        for app_id, channels in snapshot.items():
            for name, saved in channels.items():
                state = self._channel(app_id, name)
                state.by_origin = {int(o): n for o, n in saved["o"]}
                state.total = sum(state.by_origin.values())
                state.members = {u: _Member(info) for u, info in saved["m"]}
                for socket_id, user_id, origin in saved["s"]:
                    state.sockets[socket_id] = (user_id, origin)
                    state.members[user_id].sockets += 1
