"""sidecar.observe.metrics: a Snapshot as Prometheus text, parsed back by prometheus_client."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sidecar.observe.metrics import CATALOGUE, Exposition
from sidecar.observe.probe import LatencyHistogram
from sidecar.observe.snapshot import Snapshot, key


def parse(text: bytes) -> dict[str, list]:
    """family name -> its samples (name, labels, value)."""
    return {f.name: f.samples for f in text_string_to_metric_families(text.decode())}


def value(families: dict[str, list], sample: str, **labels: str) -> float:
    family = sample.removesuffix("_total").removesuffix("_bucket").removesuffix("_count")
    family = family.removesuffix("_sum")
    for s in families[family]:
        if s.name == sample and s.labels == labels:
            return s.value
    raise KeyError((sample, labels))


def test_every_catalogued_metric_is_exported_even_before_anything_happened() -> None:
    families = parse(Exposition().render(Snapshot()))
    for spec in CATALOGUE:
        if spec.name.startswith("certificate_"):
            assert f"sidecar_{spec.name}" not in families  # TLS off: no certificate
            continue
        if spec.labels and not spec.defaults:
            continue  # e.g. per worker: nothing until there is one
        assert f"sidecar_{spec.name}" in families, spec.name
    assert value(families, "sidecar_messages_delivered_total") == 0
    assert value(families, "sidecar_client_events_total") == 0
    assert value(families, "sidecar_subscriptions", kind="presence") == 0
    assert value(families, "sidecar_delivery_latency_seconds_count") == 0
    # The standard ones, from prometheus_client.
    assert "process_cpu_seconds" in families
    assert "python_gc_objects_collected" in families


def test_values_labels_and_a_cumulative_histogram() -> None:
    hist = LatencyHistogram()
    for seconds in (0.0002, 0.0002, 0.003, 9.0):
        hist.observe(seconds)
    snap = Snapshot()
    hist.write(snap.counters)
    snap.counters.update(
        {
            key("messages_delivered"): 1234,
            key("connections_closed", code="4200"): 3,
            key(
                "http_requests", listener="unix", endpoint="/apps/{app_id}/events", status="200"
            ): 9,
            key("worker_cpu_seconds", worker="1"): 2.5,
        }
    )
    snap.gauges.update(
        {
            key("connections"): 17,
            key("channels", kind="presence"): 2,
            key("certificate_expiry_seconds"): 86400.0,
            key("broker_up", kind="pipe"): 1,
        }
    )
    families = parse(Exposition().render(snap))
    assert value(families, "sidecar_messages_delivered_total") == 1234
    assert value(families, "sidecar_connections") == 17
    assert value(families, "sidecar_connections_closed_total", code="4200") == 3
    assert value(families, "sidecar_channels", kind="presence") == 2
    assert value(families, "sidecar_channels", kind="public") == 0
    assert (
        value(
            families,
            "sidecar_http_requests_total",
            listener="unix",
            endpoint="/apps/{app_id}/events",
            status="200",
        )
        == 9
    )
    assert value(families, "sidecar_worker_cpu_seconds_total", worker="1") == 2.5
    assert value(families, "sidecar_certificate_expiry_seconds") == 86400
    assert value(families, "sidecar_broker_up", kind="pipe") == 1
    bucket = "sidecar_delivery_latency_seconds_bucket"
    assert value(families, bucket, le="0.00025") == 2
    assert value(families, bucket, le="0.005") == 3
    assert value(families, bucket, le="5.0") == 3
    assert value(families, bucket, le="+Inf") == 4
    assert value(families, "sidecar_delivery_latency_seconds_count") == 4


def test_no_label_ever_carries_a_channel_name_or_socket_id() -> None:
    allowed = {"code", "kind", "listener", "endpoint", "status", "reason", "worker", "le"}
    for spec in CATALOGUE:
        assert set(spec.labels) <= allowed, spec.name


def test_bad_input_is_counted_by_kind() -> None:
    families = parse(Exposition().render(Snapshot()))
    for kind in ("request", "upgrade", "frame"):
        assert value(families, "sidecar_bad_input_total", kind=kind) == 0
    snap = Snapshot()
    snap.counters[key("bad_input", kind="request")] = 4
    assert value(parse(Exposition().render(snap)), "sidecar_bad_input_total", kind="request") == 4
