"""Rates and latency percentiles over time, from successive counter totals. No I/O.

The admin listener takes a snapshot once a second; each `History.add` turns the difference
from the previous one into a `Point` (messages per second in and out, connections, latency
percentiles of the deliveries timed in that second), and keeps the last few minutes of them
for the dashboard's charts and `sidecar status`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from sidecar.observe.probe import LATENCY_BUCKETS
from sidecar.observe.snapshot import Key, key

# Five minutes at one point a second.
HISTORY_POINTS = 300
QUANTILES = (0.5, 0.9, 0.99)

_BUCKET_KEYS = [key("delivery_latency_bucket", le=repr(b)) for b in LATENCY_BUCKETS] + [
    key("delivery_latency_bucket", le="+Inf")
]


@dataclass(frozen=True, slots=True)
class Point:
    time: float  # wall clock, seconds
    connections: int
    published_per_s: float
    delivered_per_s: float
    # Milliseconds; None when no delivery was timed in the interval.
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def quantile(
    q: float, counts: Sequence[float], bounds: Sequence[float] = LATENCY_BUCKETS
) -> float | None:
    """The q-quantile of per-bucket counts (the last bucket unbounded), interpolated within
    its bucket as Prometheus' histogram_quantile does; None for no observations."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i >= len(bounds):
                return bounds[-1]  # beyond the largest bound: that bound is all we know
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * (rank - seen) / count
        seen += count
    return bounds[-1]


class History:
    def __init__(self, size: int = HISTORY_POINTS) -> None:
        self.points: deque[Point] = deque(maxlen=size)
        self._previous: tuple[float, Mapping[Key, float]] | None = None

    def add(self, now: float, counters: Mapping[Key, float], connections: int) -> Point | None:
        """Record totals taken at `now`; the point for the interval since the previous call."""
        previous, self._previous = self._previous, (now, dict(counters))
        if previous is None:
            return None
        then, before = previous
        elapsed = now - then
        if elapsed <= 0:
            return None

        def rate(name: str) -> float:
            k = key(name)
            return max(0.0, counters.get(k, 0) - before.get(k, 0)) / elapsed

        latency = [max(0.0, counters.get(k, 0) - before.get(k, 0)) for k in _BUCKET_KEYS]
        percentiles = [quantile(q, latency) for q in QUANTILES]
        p50, p90, p99 = (None if p is None else round(p * 1000, 3) for p in percentiles)
        point = Point(
            now,
            connections,
            round(rate("messages_published"), 2),
            round(rate("messages_delivered"), 2),
            p50,
            p90,
            p99,
        )
        self.points.append(point)
        return point

    def latest(self) -> Point | None:
        return self.points[-1] if self.points else None

    def average(self, seconds: int) -> dict[str, float]:
        """Rates over the last `seconds` points, for a steadier figure than one second's."""
        recent = list(self.points)[-seconds:]
        if not recent:
            return {"published_per_s": 0.0, "delivered_per_s": 0.0}
        return {
            "published_per_s": sum(p.published_per_s for p in recent) / len(recent),
            "delivered_per_s": sum(p.delivered_per_s for p in recent) / len(recent),
        }
