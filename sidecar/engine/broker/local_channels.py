"""Which channels a node's workers have subscribers for: when the node subscribes in Redis.

Sans-IO, kept by the Redis hub (redis.py) from what its workers hand over, before any of it is
published: a channel whose count goes 0 -> 1 is to be subscribed (before the batch that needs
it reaches the log), one that goes back to 0 is to be unsubscribed. Counts are kept per origin
(a worker) so that a worker that is lost gives back exactly its share.

A non-presence subscribe of a worker numbers the worker's 0 -> 1 transitions of a channel; the
worker counts them with the same SubscribeCounts from the same CountDelta frames (pipe.py:
WorkerBroker), so the hub's READY (app_id, channel, serial) is understood as "your subscribe
number `serial`".
Presence joins count for the node's subscription but need no READY: they are answered on
their echo from the log, which comes after the subscription.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sidecar.engine.broker.changes import Change, CountDelta, MemberJoin, MemberLeave

Key = tuple[str, str]  # (app_id, channel)


@dataclass
class Needs:
    """What a batch of changes asks of the node's Redis subscriptions."""

    subscribe: set[Key] = field(default_factory=set)  # 0 -> 1 for the node
    unsubscribe: set[Key] = field(default_factory=set)  # back to 0 for the node
    ready: list[tuple[int, str, str, int]] = field(default_factory=list)  # origin, key, serial


class SubscribeCounts:
    """One worker's subscriptions per channel (its CountDelta sums), its 0 -> 1 steps numbered."""

    __slots__ = ("counts", "serial")

    def __init__(self) -> None:
        self.counts: dict[Key, int] = {}
        self.serial = 0  # 0 -> 1 steps so far

    def add(self, key: Key, delta: int) -> tuple[int, int | None]:
        """How much the channel's count changed, and the number of its 0 -> 1 step if it took
        one (None otherwise)."""
        counts = self.counts
        before = counts.get(key, 0)
        after = before + delta
        if after <= 0:
            counts.pop(key, None)
            return -before, None
        counts[key] = after
        if before > 0:
            return after - before, None
        self.serial += 1
        return after - before, self.serial


class LocalChannels:
    def __init__(self) -> None:
        self._totals: dict[Key, int] = {}  # the node's subscribers (and members) per channel
        self._counts: dict[int, SubscribeCounts] = {}  # origin -> its subscriptions
        self._members: dict[tuple[str, str, str], int] = {}  # (app, channel, socket) -> origin

    def total(self, key: Key) -> int:
        return self._totals.get(key, 0)

    def channels(self) -> list[Key]:
        """Every channel the node has subscribers for."""
        return list(self._totals)

    def apply(self, origin: int, changes: Iterable[Change]) -> Needs:
        needs = Needs()
        for change in changes:
            if isinstance(change, CountDelta):
                key = (change.app_id, change.channel)
                counts = self._counts.get(origin)
                if counts is None:
                    counts = self._counts[origin] = SubscribeCounts()
                changed, serial = counts.add(key, change.delta)
                if serial is not None:
                    needs.ready.append((origin, key[0], key[1], serial))
                self._add(key, changed, needs)
            elif isinstance(change, MemberJoin):
                member = (change.app_id, change.channel, change.socket_id)
                if member not in self._members:
                    self._members[member] = origin
                    self._add((change.app_id, change.channel), 1, needs)
            elif isinstance(change, MemberLeave):
                member = (change.app_id, change.channel, change.socket_id)
                if self._members.pop(member, None) is not None:
                    self._add((change.app_id, change.channel), -1, needs)
        return needs

    def release(self, origin: int) -> Needs:
        """A worker is gone: its counts and members no longer hold any channel."""
        needs = Needs()
        counts = self._counts.pop(origin, None)
        if counts is not None:
            for key, count in counts.counts.items():
                self._add(key, -count, needs)
        for member in [m for m, held_by in self._members.items() if held_by == origin]:
            del self._members[member]
            self._add((member[0], member[1]), -1, needs)
        return needs

    def _add(self, key: Key, delta: int, needs: Needs) -> None:
        if not delta:
            return
        before = self._totals.get(key, 0)
        after = before + delta
        if after > 0:
            self._totals[key] = after
            if before <= 0:
                needs.subscribe.add(key)
                needs.unsubscribe.discard(key)
        else:
            self._totals.pop(key, None)
            if before > 0:
                needs.unsubscribe.add(key)
                needs.subscribe.discard(key)
