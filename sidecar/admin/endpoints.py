"""The admin listener: /healthz, /readyz, /metrics, /status and the live /dashboard.

Health answers are open (a load balancer asks them), and so are the dashboard's script and
style; the rest needs `admin.token` when one is set, which the configuration demands whenever
the listener is not on a loopback address. The token comes as `Authorization: Bearer TOKEN` or
as `?token=TOKEN` (a browser's EventSource cannot send headers); it is compared in constant
time and never logged.

Without a token, only requests addressed to the listener's own names are answered (421
otherwise): a web page can point a name of its own at 127.0.0.1 (DNS rebinding) and read
whatever answers there, but its requests carry its own name in Host.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from sidecar.admin.console_endpoints import ConsoleEndpoints
from sidecar.http_glue import LISTENER, LOOPBACK_NAMES, host_name, json_errors, json_response
from sidecar.observe.metrics import CONTENT_TYPE, Exposition
from sidecar.observe.observer import Observer
from sidecar.observe.probe import KINDS
from sidecar.observe.snapshot import Snapshot

log = logging.getLogger("sidecar.admin")

STATIC = {
    "dashboard.js": "application/javascript",
    "dashboard.css": "text/css",
    "console.js": "application/javascript",
    "console.css": "text/css",
}
# Health, and the dashboard's script and style (no data in them; a page loads them without
# its token): everything else needs the token when one is set.
OPEN_PATHS = frozenset(("/healthz", "/readyz", *(f"/dashboard/{name}" for name in STATIC)))
# Seconds of history averaged for the rates `sidecar status` prints.
STATUS_RATE_WINDOW = 5

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
WRONG_HOST = "Host is not a name of the admin listener (localhost, 127.0.0.1, [::1] or admin.host)"


def admin_names(host: str) -> frozenset[str]:
    """The names a request to the admin listener on `host` may carry in Host."""
    configured = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return frozenset((*LOOPBACK_NAMES, configured.lower()))


def host_middleware(names: frozenset[str]) -> Any:
    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        # No Host at all is no browser's request (HTTP/1.0 tools): nothing to rebind.
        if host is not None and host_name(host) not in names:
            return json_response({"error": WRONG_HOST}, 421)
        return await handler(request)

    return check_host


def token_middleware(token: str | None) -> Any:
    expected = token.encode() if token else None

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is None or request.path in OPEN_PATHS:
            return await handler(request)
        given = request.query.get("token", "")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[7:].strip()
        if not hmac.compare_digest(given.encode(), expected):
            return json_response({"error": "admin token required (admin.token)"}, 401)
        return await handler(request)

    return check_token


def overview(snap: Snapshot, observer: Observer) -> dict[str, object]:
    """What the dashboard and `sidecar status` show, from one full collection."""
    cert = observer.certificate.current()
    latest = observer.history.latest()
    return {
        "connections": int(snap.gauge("connections")),
        "subscriptions": {k: int(snap.gauge("subscriptions", kind=k)) for k in KINDS},
        "channels": {k: int(snap.gauge("channels", kind=k)) for k in KINDS},
        "send_queue_bytes": int(snap.gauge("send_queue_bytes")),
        "totals": {
            "published": int(snap.counter("messages_published")),
            "delivered": int(snap.counter("messages_delivered")),
            "connections_opened": int(snap.counter("connections_opened")),
            "connections_closed": int(snap.total("connections_closed")),
            "slow_client_closes": int(snap.counter("slow_client_closes")),
        },
        "rates": observer.history.average(STATUS_RATE_WINDOW),
        "latency_ms": {
            "p50": latest.p50_ms if latest else None,
            "p90": latest.p90_ms if latest else None,
            "p99": latest.p99_ms if latest else None,
        },
        "busiest": [
            {"app": c.app_id, "channel": c.channel, "subscribers": c.subscribers}
            for c in snap.channels
        ],
        "recent": [
            {
                "time": e.time,
                "app": e.app_id,
                "channel": e.channel,
                "more": e.more,
                "name": e.name,
                "size": e.size,
            }
            for e in reversed(snap.events)
        ],
        "certificate": cert.as_dict() if cert is not None else None,
        "workers": {"alive": observer.workers_alive(), "configured": observer.workers_configured},
        "cluster": observer.cluster.as_status() if observer.cluster is not None else None,
    }


class AdminEndpoints:
    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self.exposition = Exposition()

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok", **self.observer.health()})

    async def readyz(self, request: web.Request) -> web.Response:
        ready, checks = await self.observer.readiness()
        return json_response({"ready": ready, "checks": checks}, 200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        snap = await self.observer.collect(full=True)
        body = self.exposition.render(snap)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def status(self, request: web.Request) -> web.Response:
        ready, checks = await self.observer.readiness()
        snap = await self.observer.collect(full=True)
        return json_response({"ready": ready, "checks": checks, **overview(snap, self.observer)})

    async def dashboard(self, request: web.Request) -> web.Response:
        return web.Response(body=static_file("dashboard.html"), content_type="text/html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            return json_response({"error": "not found"}, 404)
        return web.Response(body=static_file(name), content_type=STATIC[name])

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: a `hello` with the history so far, then a `tick` a second."""
        observer = self.observer
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        observer.watchers += 1
        try:
            snap = await observer.collect(full=True)
            history = [p.as_dict() for p in observer.history.points]
            await send_event(
                response, "hello", {"history": history, "state": overview(snap, observer)}
            )
            seen = observer.ticks
            while True:
                tick = await observer.next_tick(seen)
                if tick is None:
                    break  # shutting down
                seen = tick
                snap = observer.last_full or snap
                latest = observer.history.latest()
                await send_event(
                    response,
                    "tick",
                    {
                        "point": latest.as_dict() if latest else None,
                        "state": overview(snap, observer),
                    },
                )
        except ConnectionError:
            pass  # the page was closed
        finally:
            observer.watchers -= 1
        return response


async def send_event(response: web.StreamResponse, name: str, data: object) -> None:
    await response.write(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")


def static_file(name: str) -> bytes:
    return resources.files("sidecar.observe").joinpath("static", name).read_bytes()


def admin_app(observer: Observer, token: str | None, host: str = "127.0.0.1") -> web.Application:
    """`host`: the address the listener is on (`admin.host`), a name it answers to."""
    endpoints = AdminEndpoints(observer)
    # Refusals in JSON, aiohttp's own 404 and 405 included.
    middlewares = [json_errors, token_middleware(token)]
    if token is None:
        middlewares.insert(0, host_middleware(admin_names(host)))
    app = web.Application(middlewares=middlewares)
    app[LISTENER] = "admin"
    app.router.add_get("/healthz", endpoints.healthz)
    app.router.add_get("/readyz", endpoints.readyz)
    app.router.add_get("/metrics", endpoints.metrics)
    app.router.add_get("/status", endpoints.status)
    app.router.add_get("/dashboard", endpoints.dashboard)
    app.router.add_get("/dashboard/events", endpoints.events)
    ConsoleEndpoints(observer, token).add_routes(app)  # the debug console
    app.router.add_get("/dashboard/{name}", endpoints.static)
    return app
