"""Wiring: what is prepared before any event loop, and the aiohttp applications built on it.

`prepare()` does everything that can fail with a plain message and must happen once: apps and
certificates made, the publish socket claimed, the TCP ports bound (so a taken port is reported
before anything starts, and worker processes inherit listening sockets). `run_single()` serves
it all from one process; sidecar/cluster.py splits it between a supervisor and workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from sidecar.apps import AppRegistry, ensure_development_app
from sidecar.broker import Broker, MemoryBroker
from sidecar.config import Config
from sidecar.edge.listener import EdgeSite
from sidecar.edge.origin import OriginPolicy
from sidecar.edge.tls import ensure_self_signed, server_context
from sidecar.observe.admin import admin_app
from sidecar.observe.observer import Observer
from sidecar.observe.probe import PublishCounter, RelayProbe, RequestCounter
from sidecar.publish.api import PublishApi, json_error, json_errors
from sidecar.publish.fastpath import FastPublishSite
from sidecar.publish.unix import claim_socket_path
from sidecar.relay.protocol import CloseCode
from sidecar.relay.relay import Relay
from sidecar.relay.websocket import WebSocketEndpoint

log = logging.getLogger("sidecar")

# On SIGTERM clients get 4200 (reconnect at once) and this long to go before the process exits.
SHUTDOWN_DEADLINE = 10.0
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
    if config.tls.mode == "off":
        return None, None
    if config.tls.mode == "files":
        assert config.tls.cert and config.tls.key
        return Path(config.tls.cert), Path(config.tls.key)
    pair = ensure_self_signed(config.tls.dir)
    if pair.created:
        log.info("self-signed certificate created", extra={"cert": str(pair.cert)})
    return pair.cert, pair.key


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
    if cert is not None and key is not None:
        server_context(cert, key)  # fail here, plainly, on an unusable certificate
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


def edge_application(apps: AppRegistry, broker: Broker) -> web.Application:
    """The browser-facing port's HTTP side: the signed HTTP API (WebSockets never get here)."""
    api = PublishApi(apps, broker, signed=True)
    app = web.Application(middlewares=[json_errors], client_max_size=api.max_body)
    api.add_routes(app)

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return json_error(400, "open each WebSocket on a new connection, not after a request")
        return json_error(404, f"nothing at {request.path[:100]}")

    app.router.add_route("*", "/{tail:.*}", elsewhere)
    return app


def publish_application(api: PublishApi) -> web.Application:
    """The Unix socket: the same API, trusted by file permissions, no signature."""
    app = web.Application(middlewares=[json_errors], client_max_size=api.max_body)
    api.add_routes(app)
    return app


def redirect_application(https_port: int) -> web.Application:
    async def redirect(request: web.Request) -> web.StreamResponse:
        host = request.url.host or "localhost"
        if ":" in host:
            host = f"[{host}]"
        port = "" if https_port == 443 else f":{https_port}"
        raise web.HTTPPermanentRedirect(f"https://{host}{port}{request.path_qs}")

    app = web.Application()
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

    async def cleanup(self) -> None:
        for runner in reversed(self.runners):
            await runner.cleanup()
        self.runners.clear()


def start_relay(prepared: Prepared) -> Relay:
    relay = Relay(prepared.apps, prepared.config.limits)
    relay.start()
    return relay


async def serve_edge(
    sites: Sites,
    prepared: Prepared,
    relay: Relay,
    broker: Broker,
    sock: socket.socket,
    requests: RequestCounter | None = None,
) -> None:
    ssl_context = None
    if prepared.cert is not None and prepared.key is not None:
        ssl_context = server_context(prepared.cert, prepared.key)
    app = edge_application(prepared.apps, broker)
    if requests is not None:
        app.middlewares.insert(0, requests.middleware("tls"))
    websockets = WebSocketEndpoint(relay, OriginPolicy(prepared.config.allowed_origins))
    await sites.serve(
        app,
        lambda r: EdgeSite(r, sock, websockets, ssl_context=ssl_context, backlog=LISTEN_BACKLOG),
    )


async def serve_publish_side(
    sites: Sites, prepared: Prepared, broker: Broker, observer: Observer | None
) -> None:
    """The Unix socket, the plain-HTTP redirect and the admin listener."""
    config = prepared.config
    requests = None
    if observer is not None:
        broker, requests = observer.count_publishes(broker), observer.requests
    api = PublishApi(prepared.apps, broker, signed=False)
    app = publish_application(api)
    if requests is not None:
        app.middlewares.insert(0, requests.middleware("unix"))
    await sites.serve(
        app,
        lambda r: FastPublishSite(r, config.publish.socket, api, backlog=1024, requests=requests),
    )
    os.chmod(config.publish.socket, config.publish.socket_mode)
    redirect, admin = prepared.redirect_socket, prepared.admin_socket
    if redirect is not None:
        await sites.serve(
            redirect_application(config.listen.port), lambda r: web.SockSite(r, redirect)
        )
    if admin is not None and observer is not None:
        observer.start()
        await sites.serve(
            admin_application(observer, config.admin.token), lambda r: web.SockSite(r, admin)
        )


async def drain_relay(relay: Relay, broker: Broker, deadline: float) -> None:
    """Accepted publications are delivered, then every client gets 4200 and time to go."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(broker.close(), timeout=max(deadline, 0.1))
    relay.close_all(CloseCode.RECONNECT)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(relay.wait_until_empty(), timeout=deadline)
    relay.stop()


def remove_socket_file(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def wait_for_stop_signal() -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()


async def run_single(prepared: Prepared, banner: Callable[[Prepared], None]) -> None:
    """Everything in one process, with the in-memory broker."""
    tune_garbage_collector()
    broker = MemoryBroker()
    relay = start_relay(prepared)
    await broker.start(relay.deliver)
    sites = Sites()
    observer = make_observer(prepared, 1)
    try:
        if observer is None:
            await serve_edge(sites, prepared, relay, broker, prepared.edge_sockets[0])
        else:
            edge_broker = observe_single(observer, relay, broker)
            await serve_edge(
                sites, prepared, relay, edge_broker, prepared.edge_sockets[0], observer.requests
            )
        await serve_publish_side(sites, prepared, broker, observer)
        banner(prepared)
        log.info("ready", extra={"socket": prepared.config.publish.socket, "workers": 1})
        await wait_for_stop_signal()
        log.info("stopping", extra={"connections": len(relay.connections)})
        await drain_relay(relay, broker, SHUTDOWN_DEADLINE)
    finally:
        if observer is not None:
            await observer.stop()
        await sites.cleanup()
        remove_socket_file(prepared.config.publish.socket)
    log.info("stopped")
