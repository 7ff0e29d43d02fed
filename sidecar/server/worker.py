"""A worker process (`sidecar _worker`, started by the supervisor in sidecar/server/supervisor.py).

It holds browser connections on its own SO_REUSEPORT listening socket and meets the others in
the supervisor's hub over one pipe (the broker's); reloads, the debug console and its word
that it has finished go on a control line beside it (sidecar/server/control.py). Its
configuration is the text the supervisor validated (an inherited memfd at start, the control
line on reload): it never reads the file itself. SIGTERM (or the pipe closing): it shuts its
TLS port and signed API, tells the supervisor how many publications it wrote to its pipe,
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
from sidecar.observe.console_worker import WorkerConsole
from sidecar.observe.worker_stats import serve_worker_stats
from sidecar.server.control import WorkerControl
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

log = logging.getLogger("sidecar.cluster")

# A worker's share of the deadline ends this much before the supervisor's, which kills a
# worker still there at its own end: a worker closing clients on time is never killed.
WORKER_MARGIN = 0.5


async def run_worker(
    config: Config,
    worker_id: int,
    listen_fd: int,
    broker_fd: int,
    control_fd: int,
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
    control = WorkerControl(socket.socket(fileno=control_fd))
    node = Node(prepared, broker, config_path, config_text, quiet=True)
    node.stop_sequence.on_release(control.close)
    await node.start()
    # Ctrl-C reaches the whole process group; the supervisor decides, the worker waits for it.
    stop_requested = stop_signal(interrupt=False)
    pipe_closed: asyncio.Future[None] | None = None

    def finish() -> None:
        if pipe_closed is None or not pipe_closed.done():
            control.finished(broker.published)

    node.stop_sequence.at(Step.HAND_OVER, lambda _: finish())
    try:
        console = await serve_observed_edge(node, broker, control, listen, stats_fd)
        # Read once the worker serves: a reload or a console switch the supervisor sent while
        # it started waited in the socket until now.
        reloads = WorkerReloads(node.reloader)
        await control.listen(reloads.request, console.switch if console is not None else None)
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
    """Reloads the supervisor asks for, each in a task of its own (the Reloader's lock keeps
    them in order)."""

    def __init__(self, reloader: Reloader) -> None:
        self.reloader = reloader

    def request(self, config_text: str | None) -> None:
        asyncio.get_running_loop().create_task(self._reload(config_text))

    async def _reload(self, config_text: str | None) -> None:
        try:
            if config_text is not None:
                await self.reloader.reload(config_text)
            self.reloader.reload_certificates()
        except Exception:  # a bug must not pass silently in a task nobody awaits
            log.exception("reload failed in a worker")


async def serve_observed_edge(
    node: Node,
    broker: WorkerBroker,
    control: WorkerControl,
    listen: socket.socket,
    stats_fd: int | None,
) -> WorkerConsole | None:
    """The TLS port; with a stats line, the worker's probe too, answering once listening, and
    its end of the debug console (its items to the supervisor on the control line)."""
    if stats_fd is None:
        await node.serve_edge(listen)
        return None
    probe, edge_broker, requests = observe_relay(node.relay, broker)
    console = WorkerConsole(node.relay, edge_broker, control.console_items)
    await node.serve_edge(listen, edge_broker, requests)
    await serve_worker_stats(socket.socket(fileno=stats_fd), probe.snapshot)
    return console


def worker_main(
    config_path: str | None,
    worker_id: int,
    listen_fd: int,
    broker_fd: int,
    control_fd: int,
    stats_fd: int | None = None,
    config_fd: int | None = None,
    reloaded_fd: int | None = None,
) -> int:
    from sidecar.observe.logging import setup

    # Reloads come from the supervisor over the control line; a hangup of the terminal (to the whole
    # process group) is the supervisor's to act on, not an end of this worker.
    ignore_hangup()
    config, text = worker_config(config_path, read_fd(config_fd), read_fd(reloaded_fd))
    setup(config.log.level)
    run_loop(
        run_worker(config, worker_id, listen_fd, broker_fd, control_fd, stats_fd, config_path, text)
    )
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
