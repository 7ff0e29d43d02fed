"""Every core: a supervisor process and one worker per core.

The supervisor owns what exists once: the publish socket, the plain-HTTP redirect, the admin
listener, and the hub of the pipe broker. Each worker is a fresh interpreter (`sidecar _worker`,
sidecar/server/worker.py) that inherits its own SO_REUSEPORT listening socket on the TLS port,
so the kernel spreads browser connections across workers; one end of a pipe to the hub, so
every worker receives every publication; and one end of a control line
(sidecar/server/control.py) for what is not the broker's: reloads, the debug console, and the
worker's word that it has finished. A publish is acknowledged once the hub has written it to
the pipes: the supervisor never fans out, so publishing stays fast however many subscribers
there are.

A worker that dies is started again (its listening socket stays open in the supervisor, so
connections wait in the backlog meanwhile).

SIGTERM, within `shutdown.deadline`: the supervisor shuts the publish socket (a publisher
still connected gets 503) and the plain-HTTP port, closes its copies of the TLS listening
sockets and passes the signal on; each worker shuts its TLS port and its signed API and says
on its control line how many publications it wrote to its pipe; once the hub has read them
all from every worker, it writes everything accepted, then closes the pipes; each
worker delivers what it received, closes its clients with 4200 and exits. The supervisor
sends the webhooks still waiting meanwhile, kills a worker still there at the deadline, and
exits.

Workers never read the configuration file: the supervisor hands each the text it validated
(inherited memfds at start: the text the cluster started with and the latest reloaded one; the
control line on reload), so a file edited meanwhile can neither make a worker disagree with the
others nor stop a restarted worker from starting.

SIGHUP: the supervisor re-reads the configuration file and applies its part (the publish
socket's apps, webhooks, the log level); if the file is valid it sends each worker, over its
control line, the text to apply its own part from (apps and limits of its relay, the Origin
allow-list, its signed API), and each reloads its certificates. A file that does not validate is
refused by the supervisor; the workers then reload their certificates only (as they do after
an ACME renewal). Workers ignore SIGHUP itself: a terminal's hangup reaches the whole process
group, and the supervisor decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar.config.model import Config
from sidecar.engine.broker.changes import Change
from sidecar.engine.broker.factory import make_broker
from sidecar.engine.broker.redis import RedisHubBroker
from sidecar.engine.presence import make_presence_store
from sidecar.observe.cluster_stats import ClusterStats
from sidecar.observe.observer import Observer
from sidecar.server.control import SupervisorControl
from sidecar.server.lifecycle import (
    WEBHOOKS_CLOSE_TIMEOUT,
    Deadline,
    Step,
    StopSequence,
    bounded,
    reload_signal,
    stop_signal,
)
from sidecar.server.prepare import Prepared, make_observer
from sidecar.server.reloader import ApiApps, LiveWebhooks, Reloader
from sidecar.server.serving import (
    Sites,
    obtain_certificate,
    remove_socket_file,
    serve_admin,
    serve_publish_side,
)

log = logging.getLogger("sidecar.cluster")

# A worker that keeps dying is restarted at most this often.
RESPAWN_BACKOFF = (0.5, 1, 2, 5, 10)
# A worker that lived this long before dying starts the back-off again from the beginning.
STABLE_AFTER = 30.0
# Seconds kept back for the last steps of the supervisor (killing, cleaning up).
SUPERVISOR_MARGIN = 0.25


@dataclass
class WorkerHandle:
    worker_id: int
    proc: asyncio.subprocess.Process
    started: float
    failures: int = 0
    watcher: asyncio.Task[None] | None = None


class Supervisor:
    def __init__(
        self,
        prepared: Prepared,
        config_path: str | None,
        workers: int,
        config_text: str | None = None,
    ) -> None:
        self.prepared = prepared
        self.config_path = config_path
        self.count = workers
        # The cluster-wide channel state, fed by the hub in its order: it answers the Unix
        # socket's queries and is where webhooks are sent from (self.state.on_event); a worker
        # that attaches starts from it.
        self.state = make_presence_store(prepared.config.limits)
        self.hub = make_broker(
            "hub", prepared.config.broker, snapshot=self.state.snapshot, workers=workers
        )
        if isinstance(self.hub, RedisHubBroker):
            self._join_cluster(self.hub)
        self.handles: dict[int, WorkerHandle] = {}
        self.controls: dict[int, SupervisorControl] = {}
        self.stopping = False
        self.observer = self._make_observer()
        self.webhooks = LiveWebhooks(self.state, self.observer)
        # What the cluster started with: restart-only settings stay as in it
        # (sidecar/server/reload_plan.py), for a worker started later too (sidecar/server/worker.py:
        # worker_config).
        self.started_text = config_text
        self.reloader = Reloader(
            prepared.config, prepared.apps, config_path, config_text, parts=[self.webhooks]
        )

    def _make_observer(self) -> Observer | None:
        observer = make_observer(
            self.prepared,
            self.count,
            workers_alive=self.alive,
            broker_ok=lambda: self.hub.workers == self.count and self.hub.up,
        )
        if observer is not None:
            # The debug console: the workers' taps over their control lines, member and
            # channel events from the cluster-wide state here (each worker applies every
            # change).
            observer.console.switches.append(self._console_taps)
            if isinstance(self.hub, RedisHubBroker):
                observer.cluster = cluster_stats(self.hub)
        return observer

    def _join_cluster(self, hub: RedisHubBroker) -> None:
        """With Redis: this node's share, its number for the webhook-once rule, eviction."""
        hub.cache_ttl = self.prepared.config.limits.cache_ttl
        hub.share = self.state.share_of
        self.state.node_num = hub.node_num

        def evicted() -> None:
            # Swept while alive: a new node number; the workers close their clients with
            # 4200 and are started again (_watch), so the clients join as the new node's.
            self.state.node_num = hub.node_num
            self.signal_workers(signal.SIGTERM)

        hub.on_evicted = evicted

    def _console_taps(self, on: bool) -> None:
        assert self.observer is not None
        for control in self.controls.values():
            control.console(on)
        self.state.on_transitions = self.observer.console.transitions if on else None

    def _console_items(self, worker_id: int, items: list[Any]) -> None:
        if self.observer is not None:
            self.observer.console.add_all(items, worker_id)

    def alive(self) -> int:
        return sum(1 for h in self.handles.values() if h.proc.returncode is None)

    def _changed(self, origin: int, changes: list[Change]) -> None:
        self.state.apply_all(origin, changes)

    def _reported(self, app_id: str, event: dict[str, Any]) -> None:
        """client_event and cache_miss from the workers, for the same observer."""
        if self.state.on_event is not None:
            self.state.on_event(app_id, event)

    async def spawn(self, worker_id: int, failures: int = 0) -> None:
        stats = socket.socketpair() if self.observer is not None else None
        try:
            await self._spawn(worker_id, failures, stats[1] if stats else None)
        finally:
            if stats is not None:
                stats[1].close()
        if stats is not None and self.observer is not None:
            pid = self.handles[worker_id].proc.pid
            await self.observer.attach_worker(worker_id, stats[0], pid)

    async def _spawn(self, worker_id: int, failures: int, stats: socket.socket | None) -> None:
        hub_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        control_end, worker_control = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # Addressed from now on, before the configuration's text is read for its command: a
        # reload applied meanwhile reaches it too (once more at worst, which changes nothing).
        control = SupervisorControl(worker_id, control_end, self.hub.finished, self._console_items)
        self.controls[worker_id] = control
        if self.observer is not None and self.observer.console.active:
            control.console(True)  # a debug console is open: a worker started now is told
        listen = self.prepared.edge_sockets[worker_id]
        command = [
            sys.executable,
            "-m",
            "sidecar.cli",
            "_worker",
            "--worker-id",
            str(worker_id),
            "--listen-fd",
            str(listen.fileno()),
            "--broker-fd",
            str(worker_end.fileno()),
            "--control-fd",
            str(worker_control.fileno()),
        ]
        fds = [listen.fileno(), worker_end.fileno(), worker_control.fileno()]
        texts = []
        if self.config_path is not None and self.started_text is not None:
            command += ["--config", self.config_path]
            texts.append(("--config-fd", self.started_text))
            if self.reloader.text != self.started_text and self.reloader.text is not None:
                texts.append(("--reloaded-config-fd", self.reloader.text))
        text_fds = [text_fd(text) for _, text in texts]
        for (option, _), fd in zip(texts, text_fds, strict=True):
            command += [option, str(fd)]
        fds += text_fds
        if stats is not None:
            command += ["--stats-fd", str(stats.fileno())]
            fds.append(stats.fileno())
        try:
            proc = await asyncio.create_subprocess_exec(*command, pass_fds=fds)
        except BaseException:
            if self.controls.get(worker_id) is control:
                del self.controls[worker_id]
            control.close()
            hub_end.close()
            raise
        finally:
            worker_end.close()
            worker_control.close()
            for fd in text_fds:
                os.close(fd)
        handle = WorkerHandle(worker_id, proc, time.monotonic(), failures)
        self.handles[worker_id] = handle
        await self.hub.attach(worker_id, hub_end)
        await control.open()
        handle.watcher = asyncio.ensure_future(self._watch(handle))

    async def _watch(self, handle: WorkerHandle) -> None:
        """Start a worker that died again, with back-off, unless we are stopping."""
        code = await handle.proc.wait()
        if self.stopping:
            return
        self.hub.detach(handle.worker_id)
        control = self.controls.pop(handle.worker_id, None)
        if control is not None:
            control.close()
        if self.observer is not None:
            self.observer.worker_exited(handle.worker_id)
        lived = time.monotonic() - handle.started
        failures = 0 if lived > STABLE_AFTER else handle.failures + 1
        delay = RESPAWN_BACKOFF[min(failures, len(RESPAWN_BACKOFF) - 1)]
        log.error(
            "worker exited; starting it again",
            extra={"worker": handle.worker_id, "exit_code": code, "restart_in_s": delay},
        )
        await asyncio.sleep(delay)
        if not self.stopping:
            await self.spawn(handle.worker_id, failures)

    def signal_workers(self, sig: int) -> None:
        for handle in self.handles.values():
            if handle.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    handle.proc.send_signal(sig)

    def reload_workers(self, config_text: str | None = None) -> None:
        """Every worker reloads `config_text` (the text validated here) and its certificates,
        or with None its certificates only, now (not at its next check)."""
        for control in self.controls.values():
            control.reload(config_text)

    async def reload(self) -> None:
        """SIGHUP: validated and applied here first; then the workers do their part."""
        plan = await self.reloader.reload()
        self.reload_workers(self.reloader.text if plan is not None else None)

    async def run(self, banner: Callable[[Prepared], None]) -> None:
        sites = Sites()
        stopping = stop_signal()
        reload_signal(self.reload)
        await self.hub.start(lambda publication: None, self._changed, self._reported)
        await self.webhooks.start(self.prepared.apps, self.prepared.config.webhooks)
        stop = self._stop_sequence(sites)
        try:
            # The supervisor owns the plain-HTTP port, so it answers ACME and orders the
            # certificate; workers start once it is on disk and follow its renewals.
            plain = await obtain_certificate(sites, self.prepared, stopping)
            stop.on_release(lambda: plain.stop(sites))
            stop.at(Step.SHUT, lambda _: plain.stop(sites))
            if plain.acme is not None:
                plain.acme.on_new_certificate.append(self.reload_workers)
            if plain.ready:
                await self._serve(sites, banner, stopping, stop)
            deadline = Deadline(self.reloader.config.shutdown.deadline)
            log.info("stopping", extra={"workers": self.count, "deadline_s": deadline.remaining()})
            self.stopping = True
            await stop.run(deadline)
        finally:
            self.stopping = True
            await stop.release()
        log.info("stopped")

    def _stop_sequence(self, sites: Sites) -> StopSequence:
        """The stop in order (module docstring), within the deadline."""
        stop = StopSequence()
        observer = self.observer
        if observer is not None:
            stop.at(Step.SHUT, lambda _: observer.mark_stopping())
        stop.on_release(lambda: self.webhooks.close(timeout=0))
        stop.on_release(lambda: remove_socket_file(self.prepared.config.publish.socket))
        stop.on_release(lambda: self._reap(0))
        stop.on_release(self.hub.close)
        stop.on_release(self._close_controls)
        stop.on_release(sites.cleanup)
        if observer is not None:
            stop.on_release(observer.stop)
        # The workers' copies of the TLS listening sockets stay open until each shuts its own.
        stop.at(Step.SHUT, lambda _: self._close_edge_sockets())
        stop.at(Step.HAND_OVER, lambda _: self.webhooks.mute())
        stop.at(Step.HAND_OVER, lambda _: self.signal_workers(signal.SIGTERM))
        # Every worker says when it has shut its own doors; half the time at most, so that
        # a stuck one leaves the others time to close their clients.
        stop.at(Step.HAND_OVER, lambda deadline: self.hub.close(wait=deadline.remaining() / 2))
        stop.at(Step.LET_GO, lambda deadline: self._reap(deadline.remaining(SUPERVISOR_MARGIN)))
        stop.at(
            Step.LET_GO,
            lambda deadline: self.webhooks.close(
                timeout=min(WEBHOOKS_CLOSE_TIMEOUT, deadline.remaining(SUPERVISOR_MARGIN))
            ),
        )
        return stop

    def _close_controls(self) -> None:
        for control in self.controls.values():
            control.close()

    def _close_edge_sockets(self) -> None:
        for sock in self.prepared.edge_sockets:
            sock.close()

    async def _serve(
        self,
        sites: Sites,
        banner: Callable[[Prepared], None],
        stopping: asyncio.Event,
        stop: StopSequence,
    ) -> None:
        for worker_id in range(self.count):
            await self.spawn(worker_id)
        publish = await serve_publish_side(
            sites, self.prepared, self.hub, self.state, self.observer
        )
        stop.at(Step.SHUT, lambda _: publish.stop_accepting(sites))
        self.reloader.register(ApiApps(publish.api))
        await serve_admin(sites, self.prepared, self.observer)
        banner(self.prepared)
        log.info(
            "ready",
            extra={"socket": self.prepared.config.publish.socket, "workers": self.count},
        )
        await stopping.wait()

    async def _reap(self, seconds: float) -> None:
        """Wait up to `seconds` for the workers to exit; kill those still there."""
        procs = [h.proc for h in self.handles.values() if h.proc.returncode is None]
        if not await bounded(asyncio.gather(*(p.wait() for p in procs)), seconds):
            for proc in procs:
                if proc.returncode is None:
                    log.error("worker did not stop in time; killed", extra={"pid": proc.pid})
                    proc.kill()
                    await proc.wait()
        for handle in self.handles.values():
            if handle.watcher is not None:
                handle.watcher.cancel()


def text_fd(text: str) -> int:
    """A file descriptor to hand a worker `text` by (read from the start, then closed)."""
    fd = os.memfd_create("sidecar-config", 0)  # not inheritable, but for pass_fds
    os.write(fd, text.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def worker_count(config: Config) -> int:
    if config.workers == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    return int(config.workers)


def cluster_stats(hub: RedisHubBroker) -> ClusterStats:
    """What /metrics, /status and the dashboard show of the node and its cluster."""
    stats = ClusterStats()
    stats.node = lambda: (hub.node_id, hub.node_num)
    stats.nodes = lambda: (
        [node.as_json() for node in hub.liveness.live_nodes()] if hub.liveness else []
    )
    stats.reconnects = lambda: hub.link.reconnects
    hub.link.on_round_trip = stats.round_trip
    return stats
