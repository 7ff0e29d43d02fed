"""WebSocket upgrades for the app (Rails' ActionCable at /cable, say): spliced, byte for byte.

EdgeProtocol hands over a WebSocket upgrade whose path is not the sidecar's (`/app/` is the
relay's, `/apps/` the signed API's) with the raw request head. Only a well-formed upgrade is
spliced (`splice_refusal`): GET over HTTP/1.1, `Upgrade: websocket`, `Connection: upgrade`, a
16-byte Sec-WebSocket-Key, version 13, one Host, no body, a path in origin form; anything else
is refused here with a JSON 4xx. The head goes to the app with its forwarding headers
rewritten (as for any proxied request: a client's own X-Forwarded-*, X-Real-IP and Forwarded
never reach the app), and from then on bytes flow both ways untouched: the app's 101 (or its
refusal), subprotocols, extensions and frames are the app's business, not parsed here.

Nothing the client sends after its upgrade request reaches the app before the app has
answered 101: bytes pipelined with the head are refused (400, as RFC 6455 4.1 has the client
wait for the answer), and the client's socket is not read until the 101. After a refusal it
is never read again: the app's answer is passed on and the connection closed, so no request
of the client's can reach the app on a connection the sidecar did not rewrite.

Each side's socket is paused while the other cannot take more, so a slow reader never makes
the sidecar buffer. An app that cannot be reached gets the client a 502 (refused) or 504 (no
connection or no answer in time) before any upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
from typing import cast
from urllib.parse import unquote

from sidecar.config.edge import UpstreamConfig
from sidecar.edge.proxy_headers import Hop, upgrade_request
from sidecar.observe.bad_input import bad_input
from sidecar.protocol.forwarded import TrustedProxies
from sidecar.protocol.http_head import HandshakeError, RequestHead, check_upgrade, http_response

log = logging.getLogger("sidecar.proxy")

# Paths the sidecar serves itself: the relay's WebSockets and the Pusher HTTP API.
SIDECAR_PATHS = ("app", "apps")
# The app's answer to an upgrade: its status line decides whether the client is read again.
SWITCHING = b"HTTP/1.1 101"
MAX_STATUS_LINE = 1024
# After the app refused an upgrade, the connection ends once the app is quiet this long (or
# closes first): its answer is usually one write, and the client's socket is never read again.
REFUSAL_LINGER = 1.0


def sidecar_path(path: str) -> bool:
    """Whether `path`, however spelt (%-encoded, dot segments, doubled slashes, capitals),
    is one of the sidecar's own."""
    normal = posixpath.normpath(unquote(path)).lstrip("/").lower()
    return any(normal == root or normal.startswith(root + "/") for root in SIDECAR_PATHS)


def splice_refusal(head: RequestHead, raw_head: bytes, rest: bytes) -> HandshakeError | None:
    """Why this upgrade request may not be spliced to the app, or None: a valid handshake."""
    if head.version != "HTTP/1.1":
        return HandshakeError(400, "a WebSocket upgrade needs HTTP/1.1")
    target = raw_head.split(b" ", 2)[1]
    if not target.startswith(b"/"):
        return HandshakeError(400, "a WebSocket upgrade's target must be a path")
    host = head.header("host")
    if not host or "," in host:
        return HandshakeError(400, "a WebSocket upgrade needs exactly one Host header")
    if head.has_body:
        return HandshakeError(400, "a WebSocket upgrade has no body")
    try:
        check_upgrade(head)
    except HandshakeError as exc:
        return exc
    if rest:
        return HandshakeError(
            400, "nothing may follow a WebSocket upgrade request before its answer"
        )
    return None


class Splice(asyncio.Protocol):
    """One side of a spliced connection: what it reads is written to its peer's transport."""

    __slots__ = ("answer_timer", "closed", "held", "peer", "pending", "transport")

    def __init__(self, transport: asyncio.Transport | None = None) -> None:
        self.transport = transport
        self.peer: Splice | None = None
        self.closed = False
        self.held = False  # not to be read (the client's side, until the app's 101)
        self.answer_timer: asyncio.TimerHandle | None = None
        self.pending = b""  # read before the peer was there (reading is paused meanwhile)

    @staticmethod
    def join(a: Splice, b: Splice) -> None:
        a.peer, b.peer = b, a
        for side in (a, b):
            if side.pending and side.peer is not None and side.peer.transport is not None:
                side.peer.transport.write(side.pending)
            side.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._answered()
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending += data

    def eof_received(self) -> bool:
        # TLS cannot half-close: the whole connection ends, once what is buffered is written.
        self._close_peer()
        return False

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.held:
            with contextlib.suppress(RuntimeError):  # the connection may have gone meanwhile
                self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._answered()
        self._close_peer()
        self.peer = None  # the two sides no longer hold each other: freed without a collection

    def _close_peer(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def _answered(self) -> None:
        if self.answer_timer is not None:
            self.answer_timer.cancel()
            self.answer_timer = None


class AppSide(Splice):
    """The app's side: its status line decides whether the client's side is read again."""

    __slots__ = ("linger", "status")

    def __init__(self, transport: asyncio.Transport | None = None) -> None:
        super().__init__(transport)
        self.status: bytes | None = b""  # the answer until its status line is whole; then None
        self.linger: asyncio.TimerHandle | None = None  # after a refusal: the end of the answer

    def data_received(self, data: bytes) -> None:
        if self.status is not None:
            self.status += data
            if b"\r\n" not in self.status and len(self.status) < MAX_STATUS_LINE:
                return
            data, self.status = self.status, None
            self._decide(data.startswith(SWITCHING + b" "))
        elif self.linger is not None:
            self._linger()
        super().data_received(data)

    def _decide(self, switching: bool) -> None:
        client = self.peer
        if client is None:
            return
        if switching:
            client.held = False
            client.resume_reading()
            return
        # Refused: the client's bytes stay unread for good (they are not the app's to see as
        # a request), and the app is told no more is coming.
        client.held = True
        if self.transport is not None and self.transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                self.transport.write_eof()
        self._linger()

    def _linger(self) -> None:
        if self.linger is not None:
            self.linger.cancel()
        self.linger = asyncio.get_running_loop().call_later(REFUSAL_LINGER, self._end)

    def _end(self) -> None:
        self.linger = None
        for side in (self, self.peer):
            if side is not None and side.transport is not None:
                side.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None
        super().connection_lost(exc)


class UpgradePassthrough:
    """The app's WebSocket upgrades: every path but the relay's, when `upstream` is set."""

    def __init__(self, upstream: UpstreamConfig, trusted: TrustedProxies) -> None:
        self.upstream = upstream
        self.trusted = trusted
        self._connecting: set[asyncio.Task[None]] = set()

    def wants(self, head: RequestHead) -> bool:
        """Upgrades anywhere but the sidecar's own paths (those the relay refuses itself)."""
        return not sidecar_path(head.path)

    def upgrade(
        self, transport: asyncio.Transport, head: RequestHead, raw_head: bytes, rest: bytes
    ) -> None:
        """Take the client's connection over; `raw_head` ends before its blank line."""
        refusal = splice_refusal(head, raw_head, rest)
        if refusal is not None:
            bad_input("upgrade", transport, refusal.message)
            transport.write(refusal.response())
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        secure = transport.get_extra_info("sslcontext") is not None
        hop = Hop(peer[0] if isinstance(peer, tuple) else None, "https" if secure else "http")
        first = upgrade_request(raw_head, hop, self.trusted)
        client = Splice(transport)
        client.held = True  # not read until the app has answered 101
        transport.set_protocol(client)
        transport.pause_reading()
        task = asyncio.ensure_future(self._connect(client, first))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, client: Splice, first: bytes) -> None:
        loop = asyncio.get_running_loop()
        upstream = self.upstream
        try:
            async with asyncio.timeout(upstream.connect_timeout):
                if upstream.socket is not None:
                    _, app = await loop.create_unix_connection(AppSide, upstream.socket)
                else:
                    assert upstream.host is not None and upstream.port is not None  # parsed so
                    _, app = await loop.create_connection(AppSide, upstream.host, upstream.port)
        except TimeoutError:
            self._refuse(client, 504, "the app did not accept the connection in time")
            return
        except OSError as exc:
            self._refuse(client, 502, f"the app is not reachable: {exc.strerror or exc}")
            return
        if client.closed or client.transport is None or app.transport is None:
            if app.transport is not None:
                app.transport.close()
            return
        app.transport.write(first)
        Splice.join(client, app)
        # The app answers the upgrade (101 or a refusal) within `timeout`, or the client is told.
        app.answer_timer = loop.call_later(upstream.timeout, self._no_answer, client, app)

    def _no_answer(self, client: Splice, app: Splice) -> None:
        app.answer_timer = None
        app.peer = client.peer = None
        if app.transport is not None:
            app.transport.abort()
        self._refuse(client, 504, "the app did not answer in time")

    def _refuse(self, client: Splice, status: int, reason: str) -> None:
        log.warning("upstream failed", extra={"upstream": self.upstream.url, "reason": reason})
        transport = client.transport
        if transport is not None and not transport.is_closing():
            transport.write(http_response(status, {"error": reason}))
            transport.close()
