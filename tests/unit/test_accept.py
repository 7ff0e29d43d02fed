"""sidecar.accept: counts per address, the throttle, and the Acceptor on real sockets."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from sidecar import accept as accept_module
from sidecar.accept import (
    Acceptor,
    AddressCap,
    AddressCounts,
    Lease,
    Throttle,
    client_key,
    stats_of,
)
from sidecar.protocol.forwarded import TrustedProxies
from sidecar.tls.contexts import ensure_self_signed, server_context

# Pure parts ---------------------------------------------------------------------------------


def test_counts_admit_up_to_the_limit_and_release_makes_room() -> None:
    counts = AddressCounts()
    leases = [counts.admit("192.0.2.1", 2) for _ in range(3)]
    assert leases[0] is not None and leases[1] is not None and leases[2] is None
    assert counts.admit("192.0.2.2", 2) is not None  # another address has its own count
    leases[0].release()
    leases[0].release()  # once: a second release is nothing
    assert counts.held("192.0.2.1") == 1
    assert counts.admit("192.0.2.1", 2) is not None


def test_a_limit_of_zero_counts_but_never_refuses() -> None:
    counts = AddressCounts()
    leases = [counts.admit("192.0.2.1", 0) for _ in range(5000)]
    assert all(lease is not None for lease in leases)
    assert counts.held("192.0.2.1") == 5000


def test_an_address_with_nothing_open_is_forgotten() -> None:
    counts = AddressCounts()
    lease = counts.admit("192.0.2.1", 10)
    assert isinstance(lease, Lease) and len(counts) == 1
    lease.release()
    assert len(counts) == 0  # a flood of one-off addresses leaves nothing behind


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ],
)
def test_ipv6_addresses_count_by_their_64(address: str, key: str) -> None:
    assert client_key(address) == key


def test_each_worker_allows_its_share_of_the_node_limit_rounded_up() -> None:
    limit = [1000]
    cap = AddressCap(lambda: limit[0], TrustedProxies(), processes=3)
    assert cap.share() == 334
    limit[0] = 0
    assert cap.share() == 0  # no limit
    limit[0] = 2  # a reload: read at the next admission
    assert cap.share() == 1


def test_trusted_proxies_are_counted_at_the_head() -> None:
    trusted = TrustedProxies((ipaddress.ip_network("10.0.0.0/8"),))
    cap = AddressCap(lambda: 10, trusted)
    assert cap.defers("10.1.2.3")
    assert not cap.defers("192.0.2.1")
    assert not AddressCap(lambda: 10, TrustedProxies()).defers("10.1.2.3")


def test_refusals_are_counted_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cap = AddressCap(lambda: 1, TrustedProxies())
    before = cap.stats.over_address_cap
    assert cap.admit("192.0.2.9") is not None
    with caplog.at_level(logging.WARNING, "sidecar.accept"):
        for _ in range(100):
            assert cap.admit("192.0.2.9") is None
    assert cap.stats.over_address_cap - before == 100
    (record,) = [r for r in caplog.records if "max_connections_per_ip" in r.getMessage()]
    assert record.address == "192.0.2.9"  # type: ignore[attr-defined]


def test_throttle_says_once_per_interval_with_the_count_since() -> None:
    throttle = Throttle(10.0)
    assert throttle.due(100.0) == 1
    assert [throttle.due(100.0 + i) for i in range(1, 6)] == [None] * 5
    assert throttle.due(110.0) == 6
    assert throttle.due(125.0) == 1


# The Acceptor on real sockets ---------------------------------------------------------------


class Recorder(asyncio.Protocol):
    """Records what it is told; replies `pong` to anything."""

    made: ClassVar[list[Recorder]] = []

    def __init__(self, lease: Lease | None) -> None:
        self.lease = lease
        self.transport: asyncio.Transport | None = None
        Recorder.made.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"pong")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lease is not None:
            self.lease.release()


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


async def exchange(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping")
    answer = await asyncio.wait_for(reader.read(1000), 2)
    return reader, writer, answer


async def test_connections_over_the_cap_are_refused_at_accept_with_429() -> None:
    Recorder.made.clear()
    sock = listening()
    port = sock.getsockname()[1]
    cap = AddressCap(lambda: 2, TrustedProxies())
    acceptor = Acceptor(sock, lambda lease, _: Recorder(lease), "test", cap=cap)
    try:
        first = await exchange(port)
        second = await exchange(port)
        assert first[2] == second[2] == b"pong"
        _, writer, answer = await exchange(port)
        assert answer.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
        assert answer.endswith(b'{"error":"too many connections from this address"}')
        writer.close()
        assert len(Recorder.made) == 2  # the third was never given a protocol
        first[1].close()  # one goes: room for another
        for _ in range(100):
            await asyncio.sleep(0.01)
            if cap.counts.held("127.0.0.1") == 1:
                break
        third = await exchange(port)
        assert third[2] == b"pong"
        for _, w, _ in (second, third):
            w.close()
    finally:
        acceptor.close()
    assert not acceptor.is_serving() and acceptor.sockets == ()


async def test_a_closed_acceptor_accepts_no_more() -> None:
    sock = listening()
    port = sock.getsockname()[1]
    acceptor = Acceptor(sock, lambda lease, _: Recorder(lease), "test")
    acceptor.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


class OutOfFiles:
    """A listening socket whose accept() fails with `errno` the first `times` times."""

    def __init__(self, sock: socket.socket, code: int, times: int) -> None:
        self._sock = sock
        self.family = sock.family
        self.code = code
        self.times = times
        self.tries = 0

    def accept(self) -> tuple[socket.socket, Any]:
        self.tries += 1
        if self.tries <= self.times:
            raise OSError(self.code, "Too many open files")
        return self._sock.accept()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return getattr(self._sock, name)


async def test_out_of_descriptors_is_logged_counted_and_accepting_resumes(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accept_module, "OUT_OF_FILES_PAUSE", 0.01)
    Recorder.made.clear()
    sock = listening()
    port = sock.getsockname()[1]
    failing = OutOfFiles(sock, errno.EMFILE, times=20)
    stats = stats_of("emfile-test")
    with caplog.at_level(logging.INFO, "sidecar.accept"):
        acceptor = Acceptor(failing, lambda lease, _: Recorder(lease), "emfile-test")  # type: ignore[arg-type]
        try:
            # The client waits in the backlog while there is no descriptor, then is served.
            _, writer, answer = await exchange(port)
            assert answer == b"pong"
            writer.close()
        finally:
            acceptor.close()
    assert stats.out_of_files == 20
    lines = [r for r in caplog.records if r.getMessage().startswith("out of file descriptors")]
    assert len(lines) == 1  # once per interval, not once per accept
    assert lines[0].levelno == logging.ERROR
    assert lines[0].error == "EMFILE"  # type: ignore[attr-defined]
    assert lines[0].listener == "emfile-test"  # type: ignore[attr-defined]


# TLS handshakes in slots -------------------------------------------------------------------


def trusting() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def tls_exchange(port: int) -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=trusting(), server_hostname="localhost"
    )
    writer.write(b"ping")
    try:
        return await reader.read(1000)
    finally:
        writer.close()


async def test_past_the_handshake_slots_a_tls_client_waits_its_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accept_module, "MAX_HANDSHAKES", 1)
    monkeypatch.setattr(accept_module, "HANDSHAKE_SLOT", 30.0)
    pair = ensure_self_signed(tmp_path)
    sock = listening()
    port = sock.getsockname()[1]
    acceptor = Acceptor(
        sock,
        lambda lease, _: Recorder(lease),
        "slots-test",
        ssl=server_context(pair.cert, pair.key),
        handshake_timeout=30.0,
    )
    try:
        # Connected, and never a ClientHello: its handshake holds the only slot.
        _, silent = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(tls_exchange(port))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # accepted, but its handshake has not begun
        silent.close()  # that handshake fails: the slot is free
        assert await asyncio.wait_for(waiting, 5) == b"pong"
    finally:
        acceptor.close()


async def test_a_client_that_says_nothing_holds_a_slot_no_longer_than_handshake_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accept_module, "MAX_HANDSHAKES", 1)
    monkeypatch.setattr(accept_module, "HANDSHAKE_SLOT", 0.1)
    pair = ensure_self_signed(tmp_path)
    sock = listening()
    port = sock.getsockname()[1]
    acceptor = Acceptor(
        sock,
        lambda lease, _: Recorder(lease),
        "slots-test",
        ssl=server_context(pair.cert, pair.key),
        handshake_timeout=30.0,
    )
    try:
        silents = [(await asyncio.open_connection("127.0.0.1", port))[1] for _ in range(3)]
        # Behind three silent clients, each holding the slot 0.1 s: served in well under the
        # 30 s their handshakes could last.
        assert await asyncio.wait_for(tls_exchange(port), 5) == b"pong"
        for writer in silents:
            writer.close()
    finally:
        acceptor.close()
