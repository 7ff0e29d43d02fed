"""sidecar.observe.console: previews, the bounded rate-capped queue, the feed and its taps."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from sidecar.engine.broker.base import Publication
from sidecar.engine.channel_state import ChannelState
from sidecar.engine.relay import Relay
from sidecar.observe.console import (
    PREVIEW_BYTES,
    ConsoleFeed,
    Item,
    ItemQueue,
    ItemTap,
    event_item,
    payload_preview,
)
from sidecar.observe.probe import PublishCounter
from tests.support.relay_browser import MakeBrowser, browser_factory, started_relay, turns


def item(n: int, channel: str = "c") -> Item:
    return {"kind": "subscribed", "t": 0.0, "app": "1", "channel": channel, "n": n}


def literal(text: str) -> bytes:
    return orjson.dumps(text)


# Previews -----------------------------------------------------------------------------------


def test_a_small_payload_is_shown_whole() -> None:
    assert payload_preview(literal('{"id": 42}')) == ('{"id": 42}', False)


def test_a_payload_over_the_limit_is_cut_to_the_limit_in_utf8_bytes() -> None:
    text, cut = payload_preview(literal("é" * 1000), limit=101)
    assert cut and text == "é" * 50  # 100 bytes: half a character is left out, not garbled


@pytest.mark.parametrize("unit", ["x", "\n", '"', "\\", "é", "\u0001", "😀", "\\u0041"])
def test_a_large_literal_is_decoded_only_in_part_and_cut_cleanly(unit: str) -> None:
    data = unit * 300_000  # escapes and multibyte characters cut anywhere
    for shift in range(7):
        text, cut = payload_preview(literal("a" * shift + data), limit=PREVIEW_BYTES)
        assert cut
        assert 0 < len(text.encode()) <= PREVIEW_BYTES
        assert ("a" * shift + data).startswith(text)
        assert len(text.encode()) > PREVIEW_BYTES - 13  # nearly the whole allowance


def test_an_event_item_carries_where_it_came_from_and_its_size() -> None:
    pub = Publication.of("1", ("a", "b"), "created", "x" * 5000, socket_id="1.2")
    made = event_item(pub, "unix", 12.5)
    assert made["kind"] == "event" and made["source"] == "unix" and made["t"] == 12.5
    assert made["channels"] == ["a", "b"] and made["event"] == "created"
    assert made["size"] == 5000 and made["truncated"] and len(made["data"]) == PREVIEW_BYTES
    assert made["socket_id"] == "1.2" and "user_id" not in made
    json.dumps(made)  # plain JSON, as the page gets it


# The queue ----------------------------------------------------------------------------------


def test_the_queue_takes_up_to_its_rate_at_once_then_refills_with_time() -> None:
    queue = ItemQueue(rate=10, size=100, now=0.0)
    assert [queue.push(item(i), 0.0) for i in range(12)] == [True] * 10 + [False] * 2
    assert queue.push(item(12), 0.05) is False  # half an item earned
    assert queue.push(item(13), 0.1) is True  # one item earned in a tenth of a second
    taken = queue.take()
    assert [i["n"] for i in taken if i["kind"] != "dropped"] == [*range(10), 13]
    # The drops stand where they happened, as one marker per run.
    assert taken[10] == {"kind": "dropped", "count": 3}
    assert queue.dropped == 3 and queue.take() == []


def test_a_full_queue_drops_its_oldest_and_says_how_many() -> None:
    queue = ItemQueue(rate=1000, size=5, now=0.0)
    for i in range(8):
        queue.push(item(i), 0.0)
    taken = queue.take()
    assert taken[0] == {"kind": "dropped", "count": 3}
    assert [i["n"] for i in taken[1:]] == [3, 4, 5, 6, 7]
    assert queue.dropped == 3


def test_markers_from_elsewhere_add_up_without_being_capped_or_changed() -> None:
    queue = ItemQueue(rate=1, size=10, now=0.0)
    queue.push(item(0), 0.0)
    theirs = {"kind": "dropped", "count": 40}
    assert queue.push(theirs, 0.0) and queue.push(dict(theirs), 0.0)
    assert queue.take() == [item(0), {"kind": "dropped", "count": 80}]
    assert theirs == {"kind": "dropped", "count": 40}  # shared with other pages: untouched


def test_a_marker_pushed_off_the_front_is_still_counted() -> None:
    queue = ItemQueue(rate=2, size=3, now=0.0)
    for i in range(4):
        queue.push(item(i), 0.0)  # two in, two dropped: [0, 1, marker 2]
    queue.push(item(9), 10.0)  # pushes 0 off
    queue.push(item(10), 10.0)  # pushes 1 off
    queue.push(item(11), 11.0)  # pushes the marker off: its 2 count too
    assert queue.take() == [{"kind": "dropped", "count": 4}, item(9), item(10), item(11)]
    assert queue.dropped == 4


# The feed -----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_taps_go_on_with_the_first_page_and_off_after_the_last() -> None:
    feed = ConsoleFeed()
    switched: list[bool] = []
    feed.switches.append(switched.append)
    first, second = feed.open(), feed.open()
    feed.close(first)
    assert switched == [True] and feed.active
    feed.close(second)
    feed.close(second)  # twice: nothing more
    assert switched == [True, False] and not feed.active


def test_a_failing_switch_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    feed = ConsoleFeed()
    switched: list[bool] = []

    def broken(on: bool) -> None:
        raise RuntimeError("bug")

    feed.switches += [broken, switched.append]
    feed.open()
    assert switched == [True]
    assert "console tap switch failed" in caplog.text


def test_each_page_has_its_own_cap_and_filter() -> None:
    clock = Clock()
    feed = ConsoleFeed(rate=3, size=10, clock=clock)
    everything, orders = feed.open(), feed.open("order")
    woken: list[int] = []
    orders.wake = lambda: woken.append(1)
    for n in range(5):
        feed.add(item(n, "news"))
    feed.add(item(5, "orders"))
    feed.add({"kind": "connected", "t": 0.0, "app": "1", "socket_id": "1.1"})
    pub = Publication.of("1", ("news", "big-orders"), "e", "d")
    feed.publication(pub, "unix")
    assert [i.get("n") for i in everything.queue.take()] == [0, 1, 2, None]
    assert everything.queue.dropped == 5
    assert [(i.get("n"), i["kind"]) for i in orders.queue.take()] == [
        (5, "subscribed"),
        (None, "event"),
    ]
    assert len(woken) == 2


def test_a_workers_items_are_tagged_with_it() -> None:
    feed = ConsoleFeed()
    page = feed.open()
    feed.add_all([item(1), {"kind": "dropped", "count": 7}], worker=2)
    assert page.queue.take() == [{**item(1), "worker": 2}, {"kind": "dropped", "count": 7}]


def test_publications_inside_labelled_are_shown_as_that_source() -> None:
    feed = ConsoleFeed()
    page = feed.open()
    pub = Publication.of("1", ("c",), "e", "d")
    with feed.labelled("console"):
        feed.publication(pub, "unix")
    feed.publication(pub, "unix")
    assert [i["source"] for i in page.queue.take()] == ["console", "unix"]


def test_shutdown_ends_every_page() -> None:
    feed = ConsoleFeed()
    page = feed.open()
    woken: list[int] = []
    page.wake = lambda: woken.append(1)
    feed.shutdown()
    assert page.closed and woken == [1]


# The taps -----------------------------------------------------------------------------------


class NullBroker:
    def publish(self, publication: Publication) -> None:
        pass


def test_a_publish_counter_taps_only_while_a_tap_is_set() -> None:
    counter = PublishCounter(NullBroker(), source="api")
    tapped: list[tuple[Publication, str]] = []
    pub = Publication.of("1", ("c",), "e", "d")
    counter.publish(pub)
    counter.tap = lambda p, source: tapped.append((p, source))
    counter.publish(pub)
    assert tapped == [(pub, "api")] and counter.published == 2


def test_channel_state_transitions_become_items() -> None:
    feed = ConsoleFeed()
    page = feed.open()
    state = ChannelState()
    state.on_transitions = feed.transitions
    from sidecar.engine.broker.changes import CountDelta, MemberJoin, MemberLeave

    state.apply(1, CountDelta("1", "news", 1))
    state.apply(1, MemberJoin("1", "presence-room", "1.1", "ann", {"secret": "no"}))
    state.apply(1, MemberLeave("1", "presence-room", "1.1"))
    kinds = [(i["kind"], i["channel"], i.get("user_id")) for i in page.queue.take()]
    assert kinds == [
        ("occupied", "news", None),
        ("occupied", "presence-room", None),
        ("member_added", "presence-room", "ann"),
        ("member_removed", "presence-room", "ann"),
        ("vacated", "presence-room", None),
    ]


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    async with started_relay() as r:
        yield r


async def test_the_relay_reports_connections_subscriptions_and_client_events(
    relay: Relay,
) -> None:
    made: list[Item] = []
    browser: MakeBrowser = browser_factory(relay)
    quiet = browser()  # before the tap: nothing
    relay.tap = ItemTap(made.append, wall=lambda: 1.0)
    one, other = browser(), browser()
    for b in (one, other):
        b.subscribe("private-chat")
    await turns()
    one.subscribe("news")
    await turns()
    one.text(relay, "pusher:unsubscribe", {"channel": "news"})
    one.trigger("private-chat", "client-typing", {"who": "ann"})
    one.conn.close_code = 4200
    relay.forget(one.conn)
    relay.tap = None
    relay.forget(quiet.conn)
    seen: list[Any] = [
        (i["kind"], i["socket_id"], i["channels"] if i["kind"] == "event" else i.get("channel"))
        for i in made
    ]
    assert seen == [
        ("connected", one.socket_id, None),
        ("connected", other.socket_id, None),
        ("subscribed", one.socket_id, "private-chat"),
        ("subscribed", other.socket_id, "private-chat"),
        ("subscribed", one.socket_id, "news"),
        ("unsubscribed", one.socket_id, "news"),
        ("event", one.socket_id, ["private-chat"]),
        ("disconnected", one.socket_id, None),
    ]
    assert made[6]["source"] == "client" and made[6]["data"] == '{"who":"ann"}'
    assert made[7]["code"] == 4200 and made[7]["subscriptions"] == 1
