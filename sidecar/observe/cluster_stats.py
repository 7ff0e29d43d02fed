"""A node's view of its cluster (broker kind redis): Redis round trips, reconnects, live nodes.

The supervisor's Redis link and its node liveness feed it through plain callables, so this
module knows neither: `round_trip(seconds)` after each command the link times (the link's
`on_round_trip`), `reconnects` reading the link's count of reconnects, `node` (this node's id
and number, which change when it is swept and joins again) and `nodes`
(NodeLiveness.live_nodes, as JSON) for the list.
/metrics exports it (sidecar_redis_round_trip_seconds, sidecar_redis_reconnects_total,
sidecar_cluster_nodes), `sidecar status` and the dashboard show the node and its peers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sidecar.observe.probe import LatencyHistogram
from sidecar.observe.snapshot import key


class ClusterStats:
    def __init__(self) -> None:
        self.node: Callable[[], tuple[str, int] | None] = lambda: None
        self.nodes: Callable[[], list[dict[str, Any]]] = list
        self.reconnects: Callable[[], int] = lambda: 0
        # One Redis round trip on loopback is ~100 us; the buckets of delivery latency cover
        # it up to a command's deadline.
        self.round_trips = LatencyHistogram("redis_round_trip")
        self.round_trip = self.round_trips.observe

    def write(self, counters: dict[Any, float], gauges: dict[Any, float]) -> None:
        self.round_trips.write(counters)
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
