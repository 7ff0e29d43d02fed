"""The reverse proxy: paths the sidecar does not own go to the app (`upstream`), streamed.

Bodies are never held whole: the request body is read from the client as the app reads it,
and the response is written to the client as it arrives, both with the flow control of the
sockets on each side (aiohttp's StreamReader pauses a socket that gets ahead). An app that does
not answer gets a short 502 (refused, gone) or 504 (silent for `upstream.timeout`) page, never
a hang. WebSocket upgrades do not come here: sidecar/edge/passthrough.py splices them.
"""

from __future__ import annotations

import html
import logging

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from sidecar.config.edge import UpstreamConfig
from sidecar.edge.hsts import HEADER as HSTS
from sidecar.edge.proxy_headers import Hop, connection_tokens, end_to_end, upstream_request_headers
from sidecar.http_glue import json_error
from sidecar.protocol.forwarded import TrustedProxies

log = logging.getLogger("sidecar.proxy")

# A request without a body may be sent again when a kept-alive connection turns out to have
# been closed by the app as it was reused (the app's keep-alive timeout ran out first).
REPLAYABLE = frozenset({"GET", "HEAD", "OPTIONS"})
# Idle connections to the app are closed after this long: sooner than any app server closes them
# (gunicorn after 2 s, uvicorn 5 s, Puma 20 s), so that a request with a body, which cannot be
# sent twice, is rarely written to a connection the app is closing at that moment.
IDLE_KEEPALIVE = 1.0
# aiohttp's client adds these when they are missing; a proxy passes on what the client sent.
NOT_ADDED = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{status} {title}</title></head>
<body><h1>{status} {title}</h1><p>{message}</p></body></html>
"""


class UpstreamFailed(Exception):
    """The app gave no response: the status to answer with (502 or 504) and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ReverseProxy:
    """An aiohttp handler sending requests on to `upstream`; one client session per process."""

    def __init__(
        self, upstream: UpstreamConfig, trusted: TrustedProxies, hsts: str | None = None
    ) -> None:
        self.upstream = upstream
        self.trusted = trusted
        self.hsts = hsts  # Strict-Transport-Security for HTTPS responses (tls.hsts)
        self.session: aiohttp.ClientSession | None = None
        self.down = False  # the last attempt failed: log the next failure at debug only

    def install(self, app: web.Application, path: str = "/{tail:.*}") -> None:
        app.router.add_route("*", path, self.handle)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)

    async def _open(self, app: web.Application) -> None:
        upstream = self.upstream
        connector: aiohttp.BaseConnector
        if upstream.socket is not None:
            connector = aiohttp.UnixConnector(
                path=upstream.socket, limit=0, keepalive_timeout=IDLE_KEEPALIVE
            )
        else:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=IDLE_KEEPALIVE)
        self.session = aiohttp.ClientSession(
            connector=connector,
            # Connecting has its own limit; after that the app may take `timeout` to start its
            # answer and as long between two reads. An upload or a long download is no timeout.
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=upstream.connect_timeout, sock_read=upstream.timeout
            ),
            # One jar for every browser would hand one user's cookies to the next.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=NOT_ADDED,
        )

    async def _close(self, app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            # WebSockets are spliced on a connection of their own (see EdgeProtocol).
            return json_error(400, "open each WebSocket on a new connection, not after a request")
        try:
            upstream = await self._send(request)
        except UpstreamFailed as exc:
            if request.transport is None or request.transport.is_closing():
                # The client left mid-upload: not the app's failure, and no one to tell.
                return web.Response(status=exc.status)
            self._failed(request, exc.reason)
            return last_on_connection(request, failure_page(request, exc.status, exc.reason))
        if self.down:
            self.down = False
            log.info("upstream answering again", extra={"upstream": self.upstream.url})
        try:
            return await self._relay(request, upstream)
        finally:
            # Back to the pool when read to the end; closed when not (the client left).
            upstream.release()

    async def _send(self, request: web.Request) -> aiohttp.ClientResponse:
        assert self.session is not None, "the proxy's application is not started"
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        secure = transport is not None and transport.get_extra_info("sslcontext") is not None
        hop = Hop(peer[0] if isinstance(peer, tuple) else None, "https" if secure else "http")
        headers = CIMultiDict(upstream_request_headers(request.headers.items(), hop, self.trusted))
        body = request.content if request.body_exists else None
        url = URL(self.upstream.origin + target(request), encoded=True)
        attempts = 2 if body is None and request.method in REPLAYABLE else 1
        for attempt in range(attempts):
            try:
                return await self.session.request(
                    request.method, url, headers=headers, data=body, allow_redirects=False
                )
            except aiohttp.ServerDisconnectedError as exc:
                if attempt + 1 < attempts:
                    continue
                raise UpstreamFailed(502, "the app closed the connection unanswered") from exc
            except TimeoutError as exc:  # aiohttp's connect and read timeouts included
                raise UpstreamFailed(504, "the app did not answer in time") from exc
            except (aiohttp.ClientConnectorError, ConnectionRefusedError) as exc:
                raise UpstreamFailed(502, f"the app is not reachable: {describe(exc)}") from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise UpstreamFailed(502, f"the app's answer broke off: {describe(exc)}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in end_to_end(upstream.headers.items()):
            response.headers.add(name, value)
        last_on_connection(request, response)
        if self.hsts is not None and request.secure:
            # The HSTS middleware cannot add it to a response that is already on its way.
            response.headers.setdefault(HSTS, self.hsts)
        try:
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except ConnectionError:
            return response  # the client left: the app's connection is dropped on release
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Too late for an error page: cut the connection so the client sees a short body
            # rather than a complete-looking one.
            self._failed(request, f"the app's response broke off: {describe(exc)}")
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    def _failed(self, request: web.Request, reason: str) -> None:
        level = logging.DEBUG if self.down else logging.WARNING
        self.down = True
        log.log(
            level,
            "upstream failed",
            extra={"upstream": self.upstream.url, "path": request.path[:200], "reason": reason},
        )


def last_on_connection(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """`response` with Connection: close when the request asked to switch protocols (h2c,
    say): aiohttp's parser reads nothing after such a request, so a client that sent another
    on the same connection would wait for its answer until the connection timed out."""
    if request.headers.get("Upgrade") and "upgrade" in connection_tokens(request.headers.items()):
        response.force_close()
    return response


def target(request: web.Request) -> str:
    """The path and query as the client wrote them (not decoded and encoded again)."""
    raw = request.raw_path
    return raw if raw.startswith("/") else request.rel_url.raw_path_qs


def describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.strerror or type(exc.os_error).__name__
    return str(exc) or type(exc).__name__


def failure_page(request: web.Request, status: int, message: str) -> web.Response:
    """A short page for a browser (it asked for HTML), JSON for anything else."""
    if "text/html" not in request.headers.get("Accept", ""):
        return json_error(status, message)
    title = "Bad Gateway" if status == 502 else "Gateway Timeout"
    page = PAGE.format(status=status, title=title, message=html.escape(message))
    return web.Response(status=status, text=page, content_type="text/html")
