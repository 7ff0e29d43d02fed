"""A node's view of its cluster (broker kind redis): Redis round trips, reconnects, live nodes.

The supervisor's Redis link and its node liveness feed it through plain callables, so this
module knows neither: `round_trip(seconds)` after each command the link times (the link's
`on_round_trip`), `reconnected()` each time the link is back or `reconnects` reading the link's
own count, `node` (this node's id and number, which change when it is swept and joins again)
and `nodes` (NodeLiveness.live_nodes, as JSON) for the list.
/metrics exports it (sidecar_redis_round_trip_seconds, sidecar_redis_reconnects_total,
sidecar_cluster_nodes), `sidecar status` and the dashboard show the node and its peers.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

from sidecar.observe.probe import LATENCY_BUCKETS
from sidecar.observe.snapshot import key

# One Redis round trip on loopback is ~100 us; the same bounds as delivery latency cover it up
# to a command's deadline.
ROUND_TRIP_BUCKETS = LATENCY_BUCKETS


class ClusterStats:
    def __init__(self) -> None:
        self.node: Callable[[], tuple[str, int] | None] = lambda: None
        self.nodes: Callable[[], list[dict[str, Any]]] = list
        self.reconnects: Callable[[], int] = lambda: self._reconnected
        self._reconnected = 0
        self._counts = [0] * (len(ROUND_TRIP_BUCKETS) + 1)  # the last: over the largest bound
        self._total = 0.0

    def round_trip(self, seconds: float) -> None:
        self._counts[bisect.bisect_left(ROUND_TRIP_BUCKETS, seconds)] += 1
        self._total += seconds

    def reconnected(self) -> None:
        self._reconnected += 1

    def write(self, counters: dict[Any, float], gauges: dict[Any, float]) -> None:
        bounds = [*(repr(b) for b in ROUND_TRIP_BUCKETS), "+Inf"]
        for bound, count in zip(bounds, self._counts, strict=True):
            counters[key("redis_round_trip_bucket", le=bound)] = count
        counters[key("redis_round_trip_sum")] = self._total
        counters[key("redis_reconnects")] = self.reconnects()
        gauges[key("cluster_nodes")] = len(self._nodes())

    def as_status(self) -> dict[str, Any]:
        node_id, node_num = self.node() or (None, None)
        return {"node_id": node_id, "node_num": node_num, "nodes": self._nodes()}

    def _nodes(self) -> list[dict[str, Any]]:
        try:
            return self.nodes()
        except Exception:  # a status page must not fail for want of the list
            return []
