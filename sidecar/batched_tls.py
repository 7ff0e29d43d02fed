"""TLS for the browser port, with every socket write of a loop turn made together.

A fan-out encrypts one record per subscriber. uvloop's TLS layer hands each record to its socket
at once, so the relay alternates encryption and a system call, and on the loopback interface
each of those calls wakes the reading client anew (bench/RESULTS.md, issue 14). Here a record
stays in its connection's outgoing memory BIO, and the connection goes into the loop's
`WriteBatch`, which writes what each BIO holds once the callback that made it is done: the
encryption of one slice of the fan-out runs in one go, then its system calls in one go. What a
read causes (a handshake's next flight, a pong) is written at the end of that read.

Built on asyncio's own `SSLProtocol` (the same state machine uvloop's is a port of), with:
- the app paused whenever a record could not go straight into the BIO and out at the next
  flush (socket full, a backlog, the session closing or lost), not only past the high-water
  mark: so, while it is not paused, its writes need no check of the TLS state of their own,
- `write_record()` (the relay's connections' write) encrypting into the batch without the
  backlog's steps, and `direct` (the fan-out's) the C encryption alone: the fan-out hands the
  connections it wrote to the batch in runs (`add_written`), no Python call a delivery,
- one read buffer for all connections (asyncio allocates 256 KiB for each).
Every record of a connection leaves through its BIO, which only the batch writes out, so each
connection's bytes stay in order.
"""

# mypy: disable-error-code="attr-defined,has-type"
# (asyncio's SSLProtocol keeps its state in private attributes that typeshed does not declare.)
from __future__ import annotations

import asyncio
import ssl
import weakref
from asyncio import sslproto
from collections.abc import Callable
from typing import Any

from sidecar.engine.fanout import DIRECT_FRAME_LIMIT

_WRAPPED = sslproto.SSLProtocolState.WRAPPED
_DO_HANDSHAKE = sslproto.SSLProtocolState.DO_HANDSHAKE
# What one socket read takes (as uvloop's): one buffer, shared by every connection, since a
# read is decrypted before the next one.
READ_BUFFER = 256 * 1024
# Plaintext asked of OpenSSL per call. A call returns at most one TLS record (16 KiB), and
# Python allocates the size asked for before it shrinks it: at asyncio's 256 KiB every read
# was a mapping made and unmapped (glibc's mmap threshold is 128 KiB, server/memory.py).
READ_CHUNK = 16 * 1024
# A write smaller than DIRECT_FRAME_LIMIT (4 KiB) cannot by itself fill the BIO to the app's
# high-water mark (the relay sets 64 KiB, sidecar/edge/websocket.py; a record adds a few dozen
# bytes to its data).


class WriteBatch:
    """Connections with records to write, written in order once the current callback ends.

    A record stays in its connection's outgoing memory BIO until then: each connection's bytes
    of a loop turn leave in one write, read once, in the order they were encrypted.
    """

    __slots__ = ("_loop", "protocols", "written")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weakly: _batches holds the loop weakly, as the key of this. (Not get_running_loop()
        # at each first add of a turn: on Python 3.11 it makes a getpid() system call.)
        self._loop = weakref.ref(loop)
        self.protocols: list[BatchedTLSProtocol] = []
        # Runs of connections the fan-out wrote to with their sink's `direct`: the protocol's
        # C write alone (BatchedTLSProtocol.direct), no Python call a delivery.
        self.written: list[list[Any]] = []

    def add(self, protocol: BatchedTLSProtocol) -> None:
        """Write what `protocol`'s BIO holds at the flush (once, however often it is added)."""
        if protocol._in_batch:
            return
        protocols = self.protocols
        if not protocols:
            self._schedule()
        protocol._in_batch = True
        protocols.append(protocol)

    def add_written(self, connections: list[Any]) -> None:
        """FanoutQueue.written: the records `connections` were given (those of them over TLS,
        `conn.batched`) leave at the flush."""
        if not self.written and not self.protocols:
            self._schedule()
        self.written.append(connections)

    def _schedule(self) -> None:
        loop = self._loop()
        assert loop is not None, "a batch outlived its loop"  # the loop is the key of it
        loop.call_soon(self.flush)

    def flush(self) -> None:
        if self.written:
            self._flush_written()
        protocols = self.protocols
        # A write may call back into a protocol (pause_writing, resume_writing) that writes
        # again: the list grows while it is walked, and the for loop takes what is added.
        for protocol in protocols:
            protocol._in_batch = False
            transport = protocol._transport
            # Lost meanwhile, or its socket is full: resume_writing adds it again.
            if transport is None or protocol._ssl_writing_paused:
                continue
            try:
                transport.write(protocol._outgoing.read())
            except (ConnectionError, RuntimeError):
                continue  # closed meanwhile; connection_lost tells its protocol
            if protocol._app_writing_paused and not protocol._ssl_writing_paused:
                protocol._control_app_writing()
        protocols.clear()

    def _flush_written(self) -> None:
        written = self.written
        for connections in written:
            for conn in connections:
                protocol: BatchedTLSProtocol | None = conn.batched
                # Not over TLS; or its app is paused, and with it the records' way out: a full
                # socket or a closing session sends them itself, a protocol paused at the mark
                # is in `protocols` (BatchedTLSProtocol._control_app_writing).
                if protocol is None or protocol._app_writing_paused:
                    continue
                records = protocol._outgoing.read()
                transport = protocol._transport  # (lost: the app was paused then)
                if records and transport is not None:
                    try:
                        transport.write(records)
                    except (ConnectionError, RuntimeError):
                        continue  # closed meanwhile; connection_lost tells its protocol
        written.clear()


# Weak: a loop that is closed and dropped (tests make many) takes its batch with it.
_batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, WriteBatch] = (
    weakref.WeakKeyDictionary()
)


def batch_of(loop: asyncio.AbstractEventLoop) -> WriteBatch:
    batch = _batches.get(loop)
    if batch is None:
        batch = _batches[loop] = WriteBatch(loop)
    return batch


_shared_buffer = memoryview(bytearray(READ_BUFFER))


class _BatchedTransport(sslproto._SSLProtocolTransport):
    @property
    def tls_protocol(self) -> BatchedTLSProtocol:
        """What a WebSocket connection writes with (sidecar/edge/websocket.py)."""
        return self._ssl_protocol  # type: ignore[return-value]

    def write(self, data: Any) -> None:
        protocol: BatchedTLSProtocol = self._ssl_protocol  # type: ignore[assignment]
        if data and not protocol._app_writing_paused:
            protocol.write_record(data)
        else:
            super().write(data)  # asyncio's: it queues, drops or pauses


class BatchedTLSProtocol(sslproto.SSLProtocol):
    max_size = 0  # asyncio allocates a read buffer this big per connection: none here

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        app_protocol: asyncio.BaseProtocol,
        context: ssl.SSLContext,
        waiter: asyncio.Future[None],
        handshake_timeout: float | None,
    ) -> None:
        super().__init__(
            loop,
            app_protocol,
            context,
            waiter,
            server_side=True,
            ssl_handshake_timeout=handshake_timeout,  # type: ignore[arg-type]  # a float works
        )
        self.max_size = READ_CHUNK  # type: ignore[misc]
        self.batch = batch_of(loop)  # FanoutQueue.written is its add_written
        self._in_batch = False  # in batch.protocols: its outgoing BIO is read at the flush
        self._ssl_buffer_view = _shared_buffer  # what asyncio's buffer_updated reads from
        # ssl.SSLObject.write is a Python method around this C one: one frame less per write.
        self._encrypt = self._sslobj._sslobj.write
        self._batched = self.batch.protocols
        # The fan-out's write (FrameSink.direct): the record into the BIO and nothing else; the
        # fan-out hands the connection to the batch (WriteBatch.add_written). Only while the
        # app is not paused, for records under DIRECT_FRAME_LIMIT: ~1,400 instructions less a
        # sparse delivery than write_record (bench/delivery_floor.py).
        self.direct: Callable[[bytes], int] = self._encrypt

    def _get_app_transport(self) -> sslproto._SSLProtocolTransport:
        # asyncio's, with this module's transport (typeshed does not know it may be None).
        transport: sslproto._SSLProtocolTransport | None = self._app_transport
        if transport is None:
            if self._app_transport_created:
                raise RuntimeError("Creating _SSLProtocolTransport twice")
            transport = self._app_transport = _BatchedTransport(self._loop, self)
            self._app_transport_created = True
        return transport

    def get_buffer(self, n: int) -> memoryview:
        return _shared_buffer

    def buffer_updated(self, nbytes: int) -> None:
        super().buffer_updated(nbytes)  # reads _ssl_buffer_view: the shared buffer
        # What reading one client caused (a handshake's next flight, a pong) leaves now: a loop
        # turn can read hundreds of connections (a reconnect storm), and waiting for the end
        # of it held each answer behind every other handshake (longest stall 432 ms, not 158).
        if self.batch.protocols:
            self.batch.flush()

    def write_record(self, data: bytes | memoryview) -> None:
        """The app's write, one record: what the relay's connections write with (PusherSocket).

        The transport's write checks the protocol's state, its backlog and its socket's
        flow control at every record; here `_control_app_writing` has the app paused whenever
        one of those would stop a record going straight into the BIO, so one flag says it all:
        ~450 instructions less a sparse delivery than the transport's write
        (bench/delivery_floor.py).
        """
        if self._app_writing_paused:
            transport = self._app_transport
            if transport is not None:  # None once the connection is lost: dropped, as asyncio's
                transport.write(data)
            return
        try:
            self._encrypt(data)
        except ssl.SSLError as exc:
            self._fatal_error(exc, "Fatal error on SSL protocol")
            return
        if not self._in_batch:
            # WriteBatch.add, inline: this runs once per delivery.
            protocols = self._batched
            if not protocols:
                self._loop.call_soon(self.batch.flush)
            self._in_batch = True
            protocols.append(self)
            # The turn's first record, alone in the BIO (the last flush read it empty, and a
            # paused socket pauses the app): only a big one can reach the mark.
            if len(data) < DIRECT_FRAME_LIMIT:
                return
        if self._outgoing.pending >= self._outgoing_high_water:
            self._control_app_writing()

    def _control_app_writing(self) -> None:
        # asyncio's pauses the app on the size of what waits to be written alone. Here also
        # while a record could not go straight into the BIO and out at the next flush: its
        # socket paused, a backlog, the TLS session closing or closed. So write_record, once the
        # app is not paused, needs no check of its own.
        size = self._outgoing.pending + self._write_buffer_size
        state = self._state
        if not self._app_writing_paused:
            if (
                size >= self._outgoing_high_water
                or self._ssl_writing_paused
                or self._write_backlog
                or (state is not _WRAPPED and state is not _DO_HANDSHAKE)
            ):
                self._app_writing_paused = True
                self._tell_app("pause_writing")
        elif (
            size <= self._outgoing_low_water
            and state is _WRAPPED
            and not self._ssl_writing_paused
            and not self._write_backlog
        ):
            self._app_writing_paused = False
            self._tell_app("resume_writing")

    def _tell_app(self, method: str) -> None:
        try:
            getattr(self._app_protocol, method)()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # as asyncio's: the app's fault, reported, not ours
            self._loop.call_exception_handler(
                {
                    "message": f"protocol.{method}() failed",
                    "exception": exc,
                    "transport": self._app_transport,
                    "protocol": self,
                }
            )

    def _set_app_protocol(self, app_protocol: asyncio.BaseProtocol) -> None:
        super()._set_app_protocol(app_protocol)
        # The one before was told it is paused: so is the one taking over. (asyncio's __init__
        # sets the first before the flag.)
        if getattr(self, "_app_writing_paused", False):
            self._tell_app("pause_writing")

    def pause_writing(self) -> None:
        super().pause_writing()  # the socket's buffer is full
        self._control_app_writing()

    def _set_state(self, new_state: sslproto.SSLProtocolState) -> None:
        was = self._state
        super()._set_state(new_state)  # type: ignore[misc]  # typeshed lacks it
        if was is _WRAPPED:  # closing, or lost: the app writes no more records itself
            self._control_app_writing()

    def _process_outgoing(self) -> None:
        # asyncio's reads the BIO and writes to the socket at once; here the batch does both.
        if not self._ssl_writing_paused and self._outgoing.pending:
            self.batch.add(self)
        self._control_app_writing()


async def serve_tls(
    loop: asyncio.AbstractEventLoop,
    sock: Any,
    protocol: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    handshake_timeout: float | None,
) -> None:
    """Serve an accepted socket over TLS; returns once the handshake is done (raises if not)."""
    waiter: asyncio.Future[None] = loop.create_future()
    tls = BatchedTLSProtocol(loop, protocol, context, waiter, handshake_timeout)
    transport, _ = await loop.connect_accepted_socket(lambda: tls, sock)
    try:
        await waiter
    except BaseException:
        transport.close()
        raise
