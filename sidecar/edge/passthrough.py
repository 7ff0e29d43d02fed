"""WebSocket upgrades for the app (Rails' ActionCable at /cable, say): spliced, byte for byte.

EdgeProtocol hands over an upgrade whose path is not the relay's (`/app/{key}`) with the raw
request head. The head goes to the app with its forwarding headers rewritten (as for any
proxied request), and from then on bytes flow both ways untouched: the app's 101 (or its
refusal), subprotocols, extensions and frames are the app's business, not parsed here. Each
side's socket is paused while the other cannot take more, so a slow reader never makes the
sidecar buffer. An app that cannot be reached gets the client a 502 (refused) or 504 (no
connection or no answer in time) before any upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import cast

from sidecar.config_edge import UpstreamConfig
from sidecar.edge.forwarded import TrustedProxies
from sidecar.edge.proxy_headers import Hop, upgrade_request
from sidecar.relay.handshake import RequestHead, http_response
from sidecar.relay.websocket import APP_PATH

log = logging.getLogger("sidecar.proxy")


class Splice(asyncio.Protocol):
    """One side of a spliced connection: what it reads is written to its peer's transport."""

    __slots__ = ("answer_timer", "closed", "peer", "pending", "transport")

    def __init__(self, transport: asyncio.Transport | None = None) -> None:
        self.transport = transport
        self.peer: Splice | None = None
        self.closed = False
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
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._answered()
        self._close_peer()

    def _close_peer(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def _answered(self) -> None:
        if self.answer_timer is not None:
            self.answer_timer.cancel()
            self.answer_timer = None


class UpgradePassthrough:
    """The app's WebSocket upgrades: every path but the relay's, when `upstream` is set."""

    def __init__(self, upstream: UpstreamConfig, trusted: TrustedProxies) -> None:
        self.upstream = upstream
        self.trusted = trusted
        self._connecting: set[asyncio.Task[None]] = set()

    def wants(self, head: RequestHead) -> bool:
        return not head.path.startswith(APP_PATH)

    def upgrade(self, transport: asyncio.Transport, raw_head: bytes, rest: bytes) -> None:
        """Take the client's connection over; `raw_head` ends before its blank line."""
        peer = transport.get_extra_info("peername")
        secure = transport.get_extra_info("sslcontext") is not None
        hop = Hop(peer[0] if isinstance(peer, tuple) else None, "https" if secure else "http")
        first = upgrade_request(raw_head, hop, self.trusted) + rest
        client = Splice(transport)
        transport.set_protocol(client)
        transport.pause_reading()  # until the app's side is there to take it
        task = asyncio.ensure_future(self._connect(client, first))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, client: Splice, first: bytes) -> None:
        loop = asyncio.get_running_loop()
        upstream = self.upstream
        try:
            async with asyncio.timeout(upstream.connect_timeout):
                if upstream.socket is not None:
                    _, app = await loop.create_unix_connection(Splice, upstream.socket)
                else:
                    _, app = await loop.create_connection(Splice, upstream.host, upstream.port)
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
        with contextlib.suppress(RuntimeError):  # the client may have gone meanwhile
            client.transport.resume_reading()

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
