"""sidecar.batched_tls: the write batch alone, then TLS served over real sockets."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar import batched_tls
from sidecar.batched_tls import BatchedTLSProtocol, WriteBatch, serve_tls
from sidecar.tls.contexts import ensure_self_signed, server_context

# The batch alone ----------------------------------------------------------------------------


class FakeTransport:
    def __init__(self, fail: bool = False) -> None:
        self.written: list[bytes] = []
        self.fail = fail

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("the handler is closed")
        self.written.append(data)


class FakeProtocol:
    """What WriteBatch reads of a BatchedTLSProtocol."""

    def __init__(self, transport: FakeTransport | None) -> None:
        self._transport = transport
        self._outgoing = ssl.MemoryBIO()
        self._in_batch = False
        self._app_writing_paused = False
        self._ssl_writing_paused = False
        self.controlled = 0

    def _control_app_writing(self) -> None:
        self.controlled += 1

    def encrypted(self, batch: WriteBatch, record: bytes) -> None:
        """As the transport's write: the record into the BIO, the connection into the batch."""
        self._outgoing.write(record)
        batch.add(self)  # type: ignore[arg-type]


async def test_records_are_written_after_the_callback_one_write_per_connection() -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    one, two = FakeTransport(), FakeTransport()
    first, second = FakeProtocol(one), FakeProtocol(two)
    first.encrypted(batch, b"a")
    second.encrypted(batch, b"b")
    first.encrypted(batch, b"cc")
    assert one.written == [] and len(batch.protocols) == 2  # nothing yet: it waits its turn
    await asyncio.sleep(0)
    assert one.written == [b"acc"] and two.written == [b"b"]
    assert batch.protocols == [] and not first._in_batch and not second._in_batch


async def test_a_closed_or_lost_connection_is_skipped_and_the_rest_written() -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    closed, lost = FakeProtocol(FakeTransport(fail=True)), FakeProtocol(None)
    good = FakeTransport()
    alive = FakeProtocol(good)
    for protocol in (closed, lost, alive):
        protocol.encrypted(batch, b"x")
    batch.flush()
    assert good.written == [b"x"] and batch.protocols == []


async def test_an_app_paused_by_the_batch_is_looked_at_again_once_its_records_are_written() -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    protocol = FakeProtocol(FakeTransport())
    protocol._app_writing_paused = True
    protocol.encrypted(batch, b"x")
    batch.flush()
    assert protocol.controlled == 1


async def test_a_socket_that_paused_keeps_its_records_until_it_resumes() -> None:
    batch = WriteBatch(asyncio.get_running_loop())
    transport = FakeTransport()
    protocol = FakeProtocol(transport)
    protocol._app_writing_paused = True
    protocol._ssl_writing_paused = True
    protocol.encrypted(batch, b"y")
    batch.flush()
    # Still in the BIO, the app not looked at: the socket's resume_writing does both.
    assert transport.written == [] and protocol._outgoing.pending == 1
    assert protocol.controlled == 0 and not protocol._in_batch


def test_one_batch_per_loop() -> None:
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert batched_tls.batch_of(first) is batched_tls.batch_of(first)
        assert batched_tls.batch_of(first) is not batched_tls.batch_of(second)
    finally:
        first.close()
        second.close()


def test_a_dropped_loop_takes_its_batch_with_it() -> None:
    loop = asyncio.new_event_loop()
    batched_tls.batch_of(loop)
    held = len(batched_tls._batches)
    loop.close()
    del loop
    gc.collect()
    assert len(batched_tls._batches) == held - 1


# Over real sockets --------------------------------------------------------------------------


def trusting() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Echo(asyncio.Protocol):
    """Answers each read with `copies` writes of it, in one callback; closes on b"bye"."""

    def __init__(self, copies: int = 1) -> None:
        self.copies = copies
        self.transport: Any = None
        self.paused = 0
        self.resumed = 0
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if data == b"bye":
            self.transport.write(b"last words")
            self.transport.close()
            return
        for _ in range(self.copies):
            self.transport.write(data)

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class TlsServer:
    def __init__(self, context: ssl.SSLContext, make: Any) -> None:
        self.context = context
        self.make = make
        self.protocols: list[Any] = []
        self.failures: list[BaseException] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self._task = asyncio.ensure_future(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.sock)
            protocol = self.make()
            self.protocols.append(protocol)
            task = loop.create_task(self._serve(conn, protocol))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _serve(self, conn: socket.socket, protocol: Any) -> None:
        try:
            await serve_tls(asyncio.get_running_loop(), conn, protocol, self.context, 5.0)
        except Exception as exc:  # the test reads what failed
            self.failures.append(exc)

    def close(self) -> None:
        self._task.cancel()
        self.sock.close()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=trusting(), server_hostname="localhost"
        )


@pytest.fixture
def context(tmp_path: Path) -> ssl.SSLContext:
    pair = ensure_self_signed(tmp_path)
    return server_context(pair.cert, pair.key)


Serve = Callable[[Any], TlsServer]


@pytest.fixture
async def serve(context: ssl.SSLContext) -> AsyncIterator[Serve]:
    """Starts a TlsServer whose connections get `make()` as their protocol; all closed after."""
    servers: list[TlsServer] = []

    def start(make: Any) -> TlsServer:
        servers.append(TlsServer(context, make))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


async def test_bytes_written_in_one_callback_arrive_whole_and_in_order(
    serve: Serve,
) -> None:
    server = serve(lambda: Echo(copies=3))
    reader, writer = await server.connect()
    writer.write(b"abc")
    assert await asyncio.wait_for(reader.readexactly(9), 5) == b"abcabcabc"
    writer.close()


async def test_two_connections_reading_through_the_shared_buffer_keep_their_own_bytes(
    serve: Serve,
) -> None:
    server = serve(Echo)
    (r1, w1), (r2, w2) = await server.connect(), await server.connect()
    for round_ in range(20):
        w1.write(b"one-%02d" % round_)
        w2.write(b"two-%02d" % round_)
        assert await asyncio.wait_for(r1.readexactly(6), 5) == b"one-%02d" % round_
        assert await asyncio.wait_for(r2.readexactly(6), 5) == b"two-%02d" % round_
    w1.close()
    w2.close()


async def test_a_client_message_of_many_records_is_read_whole(serve: Serve) -> None:
    payload = bytes(range(256)) * 400  # 100 KiB: seven TLS records, read 16 KiB at a time
    server = serve(Echo)
    reader, writer = await server.connect()
    writer.write(payload)
    assert await asyncio.wait_for(reader.readexactly(len(payload)), 5) == payload
    assert server.protocols[0].transport._ssl_protocol.max_size == batched_tls.READ_CHUNK
    writer.close()


async def echo_with_a_high_water_mark(
    serve: Serve, high: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Echo]:
    """A client connected to an Echo whose transport tells it to pause at `high` bytes."""
    server = serve(Echo)
    reader, writer = await server.connect()
    await asyncio.sleep(0.05)
    echo: Echo = server.protocols[0]
    echo.transport.set_write_buffer_limits(high=high)
    return reader, writer, echo


async def tls_echo(
    serve: Serve,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Echo, BatchedTLSProtocol]:
    """As echo_with_a_high_water_mark at 64 KiB, with the TLS protocol under its transport."""
    reader, writer, echo = await echo_with_a_high_water_mark(serve, 64 * 1024)
    return reader, writer, echo, echo.transport.tls_protocol


async def test_a_large_write_arrives_intact_and_pauses_the_app_meanwhile(
    serve: Serve,
) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, over the write limits
    reader, writer, echo = await echo_with_a_high_water_mark(serve, 64 * 1024)
    for offset in range(0, len(payload), 64 * 1024):
        echo.transport.write(payload[offset : offset + 64 * 1024])
    assert echo.paused == 1  # told in the same turn: it would have queued it all
    assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload
    await asyncio.sleep(0.05)
    assert echo.resumed == 1
    writer.close()


async def test_one_write_that_reaches_the_high_water_mark_pauses_the_app_at_once(
    serve: Serve,
) -> None:
    reader, writer, echo = await echo_with_a_high_water_mark(serve, 64 * 1024)
    echo.transport.write(b"x" * 1024)  # the turn's first record, small: no pause
    assert echo.paused == 0
    await asyncio.sleep(0.05)  # flushed: the BIO is empty again
    echo.transport.write(b"y" * 64 * 1024)  # the turn's first record, alone over the mark
    assert echo.paused == 1
    assert await asyncio.wait_for(reader.readexactly(65 * 1024), 5) == b"x" * 1024 + b"y" * 65536
    writer.close()


async def test_small_records_of_one_turn_pause_the_app_once_they_reach_the_mark(
    serve: Serve,
) -> None:
    reader, writer, echo = await echo_with_a_high_water_mark(serve, 64 * 1024)
    for _ in range(16):
        echo.transport.write(b"z" * 4000)  # 64,000 bytes and 16 records' overhead: under 64 KiB
    assert echo.paused == 0
    echo.transport.write(b"z" * 4000)  # over it now
    assert echo.paused == 1
    assert await asyncio.wait_for(reader.readexactly(68000), 5) == b"z" * 68000
    writer.close()


async def test_close_sends_what_was_written_first_then_ends_the_stream(
    serve: Serve,
) -> None:
    server = serve(Echo)
    reader, writer = await server.connect()
    writer.write(b"bye")
    assert await asyncio.wait_for(reader.read(), 5) == b"last words"  # then EOF
    assert await asyncio.wait_for(server.protocols[0].lost, 5) is None
    writer.close()


async def test_a_client_that_is_not_tls_fails_the_handshake_and_is_closed(
    serve: Serve,
) -> None:
    server = serve(Echo)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing said
    await asyncio.sleep(0.05)
    assert len(server.failures) == 1
    assert not server.protocols[0].lost.done()  # never told of a connection
    writer.close()


async def test_no_read_buffer_of_its_own_per_connection(context: ssl.SSLContext) -> None:
    loop = asyncio.get_running_loop()
    protocol = BatchedTLSProtocol(loop, Echo(), context, loop.create_future(), 5.0)
    assert len(protocol._ssl_buffer) == 0  # asyncio's own would hold 256 KiB
    assert protocol.get_buffer(-1) is batched_tls._shared_buffer


# The record writer (write_record): the relay's connections write with it, with no check of the
# TLS state of its own: the app is paused whenever a record could not go straight out.


async def test_records_of_one_callback_leave_in_one_write_at_its_end(serve: Serve) -> None:
    reader, writer, _echo, tls = await tls_echo(serve)
    tls.write_record(b"one")
    tls.write_record(b"two")
    assert len(tls.batch.protocols) == 1  # written once, at the end of the callback
    assert await asyncio.wait_for(reader.readexactly(6), 5) == b"onetwo"
    writer.close()


async def test_a_full_socket_pauses_the_app_at_once_and_its_records_follow_in_order(
    serve: Serve,
) -> None:
    reader, writer, echo, tls = await tls_echo(serve)
    tls.write_record(b"before ")
    tls.pause_writing()  # what the socket's transport says once its buffer is full
    assert echo.paused == 1  # at once, not once the BIO reaches the mark
    tls.write_record(b"while paused ")  # the whole path: it waits its turn
    await asyncio.sleep(0.05)
    assert echo.resumed == 0
    tls.resume_writing()
    await asyncio.sleep(0.05)
    assert echo.resumed == 1
    tls.write_record(b"after")
    expected = b"before while paused after"
    assert await asyncio.wait_for(reader.readexactly(len(expected)), 5) == expected
    writer.close()


async def test_a_paused_app_is_resumed_only_once_the_socket_takes_records_again(
    serve: Serve,
) -> None:
    reader, writer, echo, tls = await tls_echo(serve)
    tls.pause_writing()
    for _ in range(20):
        tls.write_record(b"z" * 4000)  # past the mark, held while the socket is full
    await asyncio.sleep(0.05)
    assert (echo.paused, echo.resumed) == (1, 0)
    tls.resume_writing()
    assert await asyncio.wait_for(reader.readexactly(80000), 5) == b"z" * 80000
    await asyncio.sleep(0.05)
    assert (echo.paused, echo.resumed) == (1, 1)
    writer.close()


async def test_closing_pauses_the_app_and_a_record_written_after_is_dropped(
    serve: Serve,
) -> None:
    reader, writer, echo, tls = await tls_echo(serve)
    tls.write_record(b"last words")
    echo.transport.close()
    assert echo.paused == 1  # the session is closing: no record goes straight out any more
    tls.write_record(b"too late")  # dropped, as asyncio's write drops it
    assert await asyncio.wait_for(reader.read(), 5) == b"last words"  # then EOF
    assert await asyncio.wait_for(echo.lost, 5) is None
    writer.close()


async def test_a_lost_socket_pauses_the_app_before_it_is_told_of_the_loss(serve: Serve) -> None:
    _reader, writer, echo, tls = await tls_echo(serve)
    tls._transport.abort()
    tls.connection_lost(None)  # what the socket's transport calls (its own call comes later)
    assert echo.paused == 1 and not echo.lost.done()  # told in a later callback
    tls.write_record(b"into nothing")  # dropped, no error
    assert await asyncio.wait_for(echo.lost, 5) is None
    writer.close()


# The fan-out's direct write: the record alone (BatchedTLSProtocol.direct), then the connections
# handed to the batch (WriteBatch.add_written, as FanoutQueue.written).


class Written:
    """What WriteBatch.add_written reads of a Connection: `batched`."""

    def __init__(self, batched: BatchedTLSProtocol | None) -> None:
        self.batched = batched


async def test_direct_records_leave_at_the_flush_of_the_connections_handed_over(
    serve: Serve,
) -> None:
    server = serve(Echo)
    (r1, w1), (r2, w2) = await server.connect(), await server.connect()
    await asyncio.sleep(0.05)
    one, two = (echo.transport.tls_protocol for echo in server.protocols)
    one.direct(b"first ")
    two.direct(b"to two")
    one.direct(b"second")
    assert one._outgoing.pending and not one._in_batch  # in the BIO, not in the batch
    one.batch.add_written([Written(one), Written(None), Written(two)])  # None: not TLS
    assert await asyncio.wait_for(r1.readexactly(12), 5) == b"first second"
    assert await asyncio.wait_for(r2.readexactly(6), 5) == b"to two"
    assert one.batch.written == []
    w1.close()
    w2.close()


async def test_a_direct_record_of_a_paused_app_waits_for_the_socket_and_then_leaves(
    serve: Serve,
) -> None:
    reader, writer, _echo, tls = await tls_echo(serve)
    tls.direct(b"held ")
    tls.pause_writing()  # the socket's buffer is full: not written at this flush
    tls.batch.add_written([Written(tls)])
    await asyncio.sleep(0.05)
    assert tls._outgoing.pending
    tls.resume_writing()
    tls.write_record(b"then this")
    assert await asyncio.wait_for(reader.readexactly(14), 5) == b"held then this"
    writer.close()


async def test_the_protocol_taking_over_a_paused_connection_is_told_it_is_paused(
    serve: Serve,
) -> None:
    _reader, writer, echo, tls = await tls_echo(serve)
    tls.pause_writing()
    taker = Echo()
    echo.transport.set_protocol(taker)  # as the listener hands a WebSocket on
    assert (echo.paused, taker.paused) == (1, 1)
    tls.resume_writing()
    await asyncio.sleep(0.05)
    assert taker.resumed == 1
    writer.close()
