"""sidecar.observe.history: per-second rates and latency percentiles from counter totals."""

from __future__ import annotations

import pytest

from sidecar.observe.history import History, quantile
from sidecar.observe.probe import LATENCY_BUCKETS, LatencyHistogram
from sidecar.observe.snapshot import key


def test_quantile_of_nothing_is_none() -> None:
    assert quantile(0.5, [0] * (len(LATENCY_BUCKETS) + 1)) is None


def test_quantile_interpolates_within_the_bucket() -> None:
    bounds = (1.0, 2.0, 4.0)
    assert quantile(0.5, [0, 10, 0, 0], bounds) == pytest.approx(1.5)
    assert quantile(0.25, [10, 0, 0, 0], bounds) == pytest.approx(0.25)
    assert quantile(0.99, [50, 0, 50, 0], bounds) == pytest.approx(2.0 + 2.0 * 0.98)


def test_quantile_past_the_last_bound_is_that_bound() -> None:
    assert quantile(0.99, [0, 0, 0, 5], (1.0, 2.0, 4.0)) == 4.0


def totals(published: int, delivered: int, latencies: list[float]) -> dict:
    hist = LatencyHistogram()
    for seconds in latencies:
        hist.observe(seconds)
    counters: dict = {key("messages_published"): published, key("messages_delivered"): delivered}
    hist.write(counters)
    return counters


def test_points_are_rates_over_the_interval_and_percentiles_of_its_samples() -> None:
    history = History()
    assert history.add(100.0, totals(0, 0, []), 5) is None  # the first call only sets a base
    point = history.add(102.0, totals(10, 1000, [0.0004] * 9 + [0.02]), 6)
    assert point is not None
    assert point.published_per_s == 5.0
    assert point.delivered_per_s == 500.0
    assert point.connections == 6
    assert point.p50_ms is not None and 0.25 < point.p50_ms <= 0.5
    assert point.p99_ms is not None and 10 < point.p99_ms <= 25
    # Nothing timed in the next interval: no percentiles, rates from the difference.
    later = history.add(103.0, totals(10, 1000, [0.0004] * 9 + [0.02]), 6)
    assert later is not None and later.p50_ms is None and later.published_per_s == 0
    assert history.latest() == later
    assert history.average(2)["published_per_s"] == 2.5


def test_history_keeps_a_bounded_number_of_points() -> None:
    history = History(size=3)
    for t in range(10):
        history.add(float(t), totals(t, t, []), 0)
    assert len(history.points) == 3
    assert history.points[-1].time == 9.0
