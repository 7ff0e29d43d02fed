"""What one relay process reports about itself, and how several reports add up. No I/O.

A `Snapshot` is plain data: counters (only ever grow while the process lives), gauges (a value
now), the busiest channels and the latest published events. A worker process makes one when
asked and sends it as JSON; the supervisor adds the workers' together. Series are keyed by a
name and a tuple of label pairs, so the JSON is small and the merge is one generic loop.

A worker that dies takes its counters with it; `CounterBook` keeps them so the totals the
admin listener reports never go down (a counter that drops reads as a reset to Prometheus).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

Labels = tuple[tuple[str, str], ...]
Key = tuple[str, Labels]

# Busiest channels and latest events kept per report: what the dashboard shows, no more.
TOP_CHANNELS = 10
RECENT_EVENTS = 20


def key(name: str, **labels: str) -> Key:
    return name, tuple(sorted(labels.items()))


@dataclass(frozen=True, slots=True)
class ChannelCount:
    app_id: str
    channel: str
    subscribers: int


@dataclass(frozen=True, slots=True)
class RecentEvent:
    """An accepted publication as the dashboard lists it: never its data, only the size."""

    time: float  # wall clock, seconds
    app_id: str
    channel: str  # the first channel; `more` says how many others
    name: str
    size: int  # bytes of data
    more: int = 0


@dataclass
class Snapshot:
    counters: dict[Key, float] = field(default_factory=dict)
    gauges: dict[Key, float] = field(default_factory=dict)
    channels: list[ChannelCount] = field(default_factory=list)
    events: list[RecentEvent] = field(default_factory=list)
    # Occupied channels by kind, as "app_id channel" (a channel name has no space): a channel
    # with subscribers in two workers is one occupied channel, so the names are sent and
    # `merge` counts their union into the `channels` gauge. Only in full snapshots.
    occupied: dict[str, list[str]] = field(default_factory=dict)

    def counter(self, name: str, **labels: str) -> float:
        return self.counters.get(key(name, **labels), 0)

    def gauge(self, name: str, **labels: str) -> float:
        return self.gauges.get(key(name, **labels), 0)

    def total(self, name: str) -> float:
        """A counter or gauge summed over all its label values."""
        return sum(v for (n, _), v in (*self.counters.items(), *self.gauges.items()) if n == name)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "c": [[n, labels, v] for (n, labels), v in self.counters.items()],
                "g": [[n, labels, v] for (n, labels), v in self.gauges.items()],
                "ch": [[c.app_id, c.channel, c.subscribers] for c in self.channels],
                "ev": [[e.time, e.app_id, e.channel, e.name, e.size, e.more] for e in self.events],
                "oc": self.occupied,
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> Snapshot:
        raw: dict[str, Any] = orjson.loads(data)
        return cls(
            counters={_key(n, labels): float(v) for n, labels, v in raw.get("c", ())},
            gauges={_key(n, labels): float(v) for n, labels, v in raw.get("g", ())},
            channels=[ChannelCount(a, c, int(s)) for a, c, s in raw.get("ch", ())],
            events=[RecentEvent(*e) for e in raw.get("ev", ())],
            occupied={str(k): [str(n) for n in v] for k, v in raw.get("oc", {}).items()},
        )


def _key(name: str, labels: list[list[str]]) -> Key:
    return name, tuple((str(k), str(v)) for k, v in labels)


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Counters and gauges summed, channels' subscribers summed, events interleaved by time,
    occupied channels counted once however many workers have subscribers on them.

    Each process sends its own busiest channels only, so a channel spread thinly over many
    workers can be missing or undercounted; the dashboard's list is a view, not a metric.
    """
    out = Snapshot()
    channels: dict[tuple[str, str], int] = {}
    events: list[RecentEvent] = []
    occupied: dict[str, set[str]] = {}
    for snap in snapshots:
        for kind, names in snap.occupied.items():
            occupied.setdefault(kind, set()).update(names)
        for k, v in snap.counters.items():
            out.counters[k] = out.counters.get(k, 0) + v
        for k, v in snap.gauges.items():
            out.gauges[k] = out.gauges.get(k, 0) + v
        for c in snap.channels:
            channels[c.app_id, c.channel] = channels.get((c.app_id, c.channel), 0) + c.subscribers
        events.extend(snap.events)
    out.channels = busiest((ChannelCount(a, c, n) for (a, c), n in channels.items()), TOP_CHANNELS)
    for kind, channel_names in occupied.items():
        out.gauges[key("channels", kind=kind)] = len(channel_names)
    out.events = sorted(events, key=lambda e: e.time)[-RECENT_EVENTS:]
    return out


def busiest(channels: Iterable[ChannelCount], count: int) -> list[ChannelCount]:
    return heapq.nlargest(count, channels, key=lambda c: (c.subscribers, c.channel))


class CounterBook:
    """The supervisor's running totals over workers that come and go.

    `retire(worker)` folds a dead worker's last report into a base that stays; `totals()` is
    the base plus every live worker's latest counters, never lower than what it said before
    (a worker's last report can be older than its death, and a total must not go back).
    """

    def __init__(self) -> None:
        self._base: dict[Key, float] = {}
        self._latest: dict[int, dict[Key, float]] = {}
        self._reported: dict[Key, float] = {}

    def update(self, worker: int, counters: dict[Key, float]) -> None:
        self._latest[worker] = counters

    def retire(self, worker: int) -> None:
        for k, v in self._latest.pop(worker, {}).items():
            self._base[k] = self._base.get(k, 0) + v

    def totals(self) -> dict[Key, float]:
        totals = dict(self._base)
        for counters in self._latest.values():
            for k, v in counters.items():
                totals[k] = totals.get(k, 0) + v
        reported = self._reported
        for k, v in totals.items():
            if v < reported.get(k, 0):
                totals[k] = reported[k]
        reported.update(totals)
        for k in reported.keys() - totals.keys():
            totals[k] = reported[k]
        return totals
