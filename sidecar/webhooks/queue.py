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

What waits is bounded twice per target: `queue_limit` events and `max_queue_bytes` bytes, counted
on each event as encoded (an event is encoded once, when it enters a batch, and only its bytes
wait). Past either bound new events are dropped and counted as `dropped_full`; an event bigger
than the byte bound is still taken when nothing else of its class waits, so one big client event
is never refused by an idle queue.

The bounds apply to each class of event on its own, so that a flood of one class cannot push out
another: `channels` (channel_occupied, channel_vacated, cache_miss: what any anonymous client
causes by subscribing to public channels of its choosing), `members` (member_added,
member_removed: a signed presence subscription) and `client_events` (a signed private or
presence subscription). An anonymous client subscribing to thousands of fresh channels fills the
`channels` budget only; a user's member_added still finds room. Fixed budgets per class were
chosen over one budget with eviction of the biggest user: they keep a target's events in order
without reaching into batches, cost one comparison per event, and say plainly what a dead
endpoint costs (the classes it wants, times the bounds). Which client caused an event is not
known here (the channel state merges every worker's connections): a share per client is left to
the per-connection limits.

And churn coalesces: a channel_occupied (member_added) still waiting in a batch, not yet sent,
is taken back by the channel_vacated (member_removed) of the same channel (and user), which is
not queued either: the app would only hear of a channel that came and went while nothing reached
it. With holds.py's delay, which lets a quick re-occupy cancel a vacated, a churn of short-lived
channels against a slow endpoint nets to nothing instead of filling the queue.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from sidecar.config.model import WebhookConfig, WebhookSettings
from sidecar.webhooks import payload
from sidecar.webhooks.backoff import retry_delay
from sidecar.webhooks.holds import CANCELLING, HELD, Event, Holds, pair_key

# Each kind's class: the events of a class share a target's budget (see the docstring).
CLASS_OF = {
    "channel_occupied": "channels",
    "channel_vacated": "channels",
    "cache_miss": "channels",
    "member_added": "members",
    "member_removed": "members",
    "client_event": "client_events",
}


@dataclass
class WebhookCounters:
    """Totals since start, in events unless named otherwise. Shared by every app's queue."""

    sent_events: int = 0
    sent_batches: int = 0
    failed_attempts: int = 0  # requests that got no 2xx (each retry counts)
    dropped_full: int = 0  # a target's class was at queue_limit or max_queue_bytes
    dropped_expired: int = 0  # not delivered within retry_horizon
    dropped_at_close: int = 0  # still waiting when close() ran out of time
    dropped_full_by_class: dict[str, int] = field(default_factory=dict)  # dropped_full, split
    coalesced: int = 0  # occupied+vacated (added+removed) that cancelled out before being sent

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


@dataclass(slots=True)
class _Item:
    """One event waiting, as encoded; shared by the targets that want it."""

    cls: str
    data: bytes
    pair: tuple[Any, ...] | None  # set on an opener (occupied/added): what its closer cancels


@dataclass(slots=True)
class _Budget:
    events: int = 0
    bytes: int = 0


@dataclass(eq=False)
class _Batch:
    items: list[_Item | None]  # None: cancelled by its closer before the batch was sent
    opened: float
    closed: float = 0.0
    count: int = 0  # events in it, the cancelled ones no longer
    # What the batch takes of its target's budgets, by class; kept once `items` is let go.
    taken: dict[str, _Budget] = field(default_factory=dict)
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
        self.budgets = {CLASS_OF.get(kind, "channels"): _Budget() for kind in config.events}
        # The closers this target coalesces: it wants them and their openers both.
        self.coalesces = frozenset(
            c for c, o in HELD.items() if c in self.kinds and o in self.kinds
        )
        # Openers waiting in a batch not yet sent, by pair: where their closer finds them.
        self.pending: dict[tuple[Any, ...], tuple[_Batch, int]] = {}


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
    def queued_bytes(self) -> int:
        """Bytes of the events waiting in batches, each counted once per target."""
        return sum(b.bytes for t in self._targets for b in t.budgets.values())

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
                self._unpend(t, head)
                head.body = payload.join(time_ms, [i.data for i in head.items if i is not None])
                head.items = []  # the body is all that is needed from here on
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
            t.pending.clear()
            for budget in t.budgets.values():
                budget.events = budget.bytes = 0
        self.counters.dropped_at_close += dropped
        return dropped

    # Internals --------------------------------------------------------------------------------

    def _route(self, event: Event, now: float) -> None:
        name = event.get("name")
        item: _Item | None = None
        for t in self._targets:
            if name not in t.kinds:
                continue
            if name in t.coalesces and self._cancel_opener(t, pair_key(event)):
                continue
            if item is None:
                pair = pair_key(event) if name in CANCELLING else None
                item = _Item(CLASS_OF.get(name, "channels"), payload.encode_event(event), pair)
            self._enqueue(t, item, name, now)

    def _enqueue(self, t: _Target, item: _Item, name: Any, now: float) -> None:
        budget, size = t.budgets[item.cls], len(item.data)
        s = self.settings
        if budget.events >= s.queue_limit or (
            budget.bytes and budget.bytes + size > s.max_queue_bytes
        ):
            self.counters.dropped_full += 1
            by_class = self.counters.dropped_full_by_class
            by_class[item.cls] = by_class.get(item.cls, 0) + 1
            return
        if t.open is None:
            t.open = _Batch([], opened=now)
        batch = t.open
        if item.pair is not None and CANCELLING[name] in t.coalesces:
            t.pending[item.pair] = (batch, len(batch.items))
        batch.items.append(item)
        batch.count += 1
        taken = batch.taken.get(item.cls)
        if taken is None:
            taken = batch.taken[item.cls] = _Budget()
        taken.events += 1
        taken.bytes += size
        budget.events += 1
        budget.bytes += size
        t.queued += 1
        if len(batch.items) >= s.batch_max_events:
            self._close(t, now)

    def _cancel_opener(self, t: _Target, pair: tuple[Any, ...]) -> bool:
        """Take back the opener of `pair` if it waits unsent; True when it did."""
        spot = t.pending.pop(pair, None)
        if spot is None:
            return False
        batch, index = spot
        item = batch.items[index]
        assert item is not None
        batch.items[index] = None
        batch.count -= 1
        size = len(item.data)
        for budget in (batch.taken[item.cls], t.budgets[item.cls]):
            budget.events -= 1
            budget.bytes -= size
        t.queued -= 1
        self.counters.coalesced += 2
        return True

    def _unpend(self, t: _Target, batch: _Batch) -> None:
        """The batch goes out (or is dropped): its openers can no longer be taken back."""
        for item in batch.items:
            if item is not None and item.pair is not None:
                spot = t.pending.get(item.pair)
                if spot is not None and spot[0] is batch:
                    del t.pending[item.pair]

    def _close(self, t: _Target, now: float) -> None:
        batch = t.open
        assert batch is not None
        t.open = None
        if batch.count == 0:
            return  # every event in it was cancelled
        batch.closed = now
        t.ready.append(batch)

    def _expire(self, t: _Target, now: float) -> None:
        # Only batches never tried: a tried head's fate was decided in done().
        while t.ready and t.ready[0].attempts == 0:
            head = t.ready[0]
            if head.count == 0:
                self._pop(t)  # emptied by cancellations after it closed
                continue
            if now - head.closed <= self.settings.retry_horizon:
                break
            self._pop(t)
            self.counters.dropped_expired += head.count

    def _pop(self, t: _Target) -> None:
        head = t.ready.popleft()
        if head.body is None:
            self._unpend(t, head)
        for cls, taken in head.taken.items():
            budget = t.budgets[cls]
            budget.events -= taken.events
            budget.bytes -= taken.bytes
        t.queued -= head.count
        t.retry_at = None
