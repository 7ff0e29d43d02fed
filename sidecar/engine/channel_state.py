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
its share taken back in one step (`OriginGone`) and the members it held leave. With several
nodes (Redis) origins are cluster origins (changes.py: `cluster_origin`): a swept node's whole
share goes at once (`NodeGone`), and a node that reconnected puts its own share back in place of
what the replicas held for it (`Share`).

Webhooks exactly once: with several nodes every node computes the same transitions from the
same order, so a transition's webhook is sent only where the batch that caused it came from
(`node_num`; None on one machine: every transition). The transitions of a `Share` repair
replicas and send none.
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
    NodeGone,
    OriginGone,
    Reset,
    Share,
    TerminateUser,
    node_of,
)
from sidecar.engine.channel_records import ChannelRecord, Member, forget_origins, put_share
from sidecar.engine.transitions import (
    EventSink,
    JoinAccepted,
    JoinRefused,
    MemberAdded,
    MemberRemoved,
    Occupied,
    Transition,
    Vacated,
    webhook_event,
)

log = logging.getLogger("sidecar.channels")


# The state ----------------------------------------------------------------------------------


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
        # This node's number in a cluster (Redis): webhooks only for the transitions its own
        # batches caused. None on one machine.
        self.node_num: int | None = None
        self._apps: dict[str, dict[str, ChannelRecord]] = {}

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
            case NodeGone(node_num):
                return self.release_node(node_num, by=origin)
            case Share(node_num, share):
                return self.replace_share(node_num, share)
            case Reset(snapshot):
                self.restore(snapshot)
                return []
            case TerminateUser():
                return []  # not state: the workers close the user's connections

    def count(self, origin: int, change: CountDelta) -> list[Transition]:
        out = self._count(change.app_id, change.channel, origin, change.delta)
        return self._emit(out, origin)

    def join(self, origin: int, change: MemberJoin) -> list[Transition]:
        return self._emit(self._join(origin, change), origin)

    def leave(self, origin: int, change: MemberLeave) -> list[Transition]:
        out = self._leave(change.app_id, change.channel, change.socket_id)
        return self._emit(out, origin)

    def release(self, origin: int) -> list[Transition]:
        """Everything `origin` held goes (its process is gone). Its own node's hub says so, so
        that node sends the webhooks."""
        out = self._release(lambda held_by: held_by == origin)
        return self._emit(out, origin)

    def release_node(self, node_num: int, by: int) -> list[Transition]:
        """Everything every origin of a swept node held goes; `by` (the origin of the batch, the
        sweeping node's hub) sends the webhooks."""
        out = self._release(lambda held_by: node_of(held_by) == node_num)
        return self._emit(out, by)

    def _webhooks_for(self, origin: int) -> bool:
        """Whether this process sends the webhooks of what a batch from `origin` caused."""
        return self.node_num is None or node_of(origin) == self.node_num

    def _emit(self, out: list[Transition], origin: int | None) -> list[Transition]:
        """Transitions a batch from `origin` caused: sent as webhooks if this process sends
        them (only the supervisor or the single process has on_event; None: never, a share
        put back in place is silent), and observed."""
        if out and origin is not None and self.on_event is not None and self._webhooks_for(origin):
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

    def _channel(self, app_id: str, channel: str) -> ChannelRecord:
        channels = self._apps.get(app_id)
        if channels is None:
            channels = self._apps[app_id] = {}
        state = channels.get(channel)
        if state is None:
            state = channels[channel] = ChannelRecord()
        return state

    def _add(
        self, app_id: str, name: str, state: ChannelRecord, origin: int, delta: int
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
            member = state.members[user_id] = Member(join.user_info)
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
        self, app_id: str, channel: str, state: ChannelRecord, socket_id: str
    ) -> list[Transition]:
        user_id, origin = state.sockets.pop(socket_id)
        out: list[Transition] = []
        member = state.members[user_id]
        member.sockets -= 1
        if member.sockets == 0:
            del state.members[user_id]
            out.append(MemberRemoved(app_id, channel, user_id))
        return out + self._add(app_id, channel, state, origin, -1)

    def _release(self, gone: Callable[[int], bool]) -> list[Transition]:
        """Every subscription and member held by an origin for which `gone` is true goes."""
        out: list[Transition] = []
        for app_id, channels in list(self._apps.items()):
            for name, state in list(channels.items()):
                for socket_id, (_, origin) in list(state.sockets.items()):
                    if gone(origin):
                        out += self._remove_socket(app_id, name, state, socket_id)
                for origin, held in list(state.by_origin.items()):
                    if gone(origin):
                        out += self._add(app_id, name, state, origin, -held)
        return out

    # A node's share (Redis) ---------------------------------------------------------------

    def share_of(self, node_num: int) -> dict[str, Any]:
        """What the origins of one node hold, shaped like `snapshot` (for `Share`)."""
        return self._saved(lambda origin: node_of(origin) == node_num)

    def replace_share(self, node_num: int, share: dict[str, Any]) -> list[Transition]:
        """What the replica held for a node's origins replaced by `share` (from `share_of`):
        the transitions from the old to the new, without webhooks (a repair, not news)."""

        def mine(origin: int) -> bool:
            return node_of(origin) == node_num

        # In a set order (the replicas' transitions come out alike): the node's channels, then
        # those only the share names.
        touched = dict.fromkeys(
            (app_id, name)
            for app_id, channels in self._apps.items()
            for name, held in channels.items()
            if any(mine(o) for o in held.by_origin)
        )
        touched.update(
            dict.fromkeys((app_id, name) for app_id, channels in share.items() for name in channels)
        )
        # Each touched channel's total and members before, to tell what the share changed.
        before: dict[tuple[str, str], tuple[int, list[str]]] = {}
        for app_id, name in touched:
            state = self._apps.get(app_id, {}).get(name)
            before[app_id, name] = (0, []) if state is None else (state.total, list(state.members))
            if state is not None:
                forget_origins(state, mine)
        for app_id, channels in share.items():
            for name, saved in channels.items():
                put_share(self._channel(app_id, name), saved, mine)
        out: list[Transition] = []
        for (app_id, name), (total, members) in before.items():
            out += self._difference(app_id, name, total, members)
        return self._emit(out, None)

    def _difference(
        self, app_id: str, name: str, total: int, members: list[str]
    ) -> list[Transition]:
        """The transitions from a channel's total and members before to what it holds now."""
        state = self._apps.get(app_id, {}).get(name)
        now_total = state.total if state is not None else 0
        now = state.members if state is not None else {}
        out: list[Transition] = []
        if total == 0 and now_total > 0:
            out.append(Occupied(app_id, name))
        out += [MemberRemoved(app_id, name, u) for u in members if u not in now]
        had = set(members)
        for user_id, member in now.items():
            if user_id not in had:
                assert state is not None
                socket_id = next(s for s, (u, _) in state.sockets.items() if u == user_id)
                out.append(MemberAdded(app_id, name, user_id, member.info, socket_id))
        if now_total == 0:
            self._drop_if_empty(app_id, name)
            if total > 0:
                out.append(Vacated(app_id, name))
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
        return self._saved(lambda origin: True)

    def _saved(self, kept: Callable[[int], bool]) -> dict[str, Any]:
        """The state held by the origins `kept` says yes to, as plain JSON-able lists."""
        saved: dict[str, Any] = {}
        for app_id, channels in self._apps.items():
            for name, state in channels.items():
                counts = [[o, n] for o, n in state.by_origin.items() if kept(o)]
                if not counts:
                    continue
                sockets = [[s, u, o] for s, (u, o) in state.sockets.items() if kept(o)]
                users = {u for _, u, _ in sockets}
                members = [[u, m.info] for u, m in state.members.items() if u in users]
                saved.setdefault(app_id, {})[name] = {"o": counts, "m": members, "s": sockets}
        return saved

    def restore(self, snapshot: dict[str, Any]) -> None:
        self._apps = {}
        for app_id, channels in snapshot.items():
            for name, saved in channels.items():
                state = self._channel(app_id, name)
                state.by_origin = {int(o): n for o, n in saved["o"]}
                state.total = sum(state.by_origin.values())
                state.members = {u: Member(info) for u, info in saved["m"]}
                for socket_id, user_id, origin in saved["s"]:
                    state.sockets[socket_id] = (user_id, origin)
                    state.members[user_id].sockets += 1
