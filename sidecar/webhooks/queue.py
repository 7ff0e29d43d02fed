"""The sans-IO core of one app's webhooks: what to send where, and when.

Events come in with a timestamp (`add`), vacated/removed ones are held a while (holds.py), the
rest are filtered by each target's kinds and gathered into batches. `poll(now, time_ms)` hands out
the requests that are due, at most one in flight per target so every target sees its events in
order; `done(delivery, ok, now)` reports how one went (a failure schedules a retry with back-off,
or drops the batch once it is too old). `next_due()` says when `poll` has work again. No clock,
no sockets: the caller passes the time, so the tests drive it with plain numbers.

A batch's age for the retry horizon counts from when it closed, and a batch that was never
attempted is dropped unseen once past the horizon: after a long outage the app gets the recent
events, not a replay of stale ones it could no longer validate (the `pusher` libraries refuse a
time_ms more than five minutes old).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from sidecar.config import WebhookConfig, WebhookSettings
from sidecar.webhooks import payload
from sidecar.webhooks.backoff import retry_delay
from sidecar.webhooks.holds import CANCELLING, HELD, Event, Holds


@dataclass
class WebhookCounters:
    """Totals since start, in events unless named otherwise. Shared by every app's queue."""

    sent_events: int = 0
    sent_batches: int = 0
    failed_attempts: int = 0  # requests that got no 2xx (each retry counts)
    dropped_full: int = 0  # a target (or the held set) was at queue_limit
    dropped_expired: int = 0  # not delivered within retry_horizon
    dropped_at_close: int = 0  # still waiting when close() ran out of time

    @property
    def dropped_events(self) -> int:
        return self.dropped_full + self.dropped_expired + self.dropped_at_close


@dataclass(frozen=True)
class Delivery:
    """One POST to make: `body` as is (retries resend the same bytes), then report to `done`."""

    target: int  # index in the app's webhooks
    url: str
    body: bytes
    events: int
    attempt: int  # 1 for the first try


class Outcome(Enum):
    SENT = "sent"
    RETRY = "retry"
    DROPPED = "dropped"


@dataclass(eq=False)
class _Batch:
    events: list[Event]
    opened: float
    closed: float = 0.0
    count: int = 0
    body: bytes | None = None
    attempts: int = 0


class _Target:
    def __init__(self, index: int, config: WebhookConfig) -> None:
        self.index = index
        self.url = config.url
        self.kinds = config.events
        self.open: _Batch | None = None
        self.ready: deque[_Batch] = deque()  # closed batches; the head is the one being tried
        self.in_flight = False
        self.retry_at: float | None = None  # when the head may be tried again
        self.queued = 0  # events in open + ready


class WebhookQueue:
    """One app's webhook targets, held events and batches."""

    def __init__(
        self,
        targets: Sequence[WebhookConfig],
        settings: WebhookSettings,
        counters: WebhookCounters | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.counters = counters if counters is not None else WebhookCounters()
        self._rng = rng
        self._targets = [_Target(i, t) for i, t in enumerate(targets)]
        self._holds = Holds(settings.vacate_delay, settings.queue_limit)
        wanted = frozenset().union(*(t.events for t in targets))
        # A kind nobody wants still matters when it cancels, or is cancelled by, one that is.
        paired = {HELD.get(k) or CANCELLING.get(k) for k in wanted} - {None}
        self._relevant = wanted | paired

    @property
    def queued(self) -> int:
        """Events not yet delivered or dropped: held, batched, or being tried."""
        return len(self._holds) + sum(t.queued for t in self._targets)

    @property
    def in_flight(self) -> int:
        return sum(t.in_flight for t in self._targets)

    def add(self, event: Event, now: float) -> None:
        name = event.get("name")
        if not isinstance(name, str) or name not in self._relevant:
            return
        for passed in self._holds.add(event, now):
            self._route(passed, now)

    def poll(self, now: float, time_ms: int) -> list[Delivery]:
        """Move what is due along and return the requests to make now.

        `time_ms` (wall clock) stamps a batch's body on its first attempt.
        """
        for event in self._holds.due(now):
            self._route(event, now)
        out = []
        for t in self._targets:
            if t.open is not None and t.open.opened + self.settings.batch_window <= now:
                self._close(t, now)
            if t.in_flight or not t.ready or (t.retry_at is not None and t.retry_at > now):
                continue
            self._expire(t, now)
            if not t.ready:
                continue
            head = t.ready[0]
            if head.body is None:
                head.body = payload.encode(time_ms, head.events)
                head.events = []  # the bytes are all that is needed from here on
            head.attempts += 1
            t.in_flight = True
            t.retry_at = None
            out.append(Delivery(t.index, t.url, head.body, head.count, head.attempts))
        return out

    def done(self, delivery: Delivery, ok: bool, now: float) -> tuple[Outcome, float | None]:
        """Report a request's result; returns what happens next and the wait before a retry."""
        t = self._targets[delivery.target]
        if not t.in_flight or not t.ready:
            raise ValueError(f"no delivery in flight for target {delivery.target}")
        t.in_flight = False
        head = t.ready[0]
        if ok:
            self._pop(t)
            self.counters.sent_events += head.count
            self.counters.sent_batches += 1
            return Outcome.SENT, None
        self.counters.failed_attempts += 1
        s = self.settings
        delay = retry_delay(head.attempts, s.retry_initial_delay, s.retry_max_delay, self._rng)
        if now + delay - head.closed > s.retry_horizon:
            self._pop(t)
            self.counters.dropped_expired += head.count
            return Outcome.DROPPED, None
        t.retry_at = now + delay
        return Outcome.RETRY, delay

    def next_due(self) -> float | None:
        """The earliest time at which `poll` has something to do (maybe already past), or None."""
        due = self._holds.next_due()
        for t in self._targets:
            whens = []
            if t.open is not None:
                whens.append(t.open.opened + self.settings.batch_window)
            if not t.in_flight and t.ready:
                whens.append(t.retry_at if t.retry_at is not None else t.ready[0].closed)
            for when in whens:
                if due is None or when < due:
                    due = when
        return due

    def flush(self, now: float) -> None:
        """Make everything sendable at once: release held events, close open batches.

        For shutdown: nothing will re-occupy a channel of a relay that is going away.
        """
        for event in self._holds.release_all():
            self._route(event, now)
        for t in self._targets:
            if t.open is not None:
                self._close(t, now)

    def discard(self) -> int:
        """Forget everything still queued (close() out of time); returns the events dropped."""
        dropped = len(self._holds)
        self._holds.release_all()
        for t in self._targets:
            dropped += t.queued
            t.open, t.queued, t.in_flight, t.retry_at = None, 0, False, None
            t.ready.clear()
        self.counters.dropped_at_close += dropped
        return dropped

    # Internals --------------------------------------------------------------------------------

    def _route(self, event: Event, now: float) -> None:
        name = event.get("name")
        for t in self._targets:
            if name not in t.kinds:
                continue
            if t.queued >= self.settings.queue_limit:
                self.counters.dropped_full += 1
                continue
            if t.open is None:
                t.open = _Batch([], opened=now)
            t.open.events.append(event)
            t.queued += 1
            if len(t.open.events) >= self.settings.batch_max_events:
                self._close(t, now)

    def _close(self, t: _Target, now: float) -> None:
        batch = t.open
        assert batch is not None
        batch.closed = now
        batch.count = len(batch.events)
        t.ready.append(batch)
        t.open = None

    def _expire(self, t: _Target, now: float) -> None:
        # Only batches never tried: a tried head's fate was decided in done().
        while t.ready and t.ready[0].attempts == 0:
            head = t.ready[0]
            if now - head.closed <= self.settings.retry_horizon:
                break
            self._pop(t)
            self.counters.dropped_expired += head.count

    def _pop(self, t: _Target) -> None:
        head = t.ready.popleft()
        t.queued -= head.count
        t.retry_at = None
