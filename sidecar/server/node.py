"""A node: a process that holds browser connections, the single process or one worker.

What both are made of: a relay fed by the broker it is given, the listeners of the process
(`sites`), the reloader the relay and the TLS port register with, and the stop sequence the
relay, the broker and the TLS port take their steps in (sidecar/server/lifecycle.py). Both
start the same way (`start`, then `serve_edge`) and stop the same way (`stop`, then
`release`). What differs stays with each: the single process also serves the publish socket,
the plain-HTTP port, the admin listener and sends webhooks (sidecar/server/single.py); a
worker meets the others over its pipe and control line, and stops when the hub closes its
pipe too (sidecar/server/worker.py).
"""

from __future__ import annotations

import socket

from sidecar.engine.broker import Broker
from sidecar.engine.relay import Relay
from sidecar.observe.probe import RequestCounter
from sidecar.server.lifecycle import Deadline, Step, StopSequence, close_broker, drain_relay
from sidecar.server.prepare import Prepared
from sidecar.server.reloader import ApiApps, EdgeOrigins, RelayApps, Reloader
from sidecar.server.serving import Edge, Sites, locally_reported_kinds, serve_edge


class Node:
    """A relay on `broker`, its reloader, and its stop: the broker closes (what it accepted is
    delivered), then every client gets 4200 and until the deadline, less `keep`, to go."""

    def __init__(
        self,
        prepared: Prepared,
        broker: Broker,
        config_path: str | None = None,
        config_text: str | None = None,
        *,
        quiet: bool = False,  # a worker: its supervisor logs the reload at info
        keep: float = 0.0,  # seconds of the deadline kept back for what comes after
    ) -> None:
        self.prepared = prepared
        self.broker = broker
        self.relay = Relay(
            prepared.apps,
            prepared.config.limits,
            broker,
            report_events=locally_reported_kinds(prepared.apps),
        )
        self.sites = Sites()
        self.reloader = Reloader(
            prepared.config,
            prepared.apps,
            config_path,
            config_text,
            quiet=quiet,
            parts=[RelayApps(self.relay)],
        )
        self.stop_sequence = StopSequence()
        self.stop_sequence.at(Step.HAND_OVER, lambda deadline: close_broker(broker, deadline))
        self.stop_sequence.at(
            Step.LET_GO, lambda deadline: drain_relay(self.relay, deadline, keep=keep)
        )

    async def start(self) -> None:
        """The relay, then the broker with the relay's callbacks: from here on, what the
        broker carries reaches the relay (what was waiting in a pipe too). The listeners
        served from now on are let go of at the end."""
        self.relay.start()
        await self.broker.start(self.relay.deliver, self.relay.on_changes, self.relay.notify)
        self.stop_sequence.on_release(self.sites.cleanup)

    async def serve_edge(
        self,
        sock: socket.socket,
        broker: Broker | None = None,
        requests: RequestCounter | None = None,
    ) -> Edge:
        """The TLS port on `sock`; its signed API publishes on `broker` (the node's own, or
        one that counts for the observer)."""
        edge = await serve_edge(
            self.sites, self.prepared, self.relay, broker or self.broker, sock, requests
        )
        self.serving(edge)
        return edge

    def serving(self, edge: Edge) -> None:
        """The TLS port serves: reloads reach its API, Origin list and certificates; a stop
        shuts it."""
        if edge.certificates is not None:
            self.stop_sequence.on_release(edge.certificates.stop)
        self.stop_sequence.at(Step.SHUT, lambda _: edge.stop_accepting(self.sites))
        self.reloader.register(ApiApps(edge.api))
        self.reloader.register(EdgeOrigins(edge.policy, edge.cors))
        self.reloader.register_certificates(edge.certificates)

    def deadline(self, margin: float = 0.0) -> Deadline:
        """From now, `shutdown.deadline` as the process runs with it, less `margin`."""
        return Deadline(self.reloader.config.shutdown.deadline - margin)

    async def stop(self, deadline: Deadline) -> None:
        """Every step of the stop, in order, within `deadline`."""
        await self.stop_sequence.run(deadline)

    async def release(self) -> None:
        """What the parts registered to let go of at the end, stopped or failed."""
        await self.stop_sequence.release()
