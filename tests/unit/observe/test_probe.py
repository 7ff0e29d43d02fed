"""sidecar.observe.probe: a relay's snapshot, publish and request counts, latency sampling."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar import accept as accept_module
from sidecar.config.apps import AppRegistry
from sidecar.config.model import AppConfig, LimitsConfig
from sidecar.engine.broker.base import Publication
from sidecar.engine.connection import Connection
from sidecar.engine.fanout import FanoutQueue
from sidecar.engine.heartbeat import Heartbeat
from sidecar.engine.relay import Relay
from sidecar.observe import probe as probe_module
from sidecar.observe.probe import (
    KINDS,
    LATENCY_BUCKETS,
    LatencyHistogram,
    LatencySampler,
    PublishCounter,
    RelayProbe,
    RequestCounter,
    channel_kind,
    close_code_label,
)
from sidecar.observe.snapshot import key, merge
from tests.support.local_relay import local_relay, start_local

APP = AppConfig(id="1", key="key-one", secret="secret-one")
LIMITS = LimitsConfig()


@pytest.mark.parametrize(
    ("channel", "kind"),
    [
        ("news", "public"),
        ("not-private-x", "public"),
        ("private-a", "private"),
        ("private-encrypted-a", "encrypted"),
        ("presence-room", "presence"),
        ("cache-x", "cache"),
        ("private-cache-x", "cache"),
        ("presence-cache-x", "cache"),
        ("#server-to-user-7", "user"),
    ],
)
def test_channel_kind_by_prefix(channel: str, kind: str) -> None:
    assert channel_kind(channel) == kind
    assert kind in KINDS


def test_close_code_labels_are_a_bounded_set() -> None:
    assert close_code_label(4200) == "4200"
    assert close_code_label(4101) == "4101"  # too many bad frames: worth its own series
    assert close_code_label(None) == "1006"
    assert close_code_label(4999) == close_code_label(3000) == "other"


def test_histogram_buckets_are_upper_bounds() -> None:
    hist = LatencyHistogram()
    hist.observe(LATENCY_BUCKETS[0])  # on the bound: that bucket (le)
    hist.observe(0.003)
    hist.observe(100.0)
    counters: dict = {}
    hist.write(counters)
    assert counters[key("delivery_latency_bucket", le=repr(LATENCY_BUCKETS[0]))] == 1
    assert counters[key("delivery_latency_bucket", le="0.005")] == 1
    assert counters[key("delivery_latency_bucket", le="+Inf")] == 1
    assert counters[key("delivery_latency_count")] == 3
    assert counters[key("delivery_latency_sum")] == pytest.approx(100.0 + 0.003 + 0.0001)


class Subscriber:
    def __init__(self, socket_id: str) -> None:
        self.socket_id = socket_id
        self.subscriptions = {"news"}
        self.direct_write = self.send

    def send(self, frame: bytes) -> None:
        pass


async def test_sampler_times_one_broadcast_at_a_time_and_rearms_after_a_gap() -> None:
    now = [10.0]
    sampler = LatencySampler(LatencyHistogram(), clock=lambda: now[0])
    queue = FanoutQueue(asyncio.get_running_loop())
    subscribers = dict.fromkeys([Subscriber("1.1"), Subscriber("1.2")])
    sampler.attach(queue)
    assert armed(queue)
    queue.broadcast("news", b"timed", subscribers, None)  # type: ignore[arg-type]
    queue.broadcast("news", b"not timed", subscribers, None)  # type: ignore[arg-type]
    await turns()
    assert sum(sampler.histogram.counts) == 1
    assert not armed(queue)  # within SAMPLE_GAP of arming: a timer arms it later
    await asyncio.sleep(probe_module.SAMPLE_GAP * 5)
    assert armed(queue)
    now[0] += 1.0  # the gap is long past when the next timed one ends: armed at once
    queue.broadcast("news", b"timed", subscribers, None)  # type: ignore[arg-type]
    await turns()
    assert sum(sampler.histogram.counts) == 2
    assert armed(queue)
    sampler.detach()
    assert queue.on_timed is None and not armed(queue)


def armed(queue: FanoutQueue) -> bool:
    """The next broadcast will be timed: the queue's timed variant stands in for it."""
    return "broadcast" in vars(queue)


class RecordingBroker:
    def __init__(self) -> None:
        self.published: list[Publication] = []
        self.workers = 2

    def publish(self, publication: Publication) -> None:
        self.published.append(publication)


def test_publish_counter_counts_and_passes_on() -> None:
    broker = RecordingBroker()
    counter = PublishCounter(broker, wall=lambda: 5.0)
    pub = Publication.of("1", ("a", "b", "c"), "created", "hello")
    counter.publish(pub)
    counter.publish(Publication.of("1", ("a",), "updated", "x"))
    assert broker.published[0] is pub
    assert counter.published == 2
    assert counter.published_bytes == len("hello") + 1
    first = counter.recent[0]
    assert (first.channel, first.more, first.name, first.size, first.time) == (
        "a",
        2,
        "created",
        5,
        5.0,
    )
    assert counter.workers == 2  # anything else is the broker's


@pytest.fixture
async def api_client() -> AsyncIterator[tuple[TestClient, RequestCounter]]:
    requests = RequestCounter()

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({})

    async def refuse(request: web.Request) -> web.Response:
        raise web.HTTPBadRequest()

    app = web.Application(middlewares=[requests.middleware("tls")])
    app.router.add_post("/apps/{app_id}/events", ok)
    app.router.add_post("/apps/{app_id}/batch_events", refuse)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client, requests
    await client.close()


async def test_requests_are_counted_by_route_pattern_and_status(
    api_client: tuple[TestClient, RequestCounter],
) -> None:
    client, requests = api_client
    for app_id in ("1", "2", "3"):
        assert (await client.post(f"/apps/{app_id}/events")).status == 200
    assert (await client.post("/apps/1/batch_events")).status == 400
    assert (await client.get("/some/random/path/123")).status == 404
    assert requests.counts == {
        ("tls", "/apps/{app_id}/events", 200): 3,
        ("tls", "/apps/{app_id}/batch_events", 400): 1,
        ("tls", "other", 404): 1,
    }


# A real relay over fake sinks ----------------------------------------------------------------


class Sink:
    paused = False  # takes everything: never paused

    def __init__(self) -> None:
        self.data = bytearray()

    batched = None  # its writes go straight out (FrameSink)

    def direct(self, data: bytes) -> None:  # the fan-out's write: the same here
        self.write(data)

    def write(self, data: bytes | memoryview) -> None:
        self.data += data

    async def wait_drained(self) -> None:
        raise AssertionError("never paused")

    def abort(self) -> None:
        pass


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    r = local_relay(AppRegistry((APP,)), LIMITS)
    start_local(r)
    yield r
    r.stop()
    for conn in list(r.connections.values()):
        r.forget(conn)


def connect(relay: Relay, *channels: str) -> Connection:
    assert relay.scheduler is not None
    conn = Connection(
        relay.new_socket_id(),
        APP.id,
        Sink(),
        relay.scheduler,
        Heartbeat(time.monotonic(), 120, 30, 120),
        LIMITS.send_queue_bytes,
        lambda code, reason: None,
    )
    relay.open(conn)
    for channel in channels:
        relay.on_text(conn, json.dumps({"event": "pusher:subscribe", "data": {"channel": channel}}))
    return conn


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_relay_snapshot_counts_what_the_relay_did(relay: Relay) -> None:
    publishes = PublishCounter(RecordingBroker())
    probe = RelayProbe(relay, publishers=[publishes], requests=RequestCounter())
    probe.start()
    first = connect(relay, "news", "cache-x")
    connect(relay, "news")
    connect(relay)
    publishes.publish(Publication.of(APP.id, ("news",), "ev", "data"))
    relay.deliver(Publication.of(APP.id, ("news",), "ev", "data"))
    relay.deliver(Publication.of(APP.id, ("news", "cache-x"), "ev", "data"))
    await turns()
    relay.forget(first)
    snap = probe.snapshot(full=True)
    assert snap.gauge("connections") == 2
    assert snap.counter("connections_opened") == 3
    # Gone without a close frame: 1006.
    assert snap.counter("connections_closed", code="1006") == 1
    assert snap.counter("messages_published") == 1
    assert snap.counter("messages_delivered") == 2 + 3
    assert snap.counter("delivered_bytes") > 5 * len('"data"')
    assert snap.gauge("subscriptions", kind="public") == 1  # `first` left
    assert snap.gauge("channels", kind="public") == 1
    assert snap.gauge("channels", kind="cache") == 0
    assert snap.occupied == {}  # one process: nothing to merge, no names sent
    assert [(c.channel, c.subscribers) for c in snap.channels] == [("news", 1)]
    assert snap.counter("delivery_latency_count") >= 1  # the first broadcast was timed
    assert [e.name for e in snap.events] == ["ev"]
    probe.share_names = True  # as in a worker
    shared = probe.snapshot(full=True)
    assert shared.occupied["public"] == ["1 news"] and shared.occupied["cache"] == []
    assert key("channels", kind="public") not in shared.gauges
    assert merge([shared, shared]).gauge("channels", kind="public") == 1
    cheap = probe.snapshot(full=False)
    assert cheap.gauge("connections") == 2 and not cheap.channels
    assert key("subscriptions", kind="public") not in cheap.gauges
    probe.stop()


@dataclass
class HookedStats:
    """RelayStats with the hooks the lead adds to relay.py."""

    connections_opened: int = 0
    connections_closed: int = 0
    publications: int = 0
    slow_client_closes: int = 0
    closed_by_code: dict[int, int] = field(default_factory=dict)
    client_events: int = 0
    client_events_rate_limited: int = 0
    subscriptions_rate_limited: int = 0


async def test_hooks_the_relay_may_have_are_read(relay: Relay) -> None:
    relay.stats = HookedStats(  # type: ignore[assignment]
        connections_closed=6,
        closed_by_code={1000: 2, 4200: 1, 3999: 1, 4998: 2},
        client_events=7,
        client_events_rate_limited=3,
        subscriptions_rate_limited=4,
    )
    snap = RelayProbe(relay).snapshot(full=False)
    assert snap.counter("connections_closed", code="1000") == 2
    assert snap.counter("connections_closed", code="4200") == 1
    assert snap.counter("connections_closed", code="other") == 3
    assert snap.counter("client_events") == 7
    assert snap.counter("client_events_rate_limited") == 3
    assert snap.counter("subscriptions_rate_limited") == 4


async def test_what_the_browser_port_met_while_accepting_is_reported(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accept_module, "STATS", {})
    monkeypatch.setattr(probe_module, "ACCEPT_STATS", accept_module.STATS)
    assert RelayProbe(relay).snapshot(full=False).counter("connections_over_ip_limit") == 0
    tls, unix = accept_module.stats_of("tls"), accept_module.stats_of("unix")
    tls.out_of_files, tls.over_address_cap, unix.out_of_files = 2, 7, 5
    snap = RelayProbe(relay).snapshot(full=False)
    assert snap.counter("accept_out_of_files", listener="tls") == 2
    assert snap.counter("connections_over_ip_limit") == 7
    # The publish socket is reported by the process serving it (the observer's own).
    assert snap.counter("accept_out_of_files", listener="unix") == 0
