"""Posting webhooks: one worker task drives every app's WebhookQueue over one aiohttp session.

`emit()` is what the relay calls, from the event loop, on the hot path: it hands the event to
the app's queue (a dict lookup, one orjson encoding so that what waits is bytes it can count, an
append) and perhaps wakes the worker; it never awaits, never touches a socket. The worker sleeps
until the queues say something is due, then starts the requests they hand out: a task per
request, at most one per target at a time, so a target that is down or slow holds one request
(bounded by `timeout`) and a queue bounded in events and bytes, never a pile of tasks. What it
costs the relay shows in `counters`.

Logs name the target by host only (a URL may carry credentials or tokens), with the status and
attempt; never the secret, the signature or the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from sidecar.config.model import AppConfig, WebhookSettings
from sidecar.webhooks.payload import headers
from sidecar.webhooks.queue import Delivery, Outcome, WebhookCounters, WebhookQueue

log = logging.getLogger("sidecar.webhooks")

# A webhook answer is read (so the connection can be reused) only when it is this small.
MAX_READ_ANSWER = 64 * 1024
# "queue full" is logged at most this often per app, with the count since the last line.
OVERFLOW_LOG_INTERVAL = 60.0
# The worker never sleeps less than this when something is due: a guard against a busy loop.
MIN_SLEEP = 0.001


@dataclass
class _App:
    id: str
    key: str
    secret: str
    queue: WebhookQueue
    hosts: list[str]  # per target, for logs


class Webhooks:
    """Every app's webhooks. `emit` any time; `await start()` once the loop runs; `await close()`.

    Apps without webhooks are ignored by `emit`; `enabled` is False when no app has any (the
    caller may then skip creating this at all).
    """

    def __init__(
        self,
        apps: Iterable[AppConfig],
        settings: WebhookSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        counters: WebhookCounters | None = None,
    ) -> None:
        self.settings = settings if settings is not None else WebhookSettings()
        # Given: a reload's new sender counts on where the old one stopped (never backwards).
        self.counters = counters if counters is not None else WebhookCounters()
        self._clock = clock
        self._wall = wall
        self._apps: dict[str, _App] = {}
        for app in apps:
            if app.webhooks:
                queue = WebhookQueue(app.webhooks, self.settings, self.counters, rng)
                hosts = [URL(hook.url).host or "?" for hook in app.webhooks]
                self._apps[app.id] = _App(app.id, app.key, app.secret, queue, hosts)
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._sleep_until: float | None = None  # when the sleeping worker wakes; None: on emit
        self._worker: asyncio.Task[None] | None = None
        self._requests: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._closing = False
        self._overflow_logged = 0  # counters.dropped_full at the last "queue full" line
        self._overflow_logged_by: dict[str, int] = {}  # and counters.dropped_full_by_class
        self._overflow_logged_at = float("-inf")

    @property
    def enabled(self) -> bool:
        return bool(self._apps)

    @property
    def queued(self) -> int:
        """Events not yet delivered or dropped, over all apps and targets."""
        return sum(app.queue.queued for app in self._apps.values())

    @property
    def queued_bytes(self) -> int:
        """Bytes of the events waiting in batches, over all apps (once per target)."""
        return sum(app.queue.queued_bytes for app in self._apps.values())

    def emit(self, app_id: str, event: dict[str, Any]) -> None:
        """Hand over one Pusher-shaped event, e.g. {"name": "channel_occupied", "channel": "c"}.

        Never blocks, never raises for an unknown app or kind. A vacated/removed dict is kept
        (not copied) while it is held: do not mutate it afterwards.
        """
        app = self._apps.get(app_id)
        if app is None or self._closing:
            return
        app.queue.add(event, self._clock())
        if self._wake.is_set():
            return
        due = app.queue.next_due()
        if due is not None and (self._sleep_until is None or due < self._sleep_until):
            self._wake.set()

    async def start(self) -> None:
        if self._worker is not None or self._closing or not self._apps:
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            # Never picks up proxies or credentials from the environment by surprise.
            trust_env=False,
        )
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="sidecar-webhooks")

    async def close(self, timeout: float = 5.0) -> None:
        """Send what can be sent within `timeout` seconds, then stop; the rest is counted.

        Held vacated/member_removed events go out at once (this relay is going away, nothing
        will re-occupy its channels) and open batches close; failures are still retried while
        the time lasts. Returns within about `timeout`, however the endpoints behave.
        """
        if self._closing:
            return
        self._closing = True
        deadline = self._clock() + timeout
        now = self._clock()
        for app in self._apps.values():
            app.queue.flush(now)
        if self._worker is not None:
            self._check_drained()
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - self._clock())):
                    await self._drained.wait()
            self._worker.cancel()
            for task in list(self._requests):
                task.cancel()
            await asyncio.gather(self._worker, *self._requests, return_exceptions=True)
        for app in self._apps.values():
            left = app.queue.discard()
            if left:
                log.warning("webhooks dropped at shutdown", extra={"app": app.id, "events": left})
        if self._session is not None:
            await self._session.close()

    # The worker -------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                self._poll()
                self._log_overflow()
                self._check_drained()
                due = self._next_due()
            except Exception:
                # A bug here must not end webhooks for good, nor spin: log, pause, go on.
                log.exception("webhook worker error")
                due = self._clock() + 1.0
            self._wake.clear()
            self._sleep_until = due
            if due is None:
                await self._wake.wait()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(MIN_SLEEP, due - self._clock())):
                    await self._wake.wait()

    def _poll(self) -> None:
        now, time_ms = self._clock(), int(self._wall() * 1000)
        loop = asyncio.get_running_loop()
        for app in self._apps.values():
            for delivery in app.queue.poll(now, time_ms):
                task = loop.create_task(self._deliver(app, delivery))
                self._requests.add(task)
                task.add_done_callback(self._requests.discard)

    def _next_due(self) -> float | None:
        dues = [d for app in self._apps.values() if (d := app.queue.next_due()) is not None]
        return min(dues, default=None)

    def _check_drained(self) -> None:
        # An event in flight counts as queued until its request is reported done.
        if self._closing and self.queued == 0:
            self._drained.set()

    async def _deliver(self, app: _App, delivery: Delivery) -> None:
        assert self._session is not None
        status: int | None = None
        error: str | None = None
        try:
            async with self._session.post(
                delivery.url,
                data=delivery.body,
                headers=headers(app.key, app.secret, delivery.body),
                allow_redirects=False,
            ) as answer:
                status = answer.status
                length = answer.content_length
                if length is not None and length <= MAX_READ_ANSWER:
                    await answer.read()
        except Exception as exc:
            # Refused, reset, timed out, or an aiohttp surprise: a failed attempt, never a crash.
            error = type(exc).__name__
        ok = status is not None and 200 <= status < 300
        outcome, retry_in = app.queue.done(delivery, ok, self._clock())
        self._log(app, delivery, outcome, status, error, retry_in)
        self._wake.set()

    def _log(
        self,
        app: _App,
        delivery: Delivery,
        outcome: Outcome,
        status: int | None,
        error: str | None,
        retry_in: float | None,
    ) -> None:
        fields: dict[str, object] = {
            "app": app.id,
            "host": app.hosts[delivery.target],
            "attempt": delivery.attempt,
            "events": delivery.events,
        }
        if status is not None:
            fields["status"] = status
        if error is not None:
            fields["error"] = error
        if outcome is Outcome.SENT:
            log.debug("webhook sent", extra=fields)
        elif outcome is Outcome.RETRY:
            fields["retry_in"] = round(retry_in or 0.0, 2)
            log.warning("webhook failed, will retry", extra=fields)
        else:
            log.warning("webhook failed, giving up", extra=fields)

    def _log_overflow(self) -> None:
        dropped = self.counters.dropped_full
        if dropped == self._overflow_logged:
            return
        now = self._clock()
        if now - self._overflow_logged_at < OVERFLOW_LOG_INTERVAL:
            return
        by_class = self.counters.dropped_full_by_class
        since = {
            cls: n - self._overflow_logged_by.get(cls, 0)
            for cls, n in by_class.items()
            if n != self._overflow_logged_by.get(cls, 0)
        }
        # Counts and classes only: never an event, a channel name or a payload.
        log.warning(
            "webhook queue full, dropping events",
            extra={
                "dropped": dropped - self._overflow_logged,
                "classes": since,
                "queued": self.queued,
                "queued_bytes": self.queued_bytes,
            },
        )
        self._overflow_logged, self._overflow_logged_at = dropped, now
        self._overflow_logged_by = dict(by_class)
