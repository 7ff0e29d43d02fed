"""sidecar.webhooks.queue: filtering, batching, holding, in-order retries, limits. A fake clock."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from sidecar.config import WEBHOOK_KINDS, WebhookConfig, WebhookSettings
from sidecar.webhooks.queue import Delivery, Outcome, WebhookCounters, WebhookQueue

SETTINGS = WebhookSettings(
    batch_window=0.25,
    batch_max_events=3,
    vacate_delay=3.0,
    retry_horizon=60.0,
    retry_initial_delay=1.0,
    retry_max_delay=8.0,
    queue_limit=100,
)
ALL = WebhookConfig("http://all.test/hooks", frozenset(WEBHOOK_KINDS))


def queue(*targets: WebhookConfig, **settings: object) -> WebhookQueue:
    # rng 1.0: the back-off is the full step (1, 2, 4, 8, 8, ...), easy to reason about.
    return WebhookQueue(targets or (ALL,), replace(SETTINGS, **settings), rng=lambda: 1.0)


def ev(name: str, channel: str = "c", **fields: str) -> dict[str, str]:
    return {"name": name, "channel": channel, **fields}


def body(delivery: Delivery) -> dict[str, object]:
    return json.loads(delivery.body)


def events_of(delivery: Delivery) -> list[dict[str, object]]:
    return body(delivery)["events"]  # type: ignore[return-value]


# Batching -----------------------------------------------------------------------------------


def test_a_batch_goes_out_after_the_window_in_pusher_shape() -> None:
    q = queue()
    q.add(ev("channel_occupied", "a"), now=10.0)
    q.add(ev("cache_miss", "b"), now=10.1)
    assert q.next_due() == pytest.approx(10.25)
    assert q.poll(10.2, time_ms=1) == []
    [d] = q.poll(10.25, time_ms=1_700_000_000_123)
    assert body(d) == {
        "time_ms": 1_700_000_000_123,
        "events": [ev("channel_occupied", "a"), ev("cache_miss", "b")],
    }
    assert (d.target, d.url, d.events, d.attempt) == (0, ALL.url, 2, 1)
    assert q.in_flight == 1


def test_a_full_batch_goes_out_at_once() -> None:
    q = queue()
    for i in range(4):
        q.add(ev("channel_occupied", f"c{i}"), now=0)
    assert q.next_due() == 0  # the full batch is ready now
    [d] = q.poll(0, time_ms=1)
    assert [e["channel"] for e in events_of(d)] == ["c0", "c1", "c2"]
    assert q.queued == 4


def test_each_target_gets_only_its_kinds() -> None:
    occupancy = WebhookConfig("http://a.test/", frozenset({"channel_occupied", "channel_vacated"}))
    clients = WebhookConfig("http://b.test/", frozenset({"client_event"}))
    q = queue(occupancy, clients)
    q.add(ev("channel_occupied", "private-a"), now=0)
    q.add(ev("client_event", "private-a", event="client-x", data="{}", socket_id="1.2"), now=0)
    q.add(ev("member_added", "presence-p", user_id="u"), now=0)  # nobody wants it
    sent = {d.url: events_of(d) for d in q.poll(1, time_ms=1)}
    assert sent == {
        "http://a.test/": [ev("channel_occupied", "private-a")],
        "http://b.test/": [
            ev("client_event", "private-a", event="client-x", data="{}", socket_id="1.2")
        ],
    }


def test_unwanted_kinds_are_not_even_held() -> None:
    q = queue(WebhookConfig("http://a.test/", frozenset({"client_event"})))
    q.add(ev("channel_vacated"), now=0)
    q.add(ev("member_removed", user_id="u"), now=0)
    q.add(ev("pusher:unknown"), now=0)
    q.add({"no": "name"}, now=0)
    assert q.queued == 0
    assert q.next_due() is None


# Holding vacated/removed ----------------------------------------------------------------------


def test_vacated_is_sent_after_the_delay() -> None:
    q = queue()
    q.add(ev("channel_vacated"), now=0)
    assert q.poll(2.9, time_ms=1) == []
    assert q.next_due() == 3.0
    assert q.poll(3.0, time_ms=1) == []  # released into a batch...
    assert q.next_due() == pytest.approx(3.25)
    [d] = q.poll(3.25, time_ms=1)  # ...that closes after the window
    assert events_of(d) == [ev("channel_vacated")]


def test_vacate_then_reoccupy_within_the_delay_sends_nothing() -> None:
    q = queue()
    q.add(ev("channel_occupied"), now=0)
    [first] = q.poll(1, time_ms=1)
    q.done(first, ok=True, now=1)
    q.add(ev("channel_vacated"), now=2)
    q.add(ev("member_removed", user_id="u"), now=2)
    q.add(ev("channel_occupied"), now=3)
    q.add(ev("member_added", user_id="u"), now=3)
    for t in range(3, 20):
        assert q.poll(t, time_ms=1) == []
    assert q.queued == 0
    assert q.counters.sent_events == 1


def test_reoccupy_cancels_even_when_only_vacated_is_wanted() -> None:
    q = queue(WebhookConfig("http://a.test/", frozenset({"channel_vacated"})))
    q.add(ev("channel_vacated"), now=0)
    q.add(ev("channel_occupied"), now=1)
    assert q.queued == 0
    q.add(ev("channel_occupied"), now=5)  # not wanted, nothing held: ignored
    assert q.poll(10, time_ms=1) == []


def test_occupied_for_a_channel_not_held_is_sent_at_once() -> None:
    q = queue()
    q.add(ev("channel_vacated", "a"), now=0)
    q.add(ev("channel_occupied", "b"), now=0)
    [d] = q.poll(0.25, time_ms=1)
    assert events_of(d) == [ev("channel_occupied", "b")]


# Delivery order and retries -------------------------------------------------------------------


def test_one_request_in_flight_per_target_and_in_order() -> None:
    q = queue()
    for i in range(7):
        q.add(ev("cache_miss", f"c{i}"), now=0)
    seen: list[str] = []
    now = 0.25
    while True:
        deliveries = q.poll(now, time_ms=1)
        if not deliveries:
            break
        assert len(deliveries) == 1
        assert q.poll(now, time_ms=1) == []  # nothing more while that one is out
        seen += [e["channel"] for e in events_of(deliveries[0])]  # type: ignore[misc]
        q.done(deliveries[0], ok=True, now=now)
    assert seen == [f"c{i}" for i in range(7)]
    assert (q.counters.sent_events, q.counters.sent_batches) == (7, 3)
    assert q.queued == 0


def test_a_failure_is_retried_with_back_off_and_the_same_body() -> None:
    q = queue()
    q.add(ev("channel_occupied"), now=0)
    [d1] = q.poll(0.25, time_ms=111)
    q.add(ev("channel_occupied", "later"), now=0.5)  # waits behind the failing batch
    assert q.done(d1, ok=False, now=1) == (Outcome.RETRY, 1.0)
    assert q.next_due() == 0.75  # the open batch's window (past); the retry is due at 2
    assert q.poll(1, time_ms=1) == []  # closes it behind the failed one
    assert q.next_due() == 2
    assert q.poll(1.9, time_ms=222) == []
    [d2] = q.poll(2, time_ms=333)
    assert (d2.body, d2.attempt) == (d1.body, 2)  # same time_ms, same signature
    assert q.done(d2, ok=False, now=2) == (Outcome.RETRY, 2.0)
    [d3] = q.poll(4, time_ms=444)
    assert d3.attempt == 3
    assert q.done(d3, ok=True, now=4)[0] is Outcome.SENT
    [d4] = q.poll(4, time_ms=555)
    assert events_of(d4) == [ev("channel_occupied", "later")]
    assert q.counters.failed_attempts == 2


def test_back_off_doubles_to_the_cap() -> None:
    q = queue()
    q.add(ev("channel_occupied"), now=0)
    now, waits = 0.25, []
    for _ in range(6):
        [d] = q.poll(now, time_ms=1)
        outcome, wait = q.done(d, ok=False, now=now)
        assert outcome is Outcome.RETRY and wait is not None
        waits.append(wait)
        now += wait
    assert waits == [1, 2, 4, 8, 8, 8]


def test_given_up_after_the_horizon() -> None:
    q = queue(retry_horizon=10.0)
    q.add(ev("channel_occupied"), now=0)
    q.add(ev("channel_occupied", "d"), now=0)
    now, attempts = 0.25, 0
    while True:
        deliveries = q.poll(now, time_ms=1)
        if not deliveries:
            break
        attempts += 1
        outcome, wait = q.done(deliveries[0], ok=False, now=now)
        if outcome is Outcome.DROPPED:
            break
        assert wait is not None
        now += wait
    # Attempts at 0.25, 1.25, 3.25, 7.25; the next (15.25) would be past 10 s.
    assert attempts == 4
    assert q.counters.dropped_expired == 2
    assert q.counters.dropped_events == 2
    assert q.queued == 0
    assert q.next_due() is None


def test_batches_that_waited_past_the_horizon_are_dropped_unseen() -> None:
    q = queue(retry_horizon=10.0, batch_max_events=1)
    q.add(ev("channel_occupied", "a"), now=0)
    [d] = q.poll(0, time_ms=1)
    q.add(ev("channel_occupied", "b"), now=1)
    q.add(ev("channel_occupied", "c"), now=9)
    # The first request hangs (a slow endpoint) until 12: b is too old by then, c is not.
    q.done(d, ok=True, now=12)
    [d2] = q.poll(12, time_ms=1)
    assert events_of(d2) == [ev("channel_occupied", "c")]
    assert q.counters.dropped_expired == 1


def test_done_without_a_request_in_flight_is_an_error() -> None:
    q = queue()
    with pytest.raises(ValueError):
        q.done(Delivery(0, ALL.url, b"{}", 1, 1), ok=True, now=0)


# Limits and shutdown --------------------------------------------------------------------------


def test_a_target_at_its_limit_drops_and_counts() -> None:
    slow = WebhookConfig("http://slow.test/", frozenset({"cache_miss"}))
    fine = WebhookConfig("http://fine.test/", frozenset({"cache_miss"}))
    q = queue(slow, fine, queue_limit=5, batch_max_events=100)
    for i in range(5):
        q.add(ev("cache_miss", f"c{i}"), now=0)
    deliveries = {d.url: d for d in q.poll(1, time_ms=1)}
    q.done(deliveries[fine.url], ok=True, now=1)  # fine keeps up; slow does not answer
    for i in range(5, 8):
        q.add(ev("cache_miss", f"c{i}"), now=2)
    assert q.counters.dropped_full == 3  # only slow's copies
    [d] = q.poll(3, time_ms=1)
    assert d.url == fine.url and d.events == 3


def test_counters_can_be_shared() -> None:
    counters = WebhookCounters()
    a = WebhookQueue((ALL,), SETTINGS, counters)
    b = WebhookQueue((ALL,), SETTINGS, counters)
    for q in (a, b):
        q.add(ev("cache_miss"), now=0)
        [d] = q.poll(1, time_ms=1)
        q.done(d, ok=True, now=1)
    assert counters.sent_events == 2


def test_flush_releases_holds_and_closes_batches() -> None:
    q = queue()
    q.add(ev("channel_vacated", "a"), now=0)
    q.add(ev("cache_miss", "b"), now=0)
    q.flush(now=0.1)
    [d] = q.poll(0.1, time_ms=1)
    assert events_of(d) == [ev("cache_miss", "b"), ev("channel_vacated", "a")]


def test_discard_counts_what_is_left() -> None:
    q = queue()
    q.add(ev("channel_vacated", "a"), now=0)
    q.add(ev("cache_miss", "b"), now=0)
    q.add(ev("cache_miss", "c"), now=0)
    assert q.poll(1, time_ms=1)  # in flight
    assert q.discard() == 3
    assert q.counters.dropped_at_close == 3
    assert q.queued == 0
    assert q.in_flight == 0
    assert q.next_due() is None
