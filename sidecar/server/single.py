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
from sidecar.engine.relay import Relay
from sidecar.observe.observer import Observer
from sidecar.server.lifecycle import (
    WEBHOOKS_CLOSE_TIMEOUT,
    Deadline,
    Step,
    StopSequence,
    close_broker,
    drain_relay,
    reload_signal,
    stop_signal,
)
from sidecar.server.prepare import Prepared, make_observer, observe_single, tune_garbage_collector
from sidecar.server.reloader import ApiApps, EdgeOrigins, LiveWebhooks, RelayApps, Reloader
from sidecar.server.serving import (
    Edge,
    Sites,
    obtain_certificate,
    remove_socket_file,
    serve_admin,
    serve_edge,
    serve_publish_side,
    start_relay,
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
    tune_garbage_collector()
    broker = MemoryBroker()
    relay = start_relay(prepared, broker)
    # One process: its channel state is the one webhooks are sent from (relay.state.on_event).
    await broker.start(relay.deliver, relay.on_changes, relay.notify)
    sites = Sites()
    stopping = stop_signal()
    observer = make_observer(prepared, 1)
    webhooks = LiveWebhooks(relay.state, observer)
    await webhooks.start(prepared.apps, prepared.config.webhooks)
    reloader = Reloader(
        prepared.config, prepared.apps, config_path, parts=[RelayApps(relay), webhooks]
    )
    reload_signal(lambda: reload_all(reloader))
    stop = StopSequence()
    stop.on_release(lambda: webhooks.close(timeout=0))
    stop.on_release(lambda: remove_socket_file(prepared.config.publish.socket))
    stop.on_release(sites.cleanup)
    if observer is not None:
        stop.on_release(observer.stop)
    stop.at(Step.HAND_OVER, lambda _: webhooks.mute())
    stop.at(Step.HAND_OVER, lambda deadline: close_broker(broker, deadline))
    stop.at(Step.LET_GO, lambda deadline: drain_relay(relay, deadline, keep=EXIT_MARGIN))
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
            edge = await serve(sites, prepared, relay, broker, observer, reloader, stop)
            if plain.acme is not None and edge.certificates is not None:
                reload = edge.certificates.reload
                plain.acme.on_new_certificate.append(lambda: reload(force=True))
            banner(prepared)
            log.info("ready", extra={"socket": prepared.config.publish.socket, "workers": 1})
            await stopping.wait()
        deadline = Deadline(reloader.config.shutdown.deadline)
        log.info(
            "stopping",
            extra={"connections": len(relay.connections), "deadline_s": deadline.remaining()},
        )
        if observer is not None:
            observer.stopping = True
        await stop.run(deadline)
    finally:
        await stop.release()
    log.info("stopped")


async def serve(
    sites: Sites,
    prepared: Prepared,
    relay: Relay,
    broker: MemoryBroker,
    observer: Observer | None,
    reloader: Reloader,
    stop: StopSequence,
) -> Edge:
    edge_broker = broker if observer is None else observe_single(observer, relay, broker)
    requests = observer.requests if observer is not None else None
    edge = await serve_edge(sites, prepared, relay, edge_broker, prepared.edge_sockets[0], requests)
    if edge.certificates is not None:
        stop.on_release(edge.certificates.stop)
    publish = await serve_publish_side(sites, prepared, broker, relay.state, observer)
    await serve_admin(sites, prepared, observer)
    reloader.register(ApiApps(edge.api))
    reloader.register(ApiApps(publish.api))
    reloader.register(EdgeOrigins(edge.policy, edge.cors))
    reloader.register_certificates(edge.certificates)
    stop.at(Step.SHUT, lambda _: publish.stop_accepting(sites))
    stop.at(Step.SHUT, lambda _: edge.stop_accepting(sites))
    return edge
