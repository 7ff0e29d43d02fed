"""Reading a relay process from the inside: its Snapshot, made when asked.

Nothing here runs per delivery. The relay already counts what it does in plain ints
(RelayStats, FanoutQueue.delivered); connections, subscriptions and send queues are walked
only when a snapshot is taken (a scrape, the dashboard's once a second). What is counted here
is per publish or per request (PublishCounter, RequestCounter), never per subscriber, and the
delivery latency is sampled, one broadcast at a time (LatencySampler).
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sidecar.accept import STATS as ACCEPT_STATS
from sidecar.engine.broker.base import Publication
from sidecar.observe.bad_input import BadInputLog
from sidecar.observe.snapshot import (
    RECENT_EVENTS,
    TOP_CHANNELS,
    ChannelCount,
    RecentEvent,
    Snapshot,
    key,
)
from sidecar.protocol.channel_rules import channel_kind as relay_channel_kind
from sidecar.protocol.channel_rules import is_cache

if TYPE_CHECKING:
    from sidecar.engine.relay import Relay

# Upper bounds (seconds) of the delivery latency histogram: from one loop turn to a backlog.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
# At most one timed broadcast per this many seconds: a bound on what sampling costs when
# broadcasts are tiny and many (each sample is two clock reads and a bisect).
SAMPLE_GAP = 0.001
# Metric kinds: the relay's own channel kinds, but cache channels of every kind are "cache".
KINDS = ("public", "cache", "encrypted", "private", "presence", "user")


def channel_kind(channel: str) -> str:
    return "cache" if is_cache(channel) else relay_channel_kind(channel).value


class LatencyHistogram:
    """Counts per bucket (not cumulative), as the snapshot carries them, as `{name}_bucket`,
    `{name}_sum` and `{name}_count`."""

    __slots__ = ("counts", "name", "total")

    def __init__(self, name: str = "delivery_latency") -> None:
        self.name = name
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last: over the largest bound
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def write(self, counters: dict[Any, float]) -> None:
        bounds = [*(repr(b) for b in LATENCY_BUCKETS), "+Inf"]
        for bound, count in zip(bounds, self.counts, strict=True):
            counters[key(f"{self.name}_bucket", le=bound)] = count
        counters[key(f"{self.name}_sum")] = self.total
        counters[key(f"{self.name}_count")] = sum(self.counts)


class LatencySampler:
    """Times one broadcast at a time, from the relay handing it to the fan-out until its last
    subscriber has the frame (written, or queued behind what that connection already has)."""

    def __init__(self, histogram: LatencyHistogram, clock: Callable[[], float] = time.monotonic):
        self.histogram = histogram
        self._clock = clock
        self._fanout: Any = None
        self._armed_at = float("-inf")
        self._timer: Any = None

    def attach(self, fanout: Any) -> None:
        """`fanout`: the relay's FanoutQueue (time_next(), on_timed, stop_timing())."""
        self._fanout = fanout
        fanout.on_timed = self._timed
        self._arm()

    def detach(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._fanout is not None:
            self._fanout.on_timed = None
            self._fanout.stop_timing()

    def _arm(self) -> None:
        self._timer = None
        self._armed_at = self._clock()
        self._fanout.time_next()

    def _timed(self, seconds: float) -> None:
        self.histogram.observe(seconds)
        wait = self._armed_at + SAMPLE_GAP - self._clock()
        if wait <= 0:
            self._arm()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(wait, self._arm)


class PublishCounter:
    """Stands in front of a broker for a publish API: counts what publishers hand over and
    keeps the latest few for the dashboard (channel, name, size; never the data).

    `tap` is the debug console's (sidecar/observe/console.py), None while none is open: then
    a publication costs one test more, nothing is copied or formatted for it.
    """

    def __init__(
        self, broker: Any, wall: Callable[[], float] = time.time, source: str = "unix"
    ) -> None:
        self._broker = broker
        self._wall = wall
        self.source = source  # "unix" (the Unix socket) or "api" (the signed API)
        self.tap: Callable[[Publication, str], None] | None = None
        self.published = 0
        self.published_bytes = 0
        self.recent: deque[RecentEvent] = deque(maxlen=RECENT_EVENTS)

    def publish(self, publication: Publication) -> None:
        self._count(publication)
        self._broker.publish(publication)

    async def publish_confirmed(self, publication: Publication) -> None:
        self._count(publication)
        await self._broker.publish_confirmed(publication)

    def _count(self, publication: Publication) -> None:
        self.published += 1
        size = len(publication.data_json) - 2  # the data, without the JSON string's quotes
        self.published_bytes += size
        channels = publication.channels
        self.recent.append(
            RecentEvent(
                self._wall(),
                publication.app_id,
                channels[0] if channels else "",
                publication.name,
                size,
                len(channels) - 1,
            )
        )
        tap = self.tap
        if tap is not None:
            tap(publication, self.source)

    def __getattr__(self, name: str) -> Any:
        # Everything else a broker offers (queries, start, close) is the broker's own.
        return getattr(self._broker, name)


class RequestCounter:
    """HTTP API requests by listener, route and status: every label from a bounded set."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}

    def count(self, listener: str, endpoint: str, status: int) -> None:
        k = (listener, endpoint, status)
        self.counts[k] = self.counts.get(k, 0) + 1

    def middleware(self, listener: str) -> Any:
        """An aiohttp middleware counting every answer, refusals included (put it first)."""

        @web.middleware
        async def count_requests(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                self.count(listener, route_of(request), status)

        return count_requests

    def write(self, counters: dict[Any, float]) -> None:
        for (listener, endpoint, status), n in self.counts.items():
            k = key("http_requests", listener=listener, endpoint=endpoint, status=str(status))
            counters[k] = n


def route_of(request: web.Request) -> str:
    """The route's pattern (`/apps/{app_id}/events`), never the path a client sent."""
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    canonical = resource.canonical if resource is not None else ""
    return canonical if canonical.startswith("/apps/") else "other"


class RelayProbe:
    """Everything one relay process reports. `publishers` and `requests` are this process's
    own publish APIs (the supervisor's, in worker mode, are reported by the supervisor)."""

    def __init__(
        self,
        relay: Relay,
        *,
        publishers: Iterable[PublishCounter] = (),
        requests: RequestCounter | None = None,
        share_names: bool = False,
        bad_input: BadInputLog | None = None,
    ) -> None:
        self.relay = relay
        # A worker's bad input, reported with its snapshot (in one process, the observer's).
        self.bad_input = bad_input
        self.share_names = share_names  # a worker: its report is merged with others'
        self.publishers = list(publishers)
        self.requests = requests
        self.latency = LatencyHistogram()
        self.sampler = LatencySampler(self.latency)

    def start(self) -> None:
        assert self.relay.fanout is not None, "Relay.start() first"
        self.sampler.attach(self.relay.fanout)

    def stop(self) -> None:
        self.sampler.detach()

    def snapshot(self, full: bool = True) -> Snapshot:
        """Counters and the connection count always; `full`: also what takes walking every
        channel and connection (subscriptions, send queues, busiest channels)."""
        snap = Snapshot()
        write_counters(snap.counters, self.relay, self.publishers, self.requests)
        self.latency.write(snap.counters)
        if self.bad_input is not None:
            self.bad_input.write(snap.counters)
        snap.gauges[key("connections")] = len(self.relay.connections)
        if full:
            write_gauges(snap, self.relay, self.share_names)
            events = [e for p in self.publishers for e in p.recent]
            snap.events = sorted(events, key=lambda e: e.time)[-RECENT_EVENTS:]
        return snap


def write_counters(
    counters: dict[Any, float],
    relay: Relay,
    publishers: Iterable[PublishCounter],
    requests: RequestCounter | None,
) -> None:
    stats = relay.stats
    fanout = relay.fanout
    counters[key("connections_opened")] = stats.connections_opened
    for code, n in stats.closed_by_code.items():
        k = key("connections_closed", code=close_code_label(code))
        counters[k] = counters.get(k, 0) + n
    counters[key("slow_client_closes")] = stats.slow_client_closes
    counters[key("client_events")] = stats.client_events
    counters[key("client_events_rate_limited")] = stats.client_events_rate_limited
    counters[key("subscriptions_rate_limited")] = stats.subscriptions_rate_limited
    write_accept_stats(counters, ("tls",))  # the browser port is a relay process's
    counters[key("messages_delivered")] = fanout.delivered if fanout is not None else 0
    counters[key("delivered_bytes")] = getattr(fanout, "delivered_bytes", 0)
    published = published_bytes = 0
    for p in publishers:
        published += p.published
        published_bytes += p.published_bytes
    counters[key("messages_published")] = published
    counters[key("published_bytes")] = published_bytes
    if requests is not None:
        requests.write(counters)


def write_accept_stats(counters: dict[Any, float], listeners: Iterable[str]) -> None:
    """What this process's `listeners` met while accepting (sidecar/accept.py)."""
    for listener in listeners:
        accepted = ACCEPT_STATS.get(listener)
        if accepted is None:
            continue
        counters[key("accept_out_of_files", listener=listener)] = accepted.out_of_files
        if listener == "tls":
            counters[key("connections_over_ip_limit")] = accepted.over_address_cap


def write_gauges(snap: Snapshot, relay: Relay, share_names: bool) -> None:
    """Subscriptions and occupied channels by kind, send queues, the busiest channels.

    `share_names`: a worker's report, to be merged with the others': occupied channels go as
    names (merge() counts a channel once however many workers hold subscribers on it) and
    twice as many busiest channels as shown (merge() adds the lists up before cutting).
    """
    subscriptions = dict.fromkeys(KINDS, 0)
    occupied = dict.fromkeys(KINDS, 0)
    names: dict[str, list[str]] = {kind: [] for kind in KINDS}
    counts: list[tuple[int, str, str]] = []
    for app_id, registry in relay.channels.items():
        for channel in registry:
            n = registry.count(channel)
            kind = channel_kind(channel)
            subscriptions[kind] += n
            occupied[kind] += 1
            if share_names:
                names[kind].append(f"{app_id} {channel}")
            counts.append((n, channel, app_id))
    for kind in KINDS:
        snap.gauges[key("subscriptions", kind=kind)] = subscriptions[kind]
        if not share_names:
            snap.gauges[key("channels", kind=kind)] = occupied[kind]
    if share_names:
        snap.occupied = names
    snap.gauges[key("send_queue_bytes")] = sum(c.queued_bytes for c in relay.connections.values())
    top = heapq.nlargest(2 * TOP_CHANNELS if share_names else TOP_CHANNELS, counts)
    snap.channels = [ChannelCount(app_id, channel, n) for n, channel, app_id in top]


# Close codes worth their own series; anything else a client sends is "other", so a label
# never takes more values than this list.
RFC_CLOSE_CODES = (1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011)
PUSHER_CLOSE_CODES = (4001, 4005, 4007, 4008, 4009, 4100, 4101, 4200, 4201, 4202)
KNOWN_CLOSE_CODES = frozenset((*RFC_CLOSE_CODES, *PUSHER_CLOSE_CODES))


def close_code_label(code: int | None) -> str:
    if code is None:
        return "1006"
    return str(code) if code in KNOWN_CLOSE_CODES else "other"
