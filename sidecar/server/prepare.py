"""Wiring: what is prepared before any event loop, and the aiohttp applications built on it.

`prepare()` does everything that can fail with a plain message and must happen once: apps and
certificates made, the publish socket claimed, the TCP ports bound (so a taken port is reported
before anything starts, and worker processes inherit listening sockets). sidecar/server/serving.py
serves them; sidecar/server/single.py runs it all in one process, sidecar/server/supervisor.py and
sidecar/server/worker.py split it between a supervisor and workers.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from sidecar.admin.endpoints import admin_app
from sidecar.api.handlers import PublishApi
from sidecar.api.unix import claim_socket_path
from sidecar.config.apps import AppRegistry, ensure_development_app
from sidecar.config.model import CertFiles, Config
from sidecar.config.origins import OriginPolicy
from sidecar.edge.cors import PolicyOrigins, allow_cross_origin
from sidecar.edge.hsts import hsts_middleware
from sidecar.edge.passthrough import UpgradePassthrough
from sidecar.edge.proxy import ReverseProxy
from sidecar.edge.redirect import UNKNOWN_HOST, RedirectNames
from sidecar.engine.broker import Broker
from sidecar.engine.presence import PresenceStore
from sidecar.engine.relay import Relay
from sidecar.http_glue import LISTENER, json_error, json_errors
from sidecar.observe.bad_input import BAD_INPUT
from sidecar.observe.observer import Observer
from sidecar.observe.probe import PublishCounter, RelayProbe, RequestCounter
from sidecar.protocol.forwarded import TrustedProxies, forwarded_middleware
from sidecar.server.startup import (
    blame,
    claim_port,
    make_publish_directory,
    port_claim,
    port_taken,
    usable_publish_directory,
)
from sidecar.tls.acme import AcmeFiles, answer_challenges
from sidecar.tls.acme_client import ChallengeStore
from sidecar.tls.certificates import check_certificates
from sidecar.tls.certinfo import CertificateError, certificate_info
from sidecar.tls.contexts import ensure_self_signed

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


def bind_tcp(host: str, port: int, key: str, *, reuse_port: bool = False) -> socket.socket:
    """A listening socket, or StartError naming `key` (listen.port, http.port, admin.port)."""
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
        raise port_taken(key, host, port, exc) from None
    sock.set_inheritable(True)
    return sock


def bind_edge(host: str, port: int, workers: int) -> list[socket.socket]:
    """The TLS port: one socket, or one per worker sharing it (SO_REUSEPORT) so that the
    kernel spreads connections across them. Only this process's workers may share it: the
    port is claimed first without SO_REUSEPORT (sidecar/server/startup.py: claim_port), and the
    workers inherit their sockets from here rather than binding their own."""
    if workers == 1:
        return [bind_tcp(host, port, "listen.port")]
    with port_claim(port, "listen.port"):
        claim_port(host, port, "listen.port")
        return [bind_tcp(host, port, "listen.port", reuse_port=True) for _ in range(workers)]


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
    """Raise SocketInUse or StartError (one line naming the key and the path) when blocked."""
    raise_open_file_limit()  # inherited by the workers
    # What another process may hold comes first: a start refused leaves nothing made behind.
    usable_publish_directory(config.publish.socket)
    claim_socket_path(config.publish.socket)
    edge = bind_edge(config.listen.host, config.listen.port, workers)
    redirect = None
    if config.http.port is not None and config.tls.mode != "off":
        redirect = bind_tcp(config.listen.host, config.http.port, "http.port")
    admin = None
    if config.admin.port is not None:
        admin = bind_tcp(config.admin.host, config.admin.port, "admin.port")
    with blame("tls.dir"):  # the development app and certificate are made there
        apps, created = resolve_apps(config)
        cert, key = certificate_files(config)
    if cert is not None and config.tls.mode != "acme":
        # Fail here, plainly, on an unusable certificate. ACME's is checked, and ordered if
        # need be, once the plain-HTTP port can answer the CA.
        for name, pair in certificate_keys(config):
            with blame(name):
                check_certificates([pair])
    made = make_publish_directory(config.publish.socket)
    if made is not None:
        log.info("publish socket directory made", extra={"path": str(made), "mode": "0750"})
    return Prepared(config, apps, created, cert, key, edge, redirect, admin)


def certificate_keys(config: Config) -> list[tuple[str, CertFiles]]:
    """Every served certificate with the key that names it, for a refusal to point at."""
    tls = config.tls
    if tls.mode != "files":
        return [("tls.dir", pair) for pair in served_certificates(config)]
    named = [("tls.cert", CertFiles(tls.cert, tls.key))] if tls.cert and tls.key else []
    return named + [(f"tls.certificates[{i}]", pair) for i, pair in enumerate(tls.certificates)]


# The applications ---------------------------------------------------------------------------


# What edge_application made, for a reload to reach: the signed API and its CORS answers.
EDGE_API = web.AppKey("edge_api", PublishApi)
EDGE_CORS = web.AppKey("edge_cors", PolicyOrigins)


def edge_application(
    config: Config,
    apps: AppRegistry,
    broker: Broker,
    state: PresenceStore,
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


def edge_middlewares(config: Config) -> list[Middleware]:
    """Trusted X-Forwarded-* first (they decide whether the request is HTTPS), then HSTS."""
    middlewares: list[Middleware] = []
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
    https_port: int, challenges: ChallengeStore | None = None, names: Iterable[str] = ()
) -> web.Application:
    """The plain-HTTP port: ACME's HTTP-01 challenges answered, everything else to https, for
    the sidecar's own names only (sidecar/edge/redirect.py)."""
    target = RedirectNames(names, https_port)

    async def redirect(request: web.Request) -> web.StreamResponse:
        location = target.location(request.headers.get("Host"), request.path_qs)
        if location is None:
            return json_error(421, UNKNOWN_HOST)
        raise web.HTTPPermanentRedirect(location)

    app = web.Application(middlewares=[json_errors])
    app[LISTENER] = "http"
    if challenges is not None:
        answer_challenges(app, challenges)
    app.router.add_route("*", "/{tail:.*}", redirect)
    return app


def redirect_names(config: Config) -> tuple[str, ...]:
    """Where the plain-HTTP port may redirect: the ACME domains, or the names of the served
    certificates as they are at start (a certificate reloaded with new names needs a restart
    for these)."""
    tls = config.tls
    if tls.mode == "acme" and tls.acme is not None:
        return tls.acme.domains
    names: list[str] = []
    for files in served_certificates(config):
        with contextlib.suppress(OSError, CertificateError):
            names += certificate_info(Path(files.cert).read_bytes(), files.cert).names
    return tuple(names)


def admin_application(observer: Observer, token: str | None, host: str) -> web.Application:
    """/healthz, /readyz, /metrics, /status and /dashboard (sidecar/admin/endpoints.py)."""
    return admin_app(observer, token, host)


def make_observer(
    prepared: Prepared,
    workers: int,
    *,
    workers_alive: Callable[[], int] | None = None,
    broker_ok: Callable[[], bool] | None = None,
) -> Observer | None:
    """What the admin listener reports from; None when there is none (`admin: null`): then
    nothing is counted beyond the relay's own plain counters. With workers, the supervisor
    says how many are alive and whether the broker's pipes are all attached."""
    if prepared.admin_socket is None:
        return None
    broker = "memory" if workers == 1 else "pipe"
    if prepared.config.broker.kind == "redis":
        broker = "redis"
    return Observer(
        prepared.cert,
        workers=workers,
        broker=broker,
        workers_alive=workers_alive,
        broker_ok=broker_ok,
    )


def observe_single(observer: Observer, relay: Relay, broker: Broker) -> Broker:
    """One process: the observer reads the relay directly and counts both publish APIs; the
    broker returned is the one for the TLS port's API."""
    probe = RelayProbe(relay)
    probe.start()
    observer.add_local(probe)
    feed = observer.console

    def console_taps(on: bool) -> None:
        relay.tap = feed.items if on else None
        relay.state.on_transitions = feed.transitions if on else None

    feed.switches.append(console_taps)
    return observer.count_publishes(broker, source="api")


def observe_relay(
    relay: Relay, broker: Broker
) -> tuple[RelayProbe, PublishCounter, RequestCounter]:
    """A relay process's probe, and the broker and request counter for its own publish API
    (the signed API on the TLS port) that the probe reports from."""
    publishes = PublishCounter(broker, source="api")
    requests = RequestCounter()
    probe = RelayProbe(
        relay, publishers=[publishes], requests=requests, share_names=True, bad_input=BAD_INPUT
    )
    probe.start()
    return probe, publishes, requests
