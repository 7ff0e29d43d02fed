"""The admin listener's view of the whole sidecar: one process, or a supervisor and its workers.

Relay processes are *sources*: the single process's own RelayProbe, or a worker asked over its
stats line. `collect()` asks every source, adds their reports up (counters through a
CounterBook, so a worker's death never makes a total go down) and adds what only this process
knows: its own publish API (the Unix socket), the certificate, the workers, the broker and the
webhooks. Once a second a sampler turns the totals into the dashboard's history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sidecar.observe.bad_input import BAD_INPUT
from sidecar.observe.certificate_watch import CertificateWatch
from sidecar.observe.cluster_stats import ClusterStats
from sidecar.observe.console import ConsoleFeed
from sidecar.observe.history import History, Point
from sidecar.observe.probe import PublishCounter, RelayProbe, RequestCounter, write_accept_stats
from sidecar.observe.snapshot import RECENT_EVENTS, CounterBook, Snapshot, key, merge
from sidecar.observe.worker_stats import WorkerStatsClient

log = logging.getLogger("sidecar.observe")

Source = Callable[[bool], Awaitable[Snapshot | None]]
SAMPLE_INTERVAL = 1.0
# Readiness asks each worker for its counters; one that takes longer is not ready.
READY_TIMEOUT = 1.0
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class Observer:
    def __init__(
        self,
        cert: Path | None,
        *,
        workers: int,
        broker: str,
        workers_alive: Callable[[], int] | None = None,
        broker_ok: Callable[[], bool] | None = None,
    ) -> None:
        self.requests = RequestCounter()  # this process's publish API (the Unix socket)
        self.publishers: list[PublishCounter] = []
        self.certificate = CertificateWatch(cert)
        self.history = History()
        self.workers_configured = workers
        self.broker_kind = broker
        # Given by whoever runs the workers: how many worker processes are alive, are the
        # broker's pipes all attached (one process: all of them, and its broker is in it).
        self.workers_alive: Callable[[], int] = workers_alive or (lambda: workers)
        self.broker_ok: Callable[[], bool] = broker_ok or (lambda: True)
        # From SIGTERM on (`mark_stopping`): the doors are shut, so not ready (a load balancer
        # moves on).
        self.stopping = False
        # Webhooks' counters (sidecar.webhooks.WebhookCounters), where this process sends them
        # (`bind_webhooks`, once a sender starts).
        self.webhooks: Any = None
        self.worker_restarts = 0
        # With broker kind redis, where the supervisor runs the node's link: its round trips,
        # reconnects and the live nodes (set by whoever makes the link). None otherwise.
        self.cluster: ClusterStats | None = None
        # The debug console's pages. Its switches turn the taps on with the first page: this
        # process's publish APIs here, the relay's or the workers' where the relay runs.
        self.console = ConsoleFeed()
        self.console.switches.append(self._tap_publishers)
        # The Unix socket's API (sidecar.api.handlers.PublishApi), which the console's form
        # publishes through (`bind_publish_api`, where it is served).
        self.publish_api: Any = None
        self.last_full: Snapshot | None = None  # the latest full collection, for the dashboard
        self.watchers = 0  # dashboards connected: the sampler collects in full while any are
        self.ticks = 0  # samples taken
        self._book = CounterBook()
        self._sources: dict[int, Source] = {}
        self._clients: dict[int, WorkerStatsClient] = {}
        self._pids: dict[int, int] = {}
        self._tick = asyncio.Condition()
        self._stopped = False
        self._sampler: asyncio.Task[None] | None = None

    def mark_stopping(self) -> None:
        """The process stops (its first step): readiness says 503 from now on."""
        self.stopping = True

    def bind_webhooks(self, counters: Any) -> None:
        """Webhooks are sent from this process: their counters are reported from now on."""
        self.webhooks = counters

    def bind_publish_api(self, api: Any) -> None:
        """The Unix socket's API, served: the debug console's form publishes through it."""
        self.publish_api = api

    # Sources -------------------------------------------------------------------------------

    def count_publishes(self, broker: Any, source: str = "unix") -> PublishCounter:
        """`broker` wrapped for this process's publish API: what it takes is counted."""
        counter = PublishCounter(broker, source=source)
        if self.console.active:
            counter.tap = self.console.publication
        self.publishers.append(counter)
        return counter

    def _tap_publishers(self, on: bool) -> None:
        for counter in self.publishers:
            counter.tap = self.console.publication if on else None

    def add_local(self, probe: RelayProbe) -> None:
        async def ask(full: bool) -> Snapshot:
            return probe.snapshot(full)

        self._sources[0] = ask

    async def attach_worker(self, worker_id: int, sock: socket.socket, pid: int) -> None:
        client = await WorkerStatsClient.connect(sock)
        self._clients[worker_id] = client
        self._sources[worker_id] = client.ask
        self._pids[worker_id] = pid

    def worker_exited(self, worker_id: int) -> None:
        """Its counters so far stay in the totals; a new worker in its place starts from 0."""
        client = self._clients.pop(worker_id, None)
        if client is not None:
            client.close()
        self._sources.pop(worker_id, None)
        self._pids.pop(worker_id, None)
        self._book.retire(worker_id)
        self.worker_restarts += 1

    # Collecting ----------------------------------------------------------------------------

    async def ask_all(self, full: bool, timeout: float | None = None) -> dict[int, Snapshot | None]:
        ids = list(self._sources)

        async def ask(worker_id: int) -> Snapshot | None:
            source = self._sources[worker_id]
            if timeout is None:
                return await source(full)
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(source(full), timeout)
            return None

        answers = await asyncio.gather(*(ask(i) for i in ids))
        return dict(zip(ids, answers, strict=True))

    async def collect(self, full: bool = True) -> Snapshot:
        answers = await self.ask_all(full)
        for worker_id, snap in answers.items():
            if snap is not None:
                self._book.update(worker_id, snap.counters)
        merged = merge(s for s in answers.values() if s is not None)
        merged.counters = self._book.totals()
        self._add_own(merged)
        return merged

    def _add_own(self, snap: Snapshot) -> None:
        counters, gauges = snap.counters, snap.gauges
        own_published = sum(p.published for p in self.publishers)
        own_bytes = sum(p.published_bytes for p in self.publishers)
        for name, value in (("messages_published", own_published), ("published_bytes", own_bytes)):
            counters[key(name)] = counters.get(key(name), 0) + value
        own_requests: dict[Any, float] = {}
        self.requests.write(own_requests)
        BAD_INPUT.write(own_requests)  # this process's (a worker's come in its snapshot)
        write_accept_stats(own_requests, ("unix", "http", "admin"))  # this process's own listeners
        for k, v in own_requests.items():
            counters[k] = counters.get(k, 0) + v
        events = [e for p in self.publishers for e in p.recent]
        if events:
            snap.events = sorted([*snap.events, *events], key=lambda e: e.time)[-RECENT_EVENTS:]
        cert = self.certificate.current()
        if cert is not None:
            remaining = cert.expires_in()
            gauges[key("certificate_valid")] = 1 if cert.valid() else 0
            if remaining is not None:
                gauges[key("certificate_expiry_seconds")] = remaining
        gauges[key("workers_alive")] = self.workers_alive()
        gauges[key("workers_configured")] = self.workers_configured
        counters[key("worker_restarts")] = self.worker_restarts
        gauges[key("broker_up", kind=self.broker_kind)] = 1 if self.broker_ok() else 0
        if self.cluster is not None:
            self.cluster.write(counters, gauges)
        hooks = self.webhooks
        if hooks is not None:
            counters[key("webhook_events_sent")] = hooks.sent_events
            counters[key("webhook_requests_sent")] = hooks.sent_batches
            counters[key("webhook_failed_attempts")] = hooks.failed_attempts
            for reason in ("full", "expired", "at_close"):
                value = getattr(hooks, f"dropped_{reason}")
                counters[key("webhook_events_dropped", reason=reason)] = value
        for worker_id, pid in self._pids.items():
            usage = process_usage(pid)
            if usage is not None:
                counters[key("worker_cpu_seconds", worker=str(worker_id))] = usage[0]
                gauges[key("worker_resident_memory_bytes", worker=str(worker_id))] = usage[1]

    # Health --------------------------------------------------------------------------------

    def health(self) -> dict[str, object]:
        return {"workers": self.workers_alive(), "workers_configured": self.workers_configured}

    async def readiness(self) -> tuple[bool, dict[str, dict[str, object]]]:
        """Listening, certificate valid, broker reachable: each check with what it saw."""
        answers = await self.ask_all(False, timeout=READY_TIMEOUT)
        answering = sum(1 for a in answers.values() if a is not None)
        alive = self.workers_alive()
        listening = answering == self.workers_configured and not self.stopping
        checks: dict[str, dict[str, object]] = {
            "listening": {
                "ok": listening,
                "stopping": self.stopping,
                "workers_answering": answering,
                "workers_alive": alive,
                "workers_configured": self.workers_configured,
            },
        }
        cert = self.certificate.current()
        if cert is None:
            checks["certificate"] = {"ok": True, "tls": "off"}
        else:
            checks["certificate"] = {"ok": cert.valid(), **cert.as_dict()}
        checks["broker"] = {"ok": self.broker_ok() and listening, "kind": self.broker_kind}
        return all(bool(c["ok"]) for c in checks.values()), checks

    # The once-a-second sampler -------------------------------------------------------------

    def start(self) -> None:
        if self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(self._sample_forever())

    async def stop(self) -> None:
        async with self._tick:
            self._stopped = True  # dashboards' streams end now, not at the server's deadline
            self._tick.notify_all()
        self.console.shutdown()
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        for client in self._clients.values():
            client.close()

    async def _sample_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += SAMPLE_INTERVAL
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            try:
                await self.sample()
            except Exception:  # never let the dashboard's sampler die quietly
                log.exception("metrics sampler failed")

    async def sample(self) -> Point | None:
        full = self.watchers > 0
        snap = await self.collect(full)
        if full:
            self.last_full = snap
        point = self.history.add(time.time(), snap.counters, int(snap.total("connections")))
        async with self._tick:
            self.ticks += 1
            self._tick.notify_all()
        return point

    async def next_tick(self, seen: int) -> int | None:
        """Wait for a sample after the `seen`th (none is missed while the caller was busy);
        None once stopping."""
        async with self._tick:
            await self._tick.wait_for(lambda: self.ticks > seen or self._stopped)
            return None if self._stopped else self.ticks


def process_usage(pid: int) -> tuple[float, int] | None:
    """CPU seconds (user + system) and resident bytes of a process, from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/statm") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, resident_pages * PAGE_SIZE
