"""Wiring: what is prepared before any event loop, and the aiohttp applications built on it.

`prepare()` does everything that can fail with a plain message and must happen once: apps and
certificates made, the publish socket claimed, the TCP ports bound (so a taken port is reported
before anything starts, and worker processes inherit listening sockets). The serve_* functions
return handles (`Edge`, `PublishSide`, `PlainHttp`) through which a stop shuts each door and
a reload reaches what it may change. sidecar/single.py serves it all from one process;
sidecar/cluster.py splits it between a supervisor and workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from sidecar.apps import AppRegistry, ensure_development_app
from sidecar.broker import Broker
from sidecar.config import CertFiles, Config
from sidecar.edge.acme import AcmeFiles, AcmeService, answer_challenges, start_acme
from sidecar.edge.acme_client import ChallengeStore
from sidecar.edge.certificates import CertificateManager, check_certificates
from sidecar.edge.cors import PolicyOrigins, allow_cross_origin
from sidecar.edge.forwarded import TrustedProxies, forwarded_middleware
from sidecar.edge.hsts import hsts_middleware
from sidecar.edge.listener import EdgeSite
from sidecar.edge.origin import OriginPolicy
from sidecar.edge.passthrough import UpgradePassthrough
from sidecar.edge.proxy import ReverseProxy
from sidecar.edge.tls import ensure_self_signed
from sidecar.observe.admin import admin_app
from sidecar.observe.observer import Observer
from sidecar.observe.probe import PublishCounter, RelayProbe, RequestCounter
from sidecar.publish.api import LISTENER, PublishApi, json_error, json_errors
from sidecar.publish.fastpath import FastPublishSite
from sidecar.publish.gate import PublishGate
from sidecar.publish.unix import claim_socket_path
from sidecar.relay.channel_state import ChannelState
from sidecar.relay.relay import Relay
from sidecar.relay.websocket import WebSocketEndpoint

log = logging.getLogger("sidecar")

LISTEN_BACKLOG = 4096


@dataclass
class Prepared:
    """Made once, before any loop: shared by the single process or by all workers."""

    config: Config
    apps: AppRegistry
    app_created: bool
    cert: Path | None  # None: plaintext (tls.mode off)
    key: Path | None
    edge_sockets: list[socket.socket]  # one per worker (SO_REUSEPORT), or one
    redirect_socket: socket.socket | None
    admin_socket: socket.socket | None


def resolve_apps(config: Config) -> tuple[AppRegistry, bool]:
    if config.apps is not None:
        return AppRegistry(config.apps), False
    app, created = ensure_development_app(config.tls.dir)
    return AppRegistry((app,)), created


def certificate_files(config: Config) -> tuple[Path | None, Path | None]:
    """The default certificate's files (None with tls off); made first when self-signed."""
    files = served_certificates(config)
    if not files:
        return None, None
    return Path(files[0].cert), Path(files[0].key)


def served_certificates(config: Config) -> tuple[CertFiles, ...]:
    """Every certificate the TLS port serves, the default first (none with tls off)."""
    tls = config.tls
    if tls.mode == "off":
        return ()
    if tls.mode == "files":
        return tls.files()
    if tls.mode == "acme":
        return (AcmeFiles.for_config(tls).cert_files(),)
    pair = ensure_self_signed(tls.dir)
    if pair.created:
        log.info("self-signed certificate created", extra={"cert": str(pair.cert)})
    return (CertFiles(str(pair.cert), str(pair.key)),)


def bind_tcp(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


# Full (generation 2) collections walk every live object: with 10,000 connections, 300-400 ms
# with the loop stopped. Python's default runs one each time the long-lived objects grow by a
# quarter, so a reconnect storm of 10,000 clients paid 8 of them (12 ms growing to 400 ms) and
# connected in 4.4 s; with generation 2 ten times rarer, one (337 ms) and 2.7 s. The young
# generations, where short-lived cycles die, keep their defaults.
GC_THRESHOLDS = (700, 10, 100)


def tune_garbage_collector() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


def raise_open_file_limit() -> int:
    """Every connection is a file descriptor: take the hard limit the system allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def prepare(config: Config, workers: int) -> Prepared:
    """Raise SocketInUse or OSError (with a message naming the address) when blocked."""
    raise_open_file_limit()  # inherited by the workers
    apps, created = resolve_apps(config)
    cert, key = certificate_files(config)
    if cert is not None and config.tls.mode != "acme":
        # Fail here, plainly (CertificateError), on an unusable certificate. ACME's is checked,
        # and ordered if need be, once the plain-HTTP port can answer the CA.
        check_certificates(served_certificates(config))
    claim_socket_path(config.publish.socket)
    reuse = workers > 1
    edge = [bind_tcp(config.listen.host, config.listen.port, reuse_port=reuse)]
    edge += [
        bind_tcp(config.listen.host, config.listen.port, reuse_port=True)
        for _ in range(workers - 1)
    ]
    redirect = None
    if config.http.port is not None and cert is not None:
        redirect = bind_tcp(config.listen.host, config.http.port)
    admin = None
    if config.admin.port is not None:
        admin = bind_tcp(config.admin.host, config.admin.port)
    return Prepared(config, apps, created, cert, key, edge, redirect, admin)


# The applications ---------------------------------------------------------------------------


# What edge_application made, for a reload to reach: the signed API and its CORS answers.
EDGE_API = web.AppKey("edge_api", PublishApi)
EDGE_CORS = web.AppKey("edge_cors", PolicyOrigins)


def edge_application(
    config: Config,
    apps: AppRegistry,
    broker: Broker,
    state: ChannelState,
    policy: OriginPolicy | None = None,
) -> web.Application:
    """The browser-facing port's HTTP side: the signed HTTP API (WebSockets never get here).

    `policy` is the Origin allow-list the WebSocket upgrades are checked against too.
    """
    api = PublishApi(apps, broker, signed=True, state=state)
    app = web.Application(
        middlewares=[*edge_middlewares(config), json_errors], client_max_size=api.max_body
    )
    app[LISTENER] = "tls"
    app[EDGE_API] = api
    api.add_routes(app)
    if policy is None:
        policy = OriginPolicy(config.allowed_origins)
    app[EDGE_CORS] = allow_cross_origin(
        app, policy, allow_credentials=config.cors_allow_credentials
    )
    add_fallback_routes(app, config)
    return app


async def elsewhere(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return json_error(400, "open each WebSocket on a new connection, not after a request")
    return json_error(404, f"nothing at {request.path[:100]}")


def add_fallback_routes(app: web.Application, config: Config) -> None:
    """What the API does not route: 404, or with an upstream the app's (all but /apps/...)."""
    if config.upstream is None:
        app.router.add_route("*", "/{tail:.*}", elsewhere)
        return
    app.router.add_route("*", "/apps/{tail:.*}", elsewhere)
    hsts = config.tls.hsts.header() if config.tls.hsts is not None else None
    ReverseProxy(config.upstream, TrustedProxies(config.listen.trusted_proxies), hsts).install(app)


def upgrade_passthrough(config: Config) -> UpgradePassthrough | None:
    """With an upstream, WebSocket upgrades off the relay's /app/ path are the app's."""
    if config.upstream is None:
        return None
    return UpgradePassthrough(config.upstream, TrustedProxies(config.listen.trusted_proxies))


def edge_middlewares(config: Config) -> list[Callable[..., object]]:
    """Trusted X-Forwarded-* first (they decide whether the request is HTTPS), then HSTS."""
    middlewares: list[Callable[..., object]] = []
    if config.listen.trusted_proxies:
        middlewares.append(forwarded_middleware(TrustedProxies(config.listen.trusted_proxies)))
    if config.tls.hsts is not None:
        middlewares.append(hsts_middleware(config.tls.hsts))
    return middlewares


def publish_application(api: PublishApi) -> web.Application:
    """The Unix socket: the same API, trusted by file permissions, no signature."""
    app = web.Application(middlewares=[json_errors], client_max_size=api.max_body)
    app[LISTENER] = "unix"
    api.add_routes(app)
    return app


def redirect_application(
    https_port: int, challenges: ChallengeStore | None = None
) -> web.Application:
    """The plain-HTTP port: ACME's HTTP-01 challenges answered, everything else to https."""

    async def redirect(request: web.Request) -> web.StreamResponse:
        host = request.url.host or "localhost"
        if ":" in host:
            host = f"[{host}]"
        port = "" if https_port == 443 else f":{https_port}"
        raise web.HTTPPermanentRedirect(f"https://{host}{port}{request.path_qs}")

    app = web.Application()
    if challenges is not None:
        answer_challenges(app, challenges)
    app.router.add_route("*", "/{tail:.*}", redirect)
    return app


def admin_application(observer: Observer, token: str | None) -> web.Application:
    """/healthz, /readyz, /metrics, /status and /dashboard (sidecar/observe/admin.py)."""
    return admin_app(observer, token)


def make_observer(prepared: Prepared, workers: int) -> Observer | None:
    """What the admin listener reports from; None when there is none (`admin: null`): then
    nothing is counted beyond the relay's own plain counters."""
    if prepared.admin_socket is None:
        return None
    broker = "memory" if workers == 1 else "pipe"
    return Observer(prepared.cert, workers=workers, broker=broker)


def observe_single(observer: Observer, relay: Relay, broker: Broker) -> Broker:
    """One process: the observer reads the relay directly and counts both publish APIs; the
    broker returned is the one for the TLS port's API."""
    probe = RelayProbe(relay)
    probe.start()
    observer.add_local(probe)
    return observer.count_publishes(broker)  # type: ignore[return-value]


def observe_relay(relay: Relay, broker: Broker) -> tuple[RelayProbe, Broker, RequestCounter]:
    """A relay process's probe, and the broker and request counter for its own publish API
    (the signed API on the TLS port) that the probe reports from."""
    publishes = PublishCounter(broker)
    requests = RequestCounter()
    probe = RelayProbe(relay, publishers=[publishes], requests=requests, share_names=True)
    probe.start()
    return probe, publishes, requests  # type: ignore[return-value]


# Serving ------------------------------------------------------------------------------------


@dataclass
class Sites:
    """The aiohttp runners of one process, cleaned up in reverse order."""

    runners: list[web.AppRunner] = field(default_factory=list)

    async def serve(
        self, app: web.Application, make_site: Callable[[web.AppRunner], web.BaseSite]
    ) -> web.AppRunner:
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
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


def start_relay(prepared: Prepared, broker: Broker) -> Relay:
    """A started relay; the caller starts `broker` with relay.deliver and relay.on_changes."""
    relay = Relay(prepared.apps, prepared.config.limits, broker)
    relay.report_events = locally_reported_kinds(prepared.apps)
    relay.start()
    return relay


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
    manager.start(signals=False)  # SIGHUP is the process's: config and certificates both
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
    app = edge_application(config, prepared.apps, gate, relay.state, policy)  # type: ignore[arg-type]
    if requests is not None:
        app.middlewares.insert(0, requests.middleware("tls"))
    websockets = WebSocketEndpoint(relay, policy)
    passthrough = upgrade_passthrough(config)
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
        ),
    )
    return Edge(runner, websockets, app[EDGE_API], gate, policy, app[EDGE_CORS], certificates)


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
    state: ChannelState,
    observer: Observer | None,
) -> PublishSide:
    """The Unix socket."""
    config = prepared.config
    requests = None
    if observer is not None:
        broker, requests = observer.count_publishes(broker), observer.requests
    gate = PublishGate(broker)
    api = PublishApi(prepared.apps, gate, signed=False, state=state)  # type: ignore[arg-type]
    app = publish_application(api)
    if requests is not None:
        app.middlewares.insert(0, requests.middleware("unix"))
    runner = await sites.serve(
        app,
        lambda r: FastPublishSite(r, config.publish.socket, api, backlog=1024, requests=requests),
    )
    os.chmod(config.publish.socket, config.publish.socket_mode)
    return PublishSide(runner, api, gate)


async def serve_admin(sites: Sites, prepared: Prepared, observer: Observer | None) -> None:
    """The admin listener, when there is one: served until the process ends."""
    admin = prepared.admin_socket
    if admin is not None and observer is not None:
        observer.start()
        await sites.serve(
            admin_application(observer, prepared.config.admin.token),
            lambda r: web.SockSite(r, admin),
        )


async def serve_plain_http(
    sites: Sites, prepared: Prepared
) -> tuple[web.AppRunner | None, ChallengeStore | None]:
    """The redirect to https, with ACME's challenges answered when tls.mode is acme."""
    sock = prepared.redirect_socket
    challenges = ChallengeStore() if prepared.config.tls.mode == "acme" else None
    runner = None
    if sock is not None:
        app = redirect_application(prepared.config.listen.port, challenges)
        runner = await sites.serve(app, lambda r: web.SockSite(r, sock))
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
