"""sidecar.observe.cluster_stats: what the Redis link and the liveness report, for /metrics and
`sidecar status` (fed through plain callables)."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from sidecar.observe.cluster_stats import ClusterStats
from sidecar.observe.metrics import Exposition
from sidecar.observe.observer import Observer
from sidecar.observe.snapshot import Snapshot

NODES = [
    {"node_num": 7, "node_id": "web1-100-ab", "host": "web1", "pid": 100, "workers": 2},
    {"node_num": 9, "node_id": "web2-200-cd", "host": "web2", "pid": 200, "workers": 1},
]


def samples(observer: Observer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    snapshot = Snapshot()
    observer._add_own(snapshot)  # this process's own part of a collection: the cluster's
    text = Exposition().render(snapshot).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_round_trips_reconnects_and_nodes_reach_the_metrics() -> None:
    observer = Observer(None, workers=2, broker="redis")
    stats = observer.cluster = ClusterStats()
    stats.nodes = lambda: NODES
    for seconds in (0.00008, 0.0003, 0.0003, 2.0):
        stats.round_trip(seconds)  # as the link calls it
    stats.reconnects = lambda: 1  # the link's own count
    seen = samples(observer)
    assert seen[("sidecar_redis_round_trip_seconds_bucket", (("le", "0.0001"),))] == 1
    assert seen[("sidecar_redis_round_trip_seconds_bucket", (("le", "0.0005"),))] == 3
    assert seen[("sidecar_redis_round_trip_seconds_bucket", (("le", "+Inf"),))] == 4
    assert abs(seen[("sidecar_redis_round_trip_seconds_sum", ())] - 2.00068) < 1e-9
    assert seen[("sidecar_redis_reconnects_total", ())] == 1
    stats.reconnects = lambda: 5
    assert samples(observer)[("sidecar_redis_reconnects_total", ())] == 5
    assert seen[("sidecar_cluster_nodes", ())] == 2


def test_one_machine_exports_the_names_at_zero() -> None:
    seen = samples(Observer(None, workers=1, broker="memory"))
    assert seen[("sidecar_redis_reconnects_total", ())] == 0
    assert seen[("sidecar_cluster_nodes", ())] == 0
    assert seen[("sidecar_redis_round_trip_seconds_count", ())] == 0


def test_status_names_the_node_and_a_failing_list_costs_nothing() -> None:
    stats = ClusterStats()
    stats.node = lambda: ("web1-100-ab", 7)
    stats.nodes = lambda: NODES
    assert stats.as_status() == {"node_id": "web1-100-ab", "node_num": 7, "nodes": NODES}

    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("not yet")

    stats.nodes = broken
    assert stats.as_status()["nodes"] == []
