"""A worker process (`sidecar _worker`, started by the supervisor in sidecar/server/supervisor.py).

It holds browser connections on its own SO_REUSEPORT listening socket and meets the others in
the supervisor's hub over one pipe. Its configuration is the text the supervisor validated
(an inherited memfd at start, the pipe on reload): it never reads the file itself. SIGTERM (or
the pipe closing): it shuts its TLS port and signed API, tells the hub it has finished,
delivers what the hub sends until it closes the pipe, then closes its clients with 4200 and
exits, all within its share of `shutdown.deadline`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from sidecar.config import model as config_module
from sidecar.config.model import Config
from sidecar.engine.broker.factory import make_broker
from sidecar.engine.broker.pipe import WorkerBroker
from sidecar.engine.relay import Relay
from sidecar.observe.console_worker import WorkerConsole
from sidecar.observe.worker_stats import serve_worker_stats
from sidecar.server.lifecycle import (
    Step,
    ignore_hangup,
    run_loop,
    stop_signal,
)
from sidecar.server.memory import tune_memory
from sidecar.server.node import Node
from sidecar.server.prepare import (
    Prepared,
    certificate_files,
    observe_relay,
    resolve_apps,
)
from sidecar.server.reload_plan import plan_reload
from sidecar.server.reloader import Reloader
from sidecar.server.serving import Edge, Sites, serve_edge

log = logging.getLogger("sidecar.cluster")

# A worker's share of the deadline ends this much before the supervisor's, which kills a
# worker still there at its own end: a worker closing clients on time is never killed.
WORKER_MARGIN = 0.5


async def run_worker(
    config: Config,
    worker_id: int,
    listen_fd: int,
    broker_fd: int,
    stats_fd: int | None = None,
    config_path: str | None = None,
    config_text: str | None = None,
) -> None:
    tune_memory()
    apps, _ = resolve_apps(config)
    cert, key = certificate_files(config)
    listen = socket.socket(fileno=listen_fd)
    prepared = Prepared(config, apps, False, cert, key, [listen], None, None)
    broker = make_broker("worker", config.broker, pipe=socket.socket(fileno=broker_fd))
    node = Node(prepared, broker, config_path, config_text, quiet=True)
    relay, sites = node.relay, node.sites
    reloads = WorkerReloads(node.reloader)
    broker.on_reload = reloads.request
    await broker.start(relay.deliver, relay.on_changes)
    # Ctrl-C reaches the whole process group; the supervisor decides, the worker waits for it.
    stop_requested = stop_signal(interrupt=False)
    node.stop_sequence.on_release(sites.cleanup)
    pipe_closed: asyncio.Future[None] | None = None

    def finish() -> None:
        if pipe_closed is None or not pipe_closed.done():
            broker.finish()

    node.stop_sequence.at(Step.HAND_OVER, lambda _: finish())
    try:
        edge = await serve_observed_edge(sites, prepared, relay, broker, listen, stats_fd)
        node.serving(edge)
        reloads.start()
        pipe_closed = asyncio.ensure_future(broker.close())
        stopped = asyncio.ensure_future(stop_requested.wait())
        # The hub closing the pipe (shutdown, or the supervisor gone) ends the worker too.
        await asyncio.wait((pipe_closed, stopped), return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        await node.stop(node.deadline(WORKER_MARGIN))
    finally:
        await node.release()
    log.debug("worker stopped", extra={"worker": worker_id})


class WorkerReloads:
    """Reloads the supervisor asks for; one asked for before the worker serves waits for it
    (the worker read the file before, but maybe not the one the supervisor validated)."""

    def __init__(self, reloader: Reloader) -> None:
        self.reloader = reloader
        self.serving = False
        self.waiting: list[str | None] = []  # asked for before serving, in order

    def request(self, config_text: str | None) -> None:
        if not self.serving:
            self.waiting.append(config_text)
            return
        asyncio.get_running_loop().create_task(self._reload(config_text))

    def start(self) -> None:
        self.serving = True
        for config_text in self.waiting:
            self.request(config_text)
        self.waiting.clear()

    async def _reload(self, config_text: str | None) -> None:
        try:
            if config_text is not None:
                await self.reloader.reload(config_text)
            self.reloader.reload_certificates()
        except Exception:  # a bug must not pass silently in a task nobody awaits
            log.exception("reload failed in a worker")


async def serve_observed_edge(
    sites: Sites,
    prepared: Prepared,
    relay: Relay,
    broker: WorkerBroker,
    listen: socket.socket,
    stats_fd: int | None,
) -> Edge:
    """The TLS port; with a stats line, the worker's probe too, answering once listening."""
    if stats_fd is None:
        return await serve_edge(sites, prepared, relay, broker, listen)
    probe, edge_broker, requests = observe_relay(relay, broker)
    console = WorkerConsole(relay, edge_broker, broker.console)
    broker.on_console = console.switch
    console.switch(broker.console_on)  # a console already open when this worker started
    edge = await serve_edge(sites, prepared, relay, edge_broker, listen, requests)
    await serve_worker_stats(socket.socket(fileno=stats_fd), probe.snapshot)
    return edge


def worker_main(
    config_path: str | None,
    worker_id: int,
    listen_fd: int,
    broker_fd: int,
    stats_fd: int | None = None,
    config_fd: int | None = None,
    reloaded_fd: int | None = None,
) -> int:
    from sidecar.observe.logging import setup

    # Reloads come from the supervisor over the pipe; a hangup of the terminal (to the whole
    # process group) is the supervisor's to act on, not an end of this worker.
    ignore_hangup()
    config, text = worker_config(config_path, read_fd(config_fd), read_fd(reloaded_fd))
    setup(config.log.level)
    run_loop(run_worker(config, worker_id, listen_fd, broker_fd, stats_fd, config_path, text))
    return 0


def read_fd(fd: int | None) -> str | None:
    if fd is None:
        return None
    with os.fdopen(fd, encoding="utf-8") as f:
        return f.read()


def worker_config(
    path: str | None, started: str | None, reloaded: str | None
) -> tuple[Config, str | None]:
    """What a worker runs with, and the text it came from.

    `started` is the text the cluster started with; `reloaded`, the one its latest reload
    applied. A worker (re)started after reloads runs as the others do: the reloaded settings,
    with those that need a restart as they were at the start (sidecar/server/reload_plan.py).
    """
    if path is None:
        return Config(), None
    if started is None:  # started by hand, or by an older supervisor
        started = config_module.read_text(path)
    config = config_module.parse(started, path)
    if reloaded is None:
        return config, started
    return plan_reload(config, config_module.parse(reloaded, path)).effective, reloaded
