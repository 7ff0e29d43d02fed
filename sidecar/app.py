"""Wiring: build the relay, broker and listeners from a Config, run them, stop them cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from sidecar.apps import AppRegistry, ensure_development_app
from sidecar.broker import MemoryBroker
from sidecar.config import Config
from sidecar.edge.origin import OriginPolicy
from sidecar.edge.tls import ensure_self_signed, server_context
from sidecar.publish.api import PublishApi, client_max_size, json_error, json_errors
from sidecar.publish.unix import claim_socket_path
from sidecar.relay.protocol import CloseCode
from sidecar.relay.relay import Relay
from sidecar.relay.websocket import WebSocketEndpoint

log = logging.getLogger("sidecar")

# On SIGTERM clients get 4200 (reconnect at once) and this long to go before the process exits.
SHUTDOWN_DEADLINE = 10.0


@dataclass
class Runtime:
    """What `start()` built; `stop()` takes it down again."""

    config: Config
    apps: AppRegistry
    relay: Relay
    broker: MemoryBroker
    cert_file: Path | None
    app_created: bool
    runners: list[web.AppRunner] = field(default_factory=list)


def resolve_apps(config: Config) -> tuple[AppRegistry, bool]:
    if config.apps is not None:
        return AppRegistry(config.apps), False
    app, created = ensure_development_app(config.tls.dir)
    return AppRegistry((app,)), created


def tls_setup(config: Config) -> tuple[ssl.SSLContext | None, Path | None]:
    if config.tls.mode == "off":
        return None, None
    if config.tls.mode == "files":
        assert config.tls.cert and config.tls.key
        return server_context(config.tls.cert, config.tls.key), Path(config.tls.cert)
    pair = ensure_self_signed(config.tls.dir)
    if pair.created:
        log.info("self-signed certificate created", extra={"cert": str(pair.cert)})
    return server_context(pair.cert, pair.key), pair.cert


def edge_application(runtime: Runtime) -> web.Application:
    """The browser-facing port: WebSockets at /app/{key} and the signed HTTP API."""
    app = web.Application(middlewares=[json_errors], client_max_size=client_max_size(runtime.apps))
    endpoint = WebSocketEndpoint(runtime.relay, OriginPolicy(runtime.config.allowed_origins))
    app.router.add_get("/app/{key}", endpoint.handle)
    PublishApi(runtime.apps, runtime.broker, signed=True).add_routes(app)

    async def elsewhere(request: web.Request) -> web.StreamResponse:
        # A WebSocket on a wrong path gets Pusher's 4005, so pusher-js says what is wrong.
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await endpoint.handle(request)
        return json_error(404, f"nothing at {request.path[:100]}")

    app.router.add_route("*", "/{tail:.*}", elsewhere)
    return app


def publish_application(runtime: Runtime) -> web.Application:
    """The Unix socket: the same API, trusted by file permissions, no signature."""
    app = web.Application(middlewares=[json_errors], client_max_size=client_max_size(runtime.apps))
    PublishApi(runtime.apps, runtime.broker, signed=False).add_routes(app)
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


def admin_application(runtime: Runtime) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "connections": len(runtime.relay.connections)})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    return app


async def _serve(runtime: Runtime, app: web.Application, site_factory) -> None:
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    runtime.runners.append(runner)
    await site_factory(runner).start()


async def start(config: Config) -> Runtime:
    """Bring every listener up; raise OSError or SocketInUse when one cannot be had."""
    apps, created = resolve_apps(config)
    ssl_context, cert_file = tls_setup(config)
    claim_socket_path(config.publish.socket)
    relay = Relay(apps, config.limits)
    broker = MemoryBroker()
    await broker.start(relay.deliver)
    relay.start()
    runtime = Runtime(config, apps, relay, broker, cert_file, created)
    try:
        await _serve(
            runtime,
            edge_application(runtime),
            lambda r: web.TCPSite(
                r, config.listen.host, config.listen.port, ssl_context=ssl_context, backlog=4096
            ),
        )
        await _serve(
            runtime,
            publish_application(runtime),
            lambda r: web.UnixSite(r, config.publish.socket, backlog=1024),
        )
        os.chmod(config.publish.socket, config.publish.socket_mode)
        if config.http.port is not None and ssl_context is not None:
            await _serve(
                runtime,
                redirect_application(config.listen.port),
                lambda r: web.TCPSite(r, config.listen.host, config.http.port),
            )
        if config.admin.port is not None:
            await _serve(
                runtime,
                admin_application(runtime),
                lambda r: web.TCPSite(r, config.admin.host, config.admin.port),
            )
    except BaseException:
        await stop(runtime, deadline=0)
        raise
    return runtime


async def stop(runtime: Runtime, deadline: float = SHUTDOWN_DEADLINE) -> None:
    """Drain: accepted publications are delivered, clients get 4200, then listeners close."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(runtime.broker.close(), timeout=max(deadline, 0.1))
    runtime.relay.close_all(CloseCode.RECONNECT)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(runtime.relay.wait_until_empty(), timeout=deadline)
    runtime.relay.stop()
    for runner in reversed(runtime.runners):
        await runner.cleanup()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(runtime.config.publish.socket)


async def run_until_signal(config: Config, banner) -> None:
    runtime = await start(config)
    banner(runtime)
    log.info(
        "ready",
        extra={
            "listen": f"{config.listen.host}:{config.listen.port}",
            "socket": config.publish.socket,
            "tls": config.tls.mode,
        },
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("stopping", extra={"connections": len(runtime.relay.connections)})
    await stop(runtime)
    log.info("stopped")
