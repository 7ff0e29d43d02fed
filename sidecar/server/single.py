"""Everything in one process (workers: 1), with the in-memory broker.

SIGTERM (or SIGINT): the doors shut (the TLS port, the publish socket and the plain-HTTP port
stop accepting; publishers still connected get 503), the publications accepted before are
delivered, every client gets 4200, webhooks still waiting are sent, and the process exits,
all within `shutdown.deadline`. The admin listener answers until the end (`/readyz` says 503
from the signal on). SIGHUP reloads the configuration file (sidecar/server/reloader.py) and the
certificates.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from sidecar.engine.broker import MemoryBroker
from sidecar.engine.relay import Relay
from sidecar.observe.observer import Observer
from sidecar.server.lifecycle import (
    WEBHOOKS_CLOSE_TIMEOUT,
    Deadline,
    close_broker,
    drain_relay,
    stop_signal,
)
from sidecar.server.prepare import Prepared, make_observer, observe_single, tune_garbage_collector
from sidecar.server.reloader import ApiApps, EdgeOrigins, LiveWebhooks, RelayApps, Reloader
from sidecar.server.serving import (
    Edge,
    PlainHttp,
    PublishSide,
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


def on_sighup(reloader: Reloader) -> None:
    """SIGHUP: the configuration file and the certificates, in a task of their own."""

    async def reload() -> None:
        await reloader.reload()
        reloader.reload_certificates()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload()))


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
    on_sighup(reloader)
    plain: PlainHttp | None = None
    edge: Edge | None = None
    publish: PublishSide | None = None
    try:
        plain = await obtain_certificate(sites, prepared, stopping)
        if plain.ready:
            edge, publish = await serve(sites, prepared, relay, broker, observer, reloader)
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
        await stop_accepting(sites, plain, edge, publish)
        webhooks.mute()
        await close_broker(broker, deadline)
        # Webhooks still waiting go out while the clients leave.
        await asyncio.gather(
            drain_relay(relay, deadline, keep=EXIT_MARGIN),
            webhooks.close(timeout=min(WEBHOOKS_CLOSE_TIMEOUT, deadline.remaining(EXIT_MARGIN))),
        )
    finally:
        if edge is not None and edge.certificates is not None:
            await edge.certificates.stop()
        if plain is not None:
            await plain.stop(sites)
        if observer is not None:
            await observer.stop()
        await sites.cleanup()
        remove_socket_file(prepared.config.publish.socket)
        await webhooks.close(timeout=0)
    log.info("stopped")


async def serve(
    sites: Sites,
    prepared: Prepared,
    relay: Relay,
    broker: MemoryBroker,
    observer: Observer | None,
    reloader: Reloader,
) -> tuple[Edge, PublishSide]:
    edge_broker = broker if observer is None else observe_single(observer, relay, broker)
    requests = observer.requests if observer is not None else None
    edge = await serve_edge(sites, prepared, relay, edge_broker, prepared.edge_sockets[0], requests)
    publish = await serve_publish_side(sites, prepared, broker, relay.state, observer)
    await serve_admin(sites, prepared, observer)
    reloader.register(ApiApps(edge.api))
    reloader.register(ApiApps(publish.api))
    reloader.register(EdgeOrigins(edge.policy, edge.cors))
    reloader.register_certificates(edge.certificates)
    return edge, publish


async def stop_accepting(
    sites: Sites, plain: PlainHttp | None, edge: Edge | None, publish: PublishSide | None
) -> None:
    """Every door shut at once; each waits at most a second for its requests in flight."""
    doors = []
    if publish is not None:
        doors.append(publish.stop_accepting(sites))
    if edge is not None:
        doors.append(edge.stop_accepting(sites))
    if plain is not None:
        doors.append(plain.stop(sites))
    await asyncio.gather(*doors)
