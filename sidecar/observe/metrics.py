"""Prometheus exposition: a Snapshot rendered as metric families, with the standard ones.

Every metric Sidecar exports is in CATALOGUE, with its help text and labels; a series the
relay did not report (a hook it does not have yet, webhooks not configured) is exported as
0 so the names are always there to alert on. Labels only ever take values from bounded sets:
close codes from a fixed list, channel kinds, routes of the API, worker numbers. Never a
channel name or a socket id.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sidecar.observe.bad_input import KINDS as BAD_INPUT_KINDS
from sidecar.observe.probe import KINDS, LATENCY_BUCKETS
from sidecar.observe.snapshot import Snapshot

PREFIX = "sidecar_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Spec:
    name: str
    kind: Literal["counter", "gauge"]
    help: str
    labels: tuple[str, ...] = ()
    # Label values always exported (0 when not reported).
    defaults: tuple[tuple[str, ...], ...] = ()


_KIND_DEFAULTS = tuple((k,) for k in KINDS)

CATALOGUE = (
    Spec("connections", "gauge", "WebSocket connections open now"),
    Spec("connections_opened", "counter", "WebSocket connections accepted"),
    Spec(
        "connections_closed",
        "counter",
        "WebSocket connections closed, by close code (1006: no close frame; other: a code "
        "not in Sidecar's list; unknown: the relay does not count codes)",
        ("code",),
    ),
    Spec(
        "subscriptions",
        "gauge",
        "Channel subscriptions now, by channel kind",
        ("kind",),
        _KIND_DEFAULTS,
    ),
    Spec("channels", "gauge", "Occupied channels now, by channel kind", ("kind",), _KIND_DEFAULTS),
    Spec(
        "messages_published",
        "counter",
        "Events accepted from publishers over the HTTP API (one per event, however many channels)",
    ),
    Spec("published_bytes", "counter", "Bytes of event data accepted (as JSON-escaped text)"),
    Spec(
        "messages_delivered",
        "counter",
        "Events handed to subscribers: one per subscriber per event (not protocol frames)",
    ),
    Spec("delivered_bytes", "counter", "Bytes of the frames of events handed to subscribers"),
    Spec("send_queue_bytes", "gauge", "Bytes waiting in connections' send queues now"),
    Spec("slow_client_closes", "counter", "Connections closed with 4100: send queue full"),
    Spec("client_events", "counter", "Client events accepted from browsers"),
    Spec(
        "client_events_rate_limited",
        "counter",
        "Client events refused with 4301: over the connection's rate",
    ),
    Spec(
        "subscriptions_rate_limited",
        "counter",
        "Subscribe and unsubscribe frames refused with 4301: over the connection's rate "
        "(limits.subscriptions_per_second, limits.presence_joins_per_second)",
    ),
    Spec(
        "connections_over_ip_limit",
        "counter",
        "Browser-port connections refused: over limits.max_connections_per_ip",
    ),
    Spec(
        "accept_out_of_files",
        "counter",
        "Times a listener could not accept for want of a file descriptor (EMFILE/ENFILE) "
        "and paused; the clients wait in the backlog",
        ("listener",),
        (("tls",), ("unix",), ("http",), ("admin",)),
    ),
    Spec(
        "http_requests",
        "counter",
        "HTTP API requests answered, by listener (unix, tls), route and status",
        ("listener", "endpoint", "status"),
    ),
    Spec(
        "bad_input",
        "counter",
        "Bad input from clients, logged at info (rate-limited): requests aiohttp could not "
        "parse, WebSocket handshakes refused at the edge, WebSocket frames refused",
        ("kind",),
        tuple((k,) for k in BAD_INPUT_KINDS),
    ),
    Spec("webhook_events_sent", "counter", "Webhook events delivered (a 2xx answer)"),
    Spec("webhook_requests_sent", "counter", "Webhook requests that got a 2xx answer"),
    Spec(
        "webhook_failed_attempts",
        "counter",
        "Webhook requests that failed (no 2xx answer, refused, timed out); retries count",
    ),
    Spec(
        "webhook_events_dropped",
        "counter",
        "Webhook events given up: queue full, past the retry horizon, or left at shutdown",
        ("reason",),
        (("full",), ("expired",), ("at_close",)),
    ),
    Spec(
        "broker_up",
        "gauge",
        "1 when the broker is reachable (worker pipes attached; with redis, the link up too)",
        ("kind",),
    ),
    Spec(
        "redis_reconnects",
        "counter",
        "Times the node's link to Redis was made again after it was lost (broker kind redis)",
    ),
    Spec(
        "cluster_nodes",
        "gauge",
        "Nodes of the cluster with a live heartbeat, this one included (broker kind redis)",
    ),
    Spec("workers_alive", "gauge", "Relay worker processes running"),
    Spec("workers_configured", "gauge", "Relay worker processes configured"),
    Spec("worker_restarts", "counter", "Relay worker processes started again after dying"),
    Spec("worker_cpu_seconds", "counter", "CPU time (user + system) of each worker", ("worker",)),
    Spec("worker_resident_memory_bytes", "gauge", "Resident memory of each worker", ("worker",)),
    Spec("certificate_expiry_seconds", "gauge", "Seconds until the TLS certificate in use expires"),
    Spec("certificate_valid", "gauge", "1 when the TLS certificate in use is readable and current"),
)
LATENCY = (
    "delivery_latency_seconds",
    "Sampled: from a publication accepted by the publish API to its frame handed to the last "
    "subscriber of a relay process (written, or queued behind that connection's earlier frames)",
)
ROUND_TRIP = (
    "redis_round_trip_seconds",
    "Round trips of the node's commands to Redis, as the link timed them (broker kind redis)",
)
# Present only when TLS is on; everything else is always exported.
OPTIONAL = frozenset(("certificate_expiry_seconds", "certificate_valid"))


def families(snap: Snapshot) -> Iterator[Metric]:
    for spec in CATALOGUE:
        source = snap.counters if spec.kind == "counter" else snap.gauges
        series = {
            tuple(dict(labels).get(name, "") for name in spec.labels): value
            for (name, labels), value in source.items()
            if name == spec.name
        }
        if not series and spec.name in OPTIONAL:
            continue
        if not spec.labels and not series:
            series[()] = 0
        for values in spec.defaults:
            series.setdefault(values, 0)
        family_type = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
        family = family_type(PREFIX + spec.name, spec.help, labels=spec.labels)
        for values, value in sorted(series.items()):
            family.add_metric(list(values), value)
        yield family
    yield histogram_family(snap, LATENCY, "delivery_latency")
    yield histogram_family(snap, ROUND_TRIP, "redis_round_trip")


def histogram_family(
    snap: Snapshot, described: tuple[str, str], counted_as: str
) -> HistogramMetricFamily:
    """A histogram from the snapshot's per-bucket counters `{counted_as}_bucket` and `_sum`."""
    bounds = [*(repr(b) for b in LATENCY_BUCKETS), "+Inf"]
    cumulative = 0.0
    buckets = []
    for bound in bounds:
        cumulative += snap.counter(f"{counted_as}_bucket", le=bound)
        buckets.append((bound, cumulative))
    name, doc = described
    return HistogramMetricFamily(
        PREFIX + name, doc, buckets=buckets, sum_value=snap.counter(f"{counted_as}_sum")
    )


class SnapshotCollector(Collector):
    """Renders whatever snapshot was set last; set it just before each exposition."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def collect(self) -> Iterator[Metric]:
        return families(self.snapshot)


class Exposition:
    """A registry of Sidecar's metrics and the standard process, platform and GC ones (of
    the process serving the admin listener; each worker's CPU and memory are Sidecar's)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._collector = SnapshotCollector()
        self.registry.register(self._collector)

    def render(self, snap: Snapshot) -> bytes:
        # Synchronous from here to the end: two scrapes cannot interleave their snapshots.
        self._collector.snapshot = snap
        return generate_latest(self.registry)
