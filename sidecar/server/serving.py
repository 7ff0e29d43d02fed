"""Serving what sidecar/server/prepare.py prepared: the listeners of a process, as handles.

The serve_* functions return handles (`Edge`, `PublishSide`, `PlainHttp`) through which a stop
shuts each door (sidecar/server/lifecycle.py) and a reload reaches what it may change
(sidecar/server/reloader.py). sidecar/server/single.py serves everything from one process;
sidecar/server/supervisor.py and sidecar/server/worker.py split it between a supervisor and workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sidecar.accept import AcceptingSite, AddressCap
from sidecar.api.fastpath import FastPublishSite
from sidecar.api.gate import PublishGate
from sidecar.api.handlers import PublishApi
from sidecar.config.apps import AppRegistry
from sidecar.config.model import Config
from sidecar.config.origins import OriginPolicy
from sidecar.edge.cors import PolicyOrigins
from sidecar.edge.http_errors import QuietAppRunner
from sidecar.edge.listener import EdgeSite
from sidecar.edge.websocket import WebSocketEndpoint
from sidecar.engine.broker import Broker
from sidecar.engine.presence import PresenceStore
from sidecar.engine.relay import Relay
from sidecar.observe.observer import Observer
from sidecar.observe.probe import RequestCounter
from sidecar.protocol.forwarded import TrustedProxies
from sidecar.server.prepare import (
    EDGE_API,
    EDGE_CORS,
    LISTEN_BACKLOG,
    Prepared,
    admin_application,
    edge_application,
    publish_application,
    redirect_application,
    redirect_names,
    served_certificates,
    upgrade_passthrough,
)
from sidecar.tls.acme import AcmeService, start_acme
from sidecar.tls.acme_client import ChallengeStore
from sidecar.tls.certificates import CertificateManager


@dataclass
class Sites:
    """The aiohttp runners of one process, cleaned up in reverse order."""

    runners: list[web.AppRunner] = field(default_factory=list)

    async def serve(
        self,
        app: web.Application,
        make_site: Callable[[web.AppRunner], web.BaseSite],
        keepalive_timeout: float | None = None,
    ) -> web.AppRunner:
        """`keepalive_timeout`: seconds an idle keep-alive connection is kept (None: aiohttp's
        default, an hour: for the admin listener only, which is not the public's)."""
        # aiohttp's own keyword arguments for its RequestHandler (typed Any there).
        extra: dict[str, Any] = {}
        if keepalive_timeout is not None:
            extra["keepalive_timeout"] = keepalive_timeout
        # aiohttp's own refusals (a request its parser cannot read) in JSON, without a traceback.
        runner = QuietAppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=1.0, **extra
        )
        await runner.setup()
        self.runners.append(runner)
        await make_site(runner).start()
        return runner

    async def close(self, runner: web.AppRunner | None) -> None:
        """Stop one listener now: no new connections, requests in flight given a second."""
        if runner is not None and runner in self.runners:
            self.runners.remove(runner)
            await runner.cleanup()

    async def cleanup(self) -> None:
        for runner in reversed(self.runners):
            await runner.cleanup()
        self.runners.clear()


# What a worker sees first-hand and reports for webhooks; the rest (occupied, vacated, members)
# comes from the cluster-wide channel state, in the one process that sends webhooks.
LOCAL_WEBHOOK_KINDS = frozenset({"client_event", "cache_miss"})


def locally_reported_kinds(apps: AppRegistry) -> dict[str, frozenset[str]]:
    kinds = {
        app.id: frozenset(kind for hook in app.webhooks for kind in hook.events)
        & LOCAL_WEBHOOK_KINDS
        for app in apps
    }
    return {app_id: wanted for app_id, wanted in kinds.items() if wanted}


def start_certificates(config: Config) -> CertificateManager | None:
    """The TLS port's certificates, loaded and watched (files, SIGHUP); None with tls off."""
    files = served_certificates(config)
    if not files:
        return None
    manager = CertificateManager(files, reload_interval=config.tls.reload_interval)
    manager.load()
    manager.start()  # SIGHUP is the process's: config and certificates both
    return manager


@dataclass
class Edge:
    """A relay process's TLS port, as shutdown and reload need to reach it."""

    runner: web.AppRunner
    websockets: WebSocketEndpoint
    api: PublishApi
    gate: PublishGate
    policy: OriginPolicy
    cors: PolicyOrigins
    certificates: CertificateManager | None

    async def stop_accepting(self, sites: Sites) -> None:
        """No new connections nor publishes; upgrades already under way are told 4200."""
        self.gate.shut()
        self.websockets.closing = True
        await sites.close(self.runner)


async def serve_edge(
    sites: Sites,
    prepared: Prepared,
    relay: Relay,
    broker: Broker,
    sock: socket.socket,
    requests: RequestCounter | None = None,
) -> Edge:
    config = prepared.config
    certificates = start_certificates(config)
    ssl_context = certificates.context if certificates is not None else None
    gate = PublishGate(broker)
    policy = OriginPolicy(config.allowed_origins)
    app = edge_application(config, prepared.apps, gate, relay.state, policy)
    if requests is not None:
        app.middlewares.insert(0, requests.middleware("tls"))
    websockets = WebSocketEndpoint(relay, policy)
    passthrough = upgrade_passthrough(config)
    cap = AddressCap(
        lambda: relay.limits.max_connections_per_ip,
        TrustedProxies(config.listen.trusted_proxies),
        processes=relay_processes(config),
    )
    runner = await sites.serve(
        app,
        lambda r: EdgeSite(
            r,
            sock,
            websockets,
            ssl_context=ssl_context,
            handshake_timeout=config.tls.handshake_timeout,
            backlog=LISTEN_BACKLOG,
            passthrough=passthrough,
            cap=cap,
        ),
        keepalive_timeout=config.limits.keepalive_timeout,
    )
    return Edge(runner, websockets, app[EDGE_API], gate, policy, app[EDGE_CORS], certificates)


def relay_processes(config: Config) -> int:
    """How many processes share the browser port: each allows its share of a per-node limit."""
    from sidecar.server.supervisor import worker_count  # cluster serves through this module

    return worker_count(config)


@dataclass
class PublishSide:
    """The Unix socket's API, as shutdown and reload need to reach it."""

    runner: web.AppRunner
    api: PublishApi
    gate: PublishGate

    async def stop_accepting(self, sites: Sites) -> None:
        self.gate.shut()  # a publisher still connected gets 503 from now on
        await sites.close(self.runner)


async def serve_publish_side(
    sites: Sites,
    prepared: Prepared,
    broker: Broker,
    state: PresenceStore,
    observer: Observer | None,
) -> PublishSide:
    """The Unix socket."""
    config = prepared.config
    requests = None
    if observer is not None:
        broker, requests = observer.count_publishes(broker), observer.requests
    gate = PublishGate(broker)
    api = PublishApi(prepared.apps, gate, signed=False, state=state)
    if observer is not None:
        observer.bind_publish_api(api)
    app = publish_application(api)
    if requests is not None:
        app.middlewares.insert(0, requests.middleware("unix"))
    # Redis answers each publish: aiohttp's handlers await it (the fast path answers in the
    # same call, which only a broker that takes everything at once allows).
    awaited = getattr(broker, "confirms_publications", False)

    def site(runner: web.AppRunner) -> web.BaseSite:
        if awaited:
            return web.UnixSite(runner, config.publish.socket, backlog=1024)
        return FastPublishSite(
            runner,
            config.publish.socket,
            api,
            backlog=1024,
            requests=requests,
            request_timeout=config.limits.publish_request_timeout,
        )

    runner = await sites.serve(app, site, keepalive_timeout=config.limits.keepalive_timeout)
    os.chmod(config.publish.socket, config.publish.socket_mode)
    return PublishSide(runner, api, gate)


async def serve_admin(sites: Sites, prepared: Prepared, observer: Observer | None) -> None:
    """The admin listener, when there is one: served until the process ends."""
    admin = prepared.admin_socket
    if admin is not None and observer is not None:
        observer.start()
        await sites.serve(
            admin_application(observer, prepared.config.admin.token, prepared.config.admin.host),
            lambda r: AcceptingSite(r, admin, "admin"),
        )


async def serve_plain_http(
    sites: Sites, prepared: Prepared
) -> tuple[web.AppRunner | None, ChallengeStore | None]:
    """The redirect to https, with ACME's challenges answered when tls.mode is acme."""
    sock = prepared.redirect_socket
    challenges = ChallengeStore() if prepared.config.tls.mode == "acme" else None
    runner = None
    if sock is not None:
        config = prepared.config
        app = redirect_application(config.listen.port, challenges, redirect_names(config))
        runner = await sites.serve(
            app,
            lambda r: AcceptingSite(r, sock, "http"),
            keepalive_timeout=config.limits.keepalive_timeout,
        )
    return runner, challenges


@dataclass
class PlainHttp:
    """The plain-HTTP port and, with tls.mode acme, the service that orders certificates."""

    runner: web.AppRunner | None
    acme: AcmeService | None
    ready: bool  # False: stopped before a certificate could be had

    async def stop(self, sites: Sites) -> None:
        """No new redirects nor challenges; an order or renewal under way is abandoned (the
        next start takes it up: the account and any certificate are on disk)."""
        if self.acme is not None:
            await self.acme.stop()
            self.acme = None
        await sites.close(self.runner)


async def obtain_certificate(
    sites: Sites, prepared: Prepared, stopping: asyncio.Event
) -> PlainHttp:
    """Serve the plain-HTTP port; with ACME, wait for a usable certificate (or a stop)."""
    runner, challenges = await serve_plain_http(sites, prepared)
    if challenges is None:
        return PlainHttp(runner, None, True)
    acme = await start_acme(prepared.config.tls, challenges, stopping)
    return PlainHttp(runner, acme, acme is not None)


def remove_socket_file(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
