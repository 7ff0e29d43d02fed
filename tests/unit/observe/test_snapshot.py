"""sidecar.observe.snapshot: reports as JSON, added up over workers, totals that never go down."""

from __future__ import annotations

from sidecar.observe.snapshot import (
    RECENT_EVENTS,
    TOP_CHANNELS,
    ChannelCount,
    CounterBook,
    RecentEvent,
    Snapshot,
    key,
    merge,
)


def test_key_sorts_labels_so_order_never_matters() -> None:
    assert key("x", b="2", a="1") == key("x", a="1", b="2") == ("x", (("a", "1"), ("b", "2")))


def test_json_round_trip_keeps_everything() -> None:
    snap = Snapshot(
        counters={key("messages_delivered"): 12, key("http_requests", status="200"): 3},
        gauges={key("channels", kind="public"): 2},
        channels=[ChannelCount("1", "news", 7)],
        events=[RecentEvent(1.5, "1", "news", "created", 42, 2)],
        occupied={"public": ["1 news"], "private": []},
    )
    back = Snapshot.from_json(snap.to_json())
    assert back == snap
    assert back.counter("http_requests", status="200") == 3
    assert back.gauge("channels", kind="public") == 2
    assert back.total("http_requests") == 3


def test_merge_adds_counters_gauges_and_the_same_channel_across_workers() -> None:
    a = Snapshot(
        counters={key("messages_delivered"): 10},
        gauges={key("connections"): 3},
        channels=[ChannelCount("1", "news", 2), ChannelCount("1", "only-a", 1)],
        events=[RecentEvent(2.0, "1", "news", "b", 1)],
    )
    b = Snapshot(
        counters={key("messages_delivered"): 5, key("slow_client_closes"): 1},
        gauges={key("connections"): 4},
        channels=[ChannelCount("1", "news", 5)],
        events=[RecentEvent(1.0, "1", "news", "a", 1)],
    )
    merged = merge([a, b])
    assert merged.counter("messages_delivered") == 15
    assert merged.counter("slow_client_closes") == 1
    assert merged.gauge("connections") == 7
    assert merged.channels[0] == ChannelCount("1", "news", 7)
    assert [e.name for e in merged.events] == ["a", "b"]  # oldest first


def test_merge_keeps_only_the_busiest_and_the_latest() -> None:
    many = Snapshot(
        channels=[ChannelCount("1", f"c{i}", i) for i in range(TOP_CHANNELS * 3)],
        events=[RecentEvent(float(i), "1", "c", f"e{i}", 1) for i in range(RECENT_EVENTS * 2)],
    )
    merged = merge([many])
    assert len(merged.channels) == TOP_CHANNELS
    assert merged.channels[0].subscribers == TOP_CHANNELS * 3 - 1
    assert len(merged.events) == RECENT_EVENTS
    assert merged.events[-1].name == f"e{RECENT_EVENTS * 2 - 1}"


def test_counter_book_adds_live_workers() -> None:
    book = CounterBook()
    book.update(0, {key("d"): 5})
    book.update(1, {key("d"): 7})
    assert book.totals() == {key("d"): 12}
    book.update(0, {key("d"): 6})
    assert book.totals() == {key("d"): 13}


def test_a_dead_workers_counts_stay_and_its_successor_adds_from_zero() -> None:
    book = CounterBook()
    book.update(0, {key("d"): 5})
    book.update(1, {key("d"): 7})
    assert book.totals()[key("d")] == 12
    book.retire(0)
    book.update(0, {key("d"): 1})  # the new worker 0
    assert book.totals()[key("d")] == 13


def test_totals_never_go_down_even_when_a_worker_died_with_unreported_counts() -> None:
    book = CounterBook()
    book.update(0, {key("d"): 5, key("gone"): 2})
    assert book.totals()[key("d")] == 5
    # A newer report seen by nobody: the worker died at 9, we last knew 5; then retire.
    book.retire(0)
    book.update(0, {key("d"): 0})
    totals = book.totals()
    assert totals[key("d")] == 5
    assert totals[key("gone")] == 2  # a series once reported is not dropped either
    book.update(0, {key("d"): 3})
    assert book.totals()[key("d")] == 8


def test_a_channel_occupied_in_two_workers_is_one_channel() -> None:
    a = Snapshot(occupied={"public": ["1 news", "1 a"], "presence": ["1 presence-r"]})
    b = Snapshot(occupied={"public": ["1 news", "2 news"], "presence": []})
    merged = merge([a, b])
    assert merged.gauge("channels", kind="public") == 3
    assert merged.gauge("channels", kind="presence") == 1
