"""Everything in one process (workers: 1), with the in-memory broker.

SIGTERM (or SIGINT): the doors shut (the TLS port, the publish socket and the plain-HTTP port
stop accepting; publishers still connected get 503), the publications accepted before are
delivered, every client gets 4200, webhooks still waiting are sent, and the process exits,
all within `shutdown.deadline`. The admin listener answers until the end (`/readyz` says 503
from the signal on). SIGHUP reloads the configuration file (sidecar/server/reloader.py) and the
certificates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sidecar.engine.broker import MemoryBroker
from sidecar.engine.broker.factory import make_broker
from sidecar.observe.observer import Observer
from sidecar.server.lifecycle import (
    WEBHOOKS_CLOSE_TIMEOUT,
    Step,
    reload_signal,
    stop_signal,
)
from sidecar.server.memory import tune_memory
from sidecar.server.node import Node
from sidecar.server.prepare import Prepared, make_observer, observe_single
from sidecar.server.reloader import ApiApps, LiveWebhooks, Reloader
from sidecar.server.serving import (
    Edge,
    obtain_certificate,
    remove_socket_file,
    serve_admin,
    serve_publish_side,
)

log = logging.getLogger("sidecar")

# Seconds of the deadline kept back for the last steps (listeners cleaned up, the socket file).
EXIT_MARGIN = 0.25


async def reload_all(reloader: Reloader) -> None:
    """SIGHUP: the configuration file and the certificates."""
    await reloader.reload()
    reloader.reload_certificates()


async def run_single(
    prepared: Prepared, banner: Callable[[Prepared], None], config_path: str | None = None
) -> None:
    tune_memory()
    broker = make_broker("single", prepared.config.broker)
    node = Node(prepared, broker, config_path, keep=EXIT_MARGIN)
    relay, sites, stop = node.relay, node.sites, node.stop_sequence
    # One process: its channel state is the one webhooks are sent from (relay.state.on_event).
    await node.start()
    stopping = stop_signal()
    observer = make_observer(prepared, 1)
    if observer is not None:
        stop.at(Step.SHUT, lambda _: observer.mark_stopping())
    webhooks = LiveWebhooks(relay.state, observer)
    await webhooks.start(prepared.apps, prepared.config.webhooks)
    node.reloader.register(webhooks)
    reload_signal(lambda: reload_all(node.reloader))
    stop.on_release(lambda: webhooks.close(timeout=0))
    stop.on_release(lambda: remove_socket_file(prepared.config.publish.socket))
    if observer is not None:
        stop.on_release(observer.stop)
    stop.at(Step.HAND_OVER, lambda _: webhooks.mute())
    # Webhooks still waiting go out while the clients leave.
    stop.at(
        Step.LET_GO,
        lambda deadline: webhooks.close(
            timeout=min(WEBHOOKS_CLOSE_TIMEOUT, deadline.remaining(EXIT_MARGIN))
        ),
    )
    try:
        plain = await obtain_certificate(sites, prepared, stopping)
        stop.on_release(lambda: plain.stop(sites))
        # Every door shut at once; each waits at most a second for its requests in flight.
        stop.at(Step.SHUT, lambda _: plain.stop(sites))
        if plain.ready:
            edge = await serve(prepared, node, broker, observer)
            if plain.acme is not None and edge.certificates is not None:
                reload = edge.certificates.reload
                plain.acme.on_new_certificate.append(lambda: reload(force=True))
            banner(prepared)
            log.info("ready", extra={"socket": prepared.config.publish.socket, "workers": 1})
            await stopping.wait()
        deadline = node.deadline()
        log.info(
            "stopping",
            extra={"connections": len(relay.connections), "deadline_s": deadline.remaining()},
        )
        await node.stop(deadline)
    finally:
        await node.release()
    log.info("stopped")


async def serve(
    prepared: Prepared, node: Node, broker: MemoryBroker, observer: Observer | None
) -> Edge:
    relay, sites = node.relay, node.sites
    edge_broker = broker if observer is None else observe_single(observer, relay, broker)
    requests = observer.requests if observer is not None else None
    edge = await node.serve_edge(prepared.edge_sockets[0], edge_broker, requests)
    publish = await serve_publish_side(sites, prepared, broker, relay.state, observer)
    await serve_admin(sites, prepared, observer)
    node.reloader.register(ApiApps(publish.api))
    node.stop_sequence.at(Step.SHUT, lambda _: publish.stop_accepting(sites))
    return edge
