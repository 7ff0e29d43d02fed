"""Accepting connections ourselves: a cap per address, and no silent file-descriptor shortage.

uvloop's servers (libuv's) meet EMFILE/ENFILE by accepting every waiting connection and closing
it unanswered, saying nothing (libuv's "EMFILE trick"), and when even that fails, by closing the
listening socket for good, saying nothing either. So the sidecar's listeners accept here: a
shortage is logged (once per interval, with how often it happened) and counted, accepting
pauses a moment, and the clients wait in the backlog until a descriptor is free.

Accepting here also lets the browser port count connections per address from accept to close
(`limits.max_connections_per_ip`, every kind of connection: WebSocket, HTTP, kept alive or
not) and refuse one over the cap before a byte is read or a TLS handshake made: it costs the
accept and nothing more. A peer in `listen.trusted_proxies` is not the client: its connections
are counted once their request head names the client (X-Forwarded-For), by EdgeProtocol.

Per node: with workers, each listens on its own SO_REUSEPORT socket and the kernel spreads an
address's connections over them by hash (ports included), so each worker allows its share,
the limit divided by the number of workers, rounded up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import math
import resource
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any

from aiohttp import web

from sidecar.batched_tls import serve_tls
from sidecar.protocol.forwarded import TrustedProxies, parse_address
from sidecar.protocol.http_head import http_response

log = logging.getLogger("sidecar.accept")

# Connections accepted per wake-up of the listening socket before the loop serves others (a
# reconnect storm of thousands is taken in slices, not in one long turn).
ACCEPT_BATCH = 128
# TLS handshakes in progress at once per listener; connections accepted past it wait, in order,
# for a slot. A client's connect completes in the kernel before its ClientHello is sent: in a
# storm the loop held thousands of accepted connections whose ClientHellos then arrived together,
# and it ran every one (~0.4 ms of key exchange and signature each) in one turn: 0.5-1.5 s
# during which no one else was served (bench/reconnect_storm.py, 5,000 clients).
MAX_HANDSHAKES = 64
# A handshake gives its slot up after this long even if unfinished: a client that is slow or says
# nothing (a slow-loris) holds a slot this long at most, so handshakes still start at 1,280 a
# second or more per process whatever the clients do.
HANDSHAKE_SLOT = 0.05
# Accepting pauses this long when no descriptor is left: a retry costs one failed system call,
# and a descriptor freed meanwhile is used soon.
OUT_OF_FILES_PAUSE = 0.25
# A condition that may recur thousands of times a second is logged at most once this often,
# with how many times it happened since.
LOG_INTERVAL = 10.0
OUT_OF_FILES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# IPv6 addresses are counted by their /64: one host is given a whole /64 to pick from.
IPV6_PREFIX = 64
OVER_CAP = "too many connections from this address"
REFUSED_PLAIN = http_response(429, {"error": OVER_CAP})


def client_key(address: str) -> str:
    """What the per-address count is kept under: the address, an IPv6 one by its /64 (an
    IPv4-mapped IPv6 address as the IPv4 address it is)."""
    if ":" not in address:
        return address
    parsed = parse_address(address)
    if parsed is None:
        return address
    if isinstance(parsed, ipaddress.IPv4Address):
        return str(parsed)
    return str(ipaddress.IPv6Network((parsed, IPV6_PREFIX), strict=False))


class AddressCounts:
    """Open connections per client address, against a limit given at each admission. No I/O."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def admit(self, key: str, limit: int) -> Lease | None:
        """A lease on one more connection for `key`; None when it holds `limit` (0: none)."""
        held = self._counts.get(key, 0)
        if limit and held >= limit:
            return None
        self._counts[key] = held + 1
        return Lease(self, key)

    def release(self, key: str) -> None:
        held = self._counts.get(key, 0)
        if held <= 1:
            self._counts.pop(key, None)
        else:
            self._counts[key] = held - 1

    def held(self, key: str) -> int:
        return self._counts.get(key, 0)

    def __len__(self) -> int:
        return len(self._counts)


class Lease:
    """One connection counted against its address until `release()` (once; more is nothing)."""

    __slots__ = ("_counts", "key")

    def __init__(self, counts: AddressCounts, key: str) -> None:
        self._counts: AddressCounts | None = counts
        self.key = key

    def release(self) -> None:
        counts, self._counts = self._counts, None
        if counts is not None:
            counts.release(self.key)


class AddressCap:
    """limits.max_connections_per_ip as one process applies it: its share of the node's."""

    def __init__(
        self, limit: Callable[[], int], trusted: TrustedProxies, processes: int = 1
    ) -> None:
        self._limit = limit  # read at each admission: a reload applies to the next accept
        self.trusted = trusted
        self.processes = max(1, processes)
        self.counts = AddressCounts()
        self.stats = stats_of("tls")
        self._refusals = Throttle(LOG_INTERVAL)

    def share(self) -> int:
        limit = self._limit()
        return math.ceil(limit / self.processes) if limit else 0

    def admit(self, address: str) -> Lease | None:
        """A lease for a client at `address`; None (counted, logged now and then): over."""
        key = client_key(address)
        lease = self.counts.admit(key, self.share())
        if lease is None:
            self.stats.over_address_cap += 1
            said = self._refusals.due(time.monotonic())
            if said is not None:
                log.warning(
                    "connections refused: over limits.max_connections_per_ip",
                    extra={"address": key, "per_process": self.share(), "refused": said},
                )
        return lease

    def defers(self, peer: str) -> bool:
        """A trusted proxy: its connections are counted at their head, as the client's."""
        return bool(self.trusted.networks) and self.trusted.trusts(peer)


class Throttle:
    """Say something at most once per `interval`: how many times it happened since. No I/O."""

    __slots__ = ("_interval", "_next", "_since")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = float("-inf")
        self._since = 0

    def due(self, now: float) -> int | None:
        """Count one occurrence; the count to report when a line is due, else None."""
        self._since += 1
        if now < self._next:
            return None
        self._next = now + self._interval
        since, self._since = self._since, 0
        return since


@dataclass(slots=True)
class AcceptStats:
    out_of_files: int = 0  # times accepting paused: EMFILE/ENFILE (or no buffers)
    over_address_cap: int = 0  # connections refused: limits.max_connections_per_ip


# This process's listeners by name ("tls", "unix", "http", "admin"): a relay process reports
# "tls", the process holding the others reports those (sidecar/observe/).
STATS: dict[str, AcceptStats] = {}


def stats_of(listener: str) -> AcceptStats:
    stats = STATS.get(listener)
    if stats is None:
        stats = STATS[listener] = AcceptStats()
    return stats


# What makes a connection's protocol: given its lease (None: not counted, or counted at its
# head) and, for a trusted proxy's, the cap to count the client against once its head is read.
ProtocolFactory = Callable[[Lease | None, AddressCap | None], asyncio.Protocol]


class Acceptor(asyncio.AbstractServer):
    """Accepts on a listening socket and hands each connection to the loop as `factory` makes
    it (TLS when `ssl`); stands where aiohttp's sites keep the loop's server (close())."""

    def __init__(
        self,
        sock: socket.socket,
        factory: ProtocolFactory,
        listener: str,  # for logs and metrics: "tls", "unix", "http", "admin"
        *,
        ssl: SSLContext | None = None,
        handshake_timeout: float | None = None,
        cap: AddressCap | None = None,
    ) -> None:
        self.sock = sock
        self.factory = factory
        self.listener = listener
        self.ssl = ssl
        self.handshake_timeout = handshake_timeout if ssl is not None else None
        self.cap = cap
        self.stats = stats_of(listener)
        self._loop = asyncio.get_running_loop()
        self._tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        self._tasks: set[asyncio.Task[None]] = set()  # connections in their TLS handshake
        # TLS handshakes holding a slot (MAX_HANDSHAKES), each with the timer that frees it.
        self._slots: dict[asyncio.Task[None], asyncio.TimerHandle] = {}
        # Accepted, waiting for a slot.
        self._waiting: deque[tuple[socket.socket, asyncio.Protocol, Lease | None]] = deque()
        self._paused: asyncio.TimerHandle | None = None
        self._serving = False
        self._shortage = Throttle(LOG_INTERVAL)
        sock.setblocking(False)
        self._resume()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self.sock,) if self._serving else ()

    def _resume(self) -> None:
        self._paused = None
        self._serving = True
        self._loop.add_reader(self.sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # gone before it was accepted
            except OSError as exc:
                self._accept_failed(exc)
                return
            self._accepted(conn, address)

    def _accept_failed(self, exc: OSError) -> None:
        """Out of descriptors (or kernel memory): said, counted, and accepting pauses."""
        if exc.errno in OUT_OF_FILES:
            self.stats.out_of_files += 1
            level, message = logging.ERROR, "out of file descriptors: new connections wait"
        else:
            level, message = logging.WARNING, "accept failed"
        said = self._shortage.due(time.monotonic())
        if said is not None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            log.log(
                level,
                message,
                extra={
                    "listener": self.listener,
                    "error": errno.errorcode.get(exc.errno or 0, str(exc)),
                    "open_files_limit": soft,
                    "times": said,
                },
            )
        self._loop.remove_reader(self.sock.fileno())
        self._paused = self._loop.call_later(OUT_OF_FILES_PAUSE, self._resume)

    def _accepted(self, conn: socket.socket, address: Any) -> None:
        """`address` as socket.accept gives it (typed Any there): (host, port, ...) over TCP."""
        # Non-blocking for the loop; TCP_NODELAY is the loop's transports' own doing.
        conn.setblocking(False)
        cap = self.cap
        if not self._tcp or cap is None:
            self._serve(conn, self.factory(None, None), None)
            return
        peer = address[0]
        lease: Lease | None = None
        cap_at_head: AddressCap | None = None
        if cap.defers(peer):
            cap_at_head = cap
        else:
            lease = cap.admit(peer)
            if lease is None:
                self._refuse(conn)
                return
        self._serve(conn, self.factory(lease, cap_at_head), lease)

    def _refuse(self, conn: socket.socket) -> None:
        """Over the cap: closed at once. Plain HTTP is told why, if the socket takes it now;
        TLS would take a handshake to say anything."""
        if self.ssl is None:
            with contextlib.suppress(OSError):
                conn.send(REFUSED_PLAIN)
        conn.close()

    def _serve(self, conn: socket.socket, protocol: asyncio.Protocol, lease: Lease | None) -> None:
        if self.ssl is not None and len(self._slots) >= MAX_HANDSHAKES:
            self._waiting.append((conn, protocol, lease))
            return
        task = self._loop.create_task(self._connect(conn, protocol, lease))
        self._tasks.add(task)
        task.add_done_callback(self._connected)
        if self.ssl is not None:
            self._slots[task] = self._loop.call_later(HANDSHAKE_SLOT, self._free_slot, task)

    def _connected(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        timer = self._slots.get(task)
        if timer is not None:
            timer.cancel()
            self._free_slot(task)

    def _free_slot(self, task: asyncio.Task[None]) -> None:
        del self._slots[task]
        if self._waiting:
            self._serve(*self._waiting.popleft())

    async def _connect(
        self, conn: socket.socket, protocol: asyncio.Protocol, lease: Lease | None
    ) -> None:
        try:
            if self.ssl is not None:
                await serve_tls(self._loop, conn, protocol, self.ssl, self.handshake_timeout)
            else:
                await self._loop.connect_accepted_socket(lambda: protocol, conn)
        except Exception:
            # The TLS handshake failed or timed out, or the peer went first: the protocol was
            # never told of the connection, so it never will be of its end.
            if lease is not None:
                lease.release()
            conn.close()

    # asyncio.AbstractServer ----------------------------------------------------------------

    def close(self) -> None:
        """No more accepts; the listening socket is closed. Connections carry on."""
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    async def wait_closed(self) -> None:
        return None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        raise NotImplementedError("served from the loop: nothing to wait on")


class AcceptingSite(web.SockSite):
    """aiohttp's socket site, accepting through an `Acceptor` (the plain-HTTP port, the admin
    listener)."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, listener: str) -> None:
        super().__init__(runner, sock)
        self._listener = listener

    async def start(self) -> None:
        await web.BaseSite.start(self)
        http = self._runner.server
        assert http is not None
        self._server = Acceptor(self._sock, lambda lease, cap: http(), self._listener)
