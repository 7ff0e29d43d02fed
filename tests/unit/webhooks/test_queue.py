"""sidecar.webhooks.queue: filtering, batching, holding, in-order retries, limits. A fake clock."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from sidecar.config.model import WEBHOOK_KINDS, WebhookConfig, WebhookSettings
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


# Bounded in bytes -----------------------------------------------------------------------------

CLIENTS = WebhookConfig("http://clients.test/", frozenset({"client_event"}))


def client_event(n: int, size: int) -> dict[str, str]:
    return ev("client_event", "private-c", event="client-x", data="x" * size, socket_id=f"1.{n}")


def test_what_waits_is_bounded_in_bytes_as_encoded() -> None:
    q = queue(CLIENTS, max_queue_bytes=100_000, batch_max_events=100)
    for n in range(10):
        q.add(client_event(n, 30_000), now=0)
    assert q.queued == 3  # a fourth would pass 100,000 bytes
    assert 90_000 < q.queued_bytes <= 100_000
    assert q.counters.dropped_full == 7
    assert q.counters.dropped_full_by_class == {"client_events": 7}
    [d] = q.poll(1, time_ms=1)
    assert [e["socket_id"] for e in events_of(d)] == ["1.0", "1.1", "1.2"]
    assert q.queued_bytes > 90_000  # in flight still counts...
    q.done(d, ok=True, now=1)
    assert q.queued_bytes == 0  # ...until it is answered
    q.add(client_event(10, 30_000), now=2)
    assert q.queued == 1


def test_an_event_over_the_bound_is_taken_when_nothing_of_its_class_waits() -> None:
    q = queue(CLIENTS, max_queue_bytes=10_000)
    q.add(client_event(0, 50_000), now=0)  # alone: taken, so one big event is never refused
    q.add(client_event(1, 10), now=0)  # behind it: over the bound
    assert q.queued == 1
    assert q.counters.dropped_full == 1
    [d] = q.poll(1, time_ms=1)
    assert len(events_of(d)[0]["data"]) == 50_000


def test_the_count_bound_still_holds_for_small_events() -> None:
    q = queue(CLIENTS, queue_limit=5, max_queue_bytes=1 << 30)
    for n in range(8):
        q.add(client_event(n, 1), now=0)
    assert (q.queued, q.counters.dropped_full) == (5, 3)


# One class's flood does not push out another ---------------------------------------------------


def deliver_all(q: WebhookQueue, now: float) -> list[dict[str, object]]:
    """Poll and answer 2xx until nothing is due; the events sent, in order."""
    sent: list[dict[str, object]] = []
    for _ in range(10_000):
        deliveries = q.poll(now, time_ms=1)
        if not deliveries:
            due = q.next_due()
            if due is None:
                return sent
            now = max(now, due)
            continue
        for d in deliveries:
            sent += events_of(d)
            q.done(d, ok=True, now=now)
    raise AssertionError("deliver_all did not finish")


def test_a_flood_of_fresh_channels_does_not_push_out_a_member_added() -> None:
    q = queue(queue_limit=10)
    [first] = (q.add(ev("channel_occupied", "c-first"), now=0), q.poll(0.25, time_ms=1))[1]
    # The endpoint hangs on the first request while an anonymous client subscribes to 1,000
    # fresh public channels (and a user joins a room among them)...
    for i in range(1000):
        q.add(ev("channel_occupied", f"fresh-{i}"), now=1)
        if i == 500:
            q.add(ev("member_added", "presence-room", user_id="ann"), now=1)
            q.add(client_event(1, 100), now=1)
    assert q.counters.dropped_full_by_class == {"channels": 991}  # 9 fit beside the first
    # ...then answers: the member_added and the client event are sent, the flood was cut.
    q.done(first, ok=True, now=2)
    sent = deliver_all(q, now=2)
    assert ev("member_added", "presence-room", user_id="ann") in sent
    assert [e["name"] for e in sent].count("client_event") == 1
    assert [e["name"] for e in sent].count("channel_occupied") == 9


def test_a_flood_of_big_client_events_does_not_push_out_a_member_added() -> None:
    q = queue(max_queue_bytes=100_000, batch_max_events=100)
    for n in range(100):
        q.add(client_event(n, 30_000), now=0)
    q.add(ev("member_added", "presence-room", user_id="ann"), now=0)
    q.add(ev("channel_occupied", "quiet"), now=0)
    assert q.counters.dropped_full_by_class == {"client_events": 97}
    sent = deliver_all(q, now=1)
    assert ev("member_added", "presence-room", user_id="ann") in sent
    assert ev("channel_occupied", "quiet") in sent


def test_order_is_kept_across_classes() -> None:
    q = queue(batch_max_events=100)
    names = ["channel_occupied", "member_added", "client_event", "cache_miss"] * 3
    for i, name in enumerate(names):
        q.add(ev(name, f"c{i}", user_id="u"), now=0)
    assert [e["channel"] for e in deliver_all(q, now=1)] == [f"c{i}" for i in range(12)]


# Churn coalesces ------------------------------------------------------------------------------


def test_occupied_then_vacated_still_waiting_nets_to_nothing() -> None:
    q = queue(vacate_delay=0.0)
    [hang] = (q.add(ev("cache_miss", "x"), now=0), q.poll(0.25, time_ms=1))[1]
    q.add(ev("channel_occupied", "brief"), now=1)
    q.add(ev("channel_occupied", "stays"), now=1)
    q.add(ev("channel_vacated", "brief"), now=1)
    q.poll(1, time_ms=1)  # the vacated is released (no delay) and takes "brief" back
    assert q.queued == 2  # the request in flight and "stays"
    assert q.counters.coalesced == 2
    q.done(hang, ok=True, now=2)
    assert deliver_all(q, now=2) == [ev("channel_occupied", "stays")]


def test_a_churn_of_fresh_channels_against_a_hung_endpoint_costs_nothing() -> None:
    q = queue(vacate_delay=3.0, queue_limit=50)
    [hang] = (q.add(ev("cache_miss", "x"), now=0), q.poll(0.25, time_ms=1))[1]
    for i in range(2000):  # subscribe, unsubscribe, next channel: 10 a second for 200 s
        now = 1 + i / 10
        q.add(ev("channel_occupied", f"fresh-{i}"), now=now)
        q.add(ev("channel_vacated", f"fresh-{i}"), now=now)
        q.poll(now, time_ms=1)  # the held vacated fall due and take their occupied back
        assert q.queued <= 1 + 2 * 31  # in flight, and 3 s of occupied/vacated pairs
    q.add(ev("member_added", "presence-room", user_id="ann"), now=250)
    q.poll(250, time_ms=1)
    assert q.counters.dropped_full == 0
    q.done(hang, ok=True, now=250)
    sent = deliver_all(q, now=250)
    assert ev("member_added", "presence-room", user_id="ann") in sent
    assert [e["name"] for e in sent].count("channel_vacated") == 0
    assert q.queued == 0


def test_a_vacated_after_its_occupied_was_sent_is_sent() -> None:
    q = queue(vacate_delay=0.0)
    q.add(ev("channel_occupied", "c"), now=0)
    [d] = q.poll(0.25, time_ms=1)  # out: too late to take back
    q.add(ev("channel_vacated", "c"), now=1)
    q.done(d, ok=False, now=1)  # even when it has to be retried
    assert [e["name"] for e in deliver_all(q, now=2)] == ["channel_occupied", "channel_vacated"]
    assert q.counters.coalesced == 0


def test_member_pairs_coalesce_per_user() -> None:
    q = queue(vacate_delay=0.0)
    [hang] = (q.add(ev("cache_miss", "x"), now=0), q.poll(0.25, time_ms=1))[1]
    q.add(ev("member_added", "presence-p", user_id="ann"), now=1)
    q.add(ev("member_added", "presence-p", user_id="bob"), now=1)
    q.add(ev("member_removed", "presence-p", user_id="ann"), now=1)
    q.done(hang, ok=True, now=2)
    assert deliver_all(q, now=2) == [ev("member_added", "presence-p", user_id="bob")]


def test_no_coalescing_for_a_target_that_wants_only_one_of_the_pair() -> None:
    vacated_only = WebhookConfig("http://v.test/", frozenset({"channel_vacated"}))
    q = queue(vacated_only, ALL, vacate_delay=0.0, batch_max_events=100)
    q.add(ev("channel_occupied", "c"), now=0)
    q.add(ev("channel_vacated", "c"), now=0)
    assert q.poll(0, time_ms=1) == []  # the vacated is released into the batches
    sent = {d.url: events_of(d) for d in q.poll(0.25, time_ms=1)}
    assert sent == {"http://v.test/": [ev("channel_vacated", "c")]}  # ALL: nothing left


def test_a_batch_emptied_after_it_closed_is_skipped() -> None:
    q = queue(vacate_delay=0.0, batch_max_events=2)
    [hang] = (q.add(ev("cache_miss", "x"), now=0), q.poll(0.25, time_ms=1))[1]
    q.add(ev("channel_occupied", "a"), now=1)
    q.add(ev("channel_occupied", "b"), now=1)  # a full batch: closed
    q.add(ev("channel_occupied", "c"), now=1)
    q.add(ev("channel_vacated", "a"), now=1)
    q.add(ev("channel_vacated", "b"), now=1)
    q.done(hang, ok=True, now=2)
    [d] = q.poll(2, time_ms=1)
    assert events_of(d) == [ev("channel_occupied", "c")]
    q.done(d, ok=True, now=2)
    assert (q.queued, q.queued_bytes, q.counters.sent_batches) == (0, 0, 2)
