"""End to end: caps and timeouts of the public port against the real `sidecar` process.

Connections per address (WebSocket and HTTP keep-alive alike), the idle keep-alive timeout, the
request head timeout, the publish socket's request timeout, and running out of file
descriptors (a sidecar started with a low RLIMIT_NOFILE).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.browser_ws import open_ws, tls_context
from tests.support.config_reload import sighup, write_config
from tests.support.process import SidecarProcess, base_config, free_port, running_sidecar

PER_IP = 3


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    with running_sidecar(
        tmp_path_factory.mktemp("capped"),
        workers=1,
        admin={"port": free_port()},
        limits={"max_connections_per_ip": PER_IP},
    ) as sidecar:
        yield sidecar


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    with running_sidecar(
        tmp_path_factory.mktemp("impatient"),
        workers=1,
        limits={"keepalive_timeout": 1, "request_head_timeout": 1, "publish_request_timeout": 1},
    ) as sidecar:
        yield sidecar


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def kept_alive(sidecar: SidecarProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection that made one HTTP request and is kept alive, idle."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", sidecar.port, ssl=tls_context(sidecar), server_hostname="localhost"
    )
    writer.write(b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 404 ")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    await reader.readexactly(length)
    return reader, writer


async def refused(session: aiohttp.ClientSession, sidecar: SidecarProcess) -> bool:
    try:
        ws = await open_ws(session, sidecar)
    except (TimeoutError, aiohttp.ClientError, OSError, ssl.SSLError):
        return True
    await ws.close()
    return False


async def eventually_admitted(session: aiohttp.ClientSession, sidecar: SidecarProcess):
    """A WebSocket, once the server has seen an earlier connection go (a moment later)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return await open_ws(session, sidecar)
        except (aiohttp.ClientError, OSError, ssl.SSLError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_websockets_and_keep_alive_http_count_together_per_address(
    capped: SidecarProcess, session: aiohttp.ClientSession
) -> None:
    sockets = [await open_ws(session, capped) for _ in range(PER_IP - 1)]
    _, idle_http = await kept_alive(capped)  # an idle keep-alive connection counts too
    assert await refused(session, capped)
    assert await refused(session, capped)
    # The other connections never noticed.
    for ws in sockets:
        await ws.send_json({"event": "pusher:ping", "data": {}})
        assert json.loads(await ws.receive_str(timeout=5))["event"] == "pusher:pong"
    idle_http.close()  # one goes: room for one more
    sockets.append(await eventually_admitted(session, capped))
    assert await refused(session, capped)
    for ws in sockets:
        await ws.close()
    metrics = await scrape(session, capped)
    assert metric(metrics, "sidecar_connections_over_ip_limit_total") >= 3
    lines = await capped.wait_for_log(lambda e: "max_connections_per_ip" in e.get("msg", ""))
    assert len(lines) == 1  # at most one line per interval, with how many since
    assert lines[0]["level"] == "warning" and lines[0]["address"] == "127.0.0.1"


async def scrape(session: aiohttp.ClientSession, sidecar: SidecarProcess) -> str:
    url = f"http://127.0.0.1:{sidecar.config['admin']['port']}/metrics"
    async with session.get(url) as response:
        assert response.status == 200
        return await response.text()


def metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    raise AssertionError(f"{series} not exported")


async def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(
    impatient: SidecarProcess,
) -> None:
    reader, writer = await kept_alive(impatient)
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
    assert time.monotonic() - started < 5  # seconds, not aiohttp's hour
    writer.close()


async def test_a_silent_connection_gets_408_after_the_head_timeout(
    impatient: SidecarProcess,
) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", impatient.port, ssl=tls_context(impatient), server_hostname="localhost"
    )
    writer.write(b"GET /app/key HTTP/1.1\r\nHost: local")
    answer = await asyncio.wait_for(reader.read(), 10)
    assert answer.startswith(b"HTTP/1.1 408 ")
    writer.close()


async def test_a_half_sent_publish_gets_408_and_is_closed(impatient: SidecarProcess) -> None:
    reader, writer = await asyncio.open_unix_connection(impatient.socket)
    app_id = impatient.app["id"]
    writer.write(
        f"POST /apps/{app_id}/events HTTP/1.1\r\nHost: localhost\r\n"
        'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"name":'.encode()
    )
    started = time.monotonic()
    answer = await asyncio.wait_for(reader.read(), 10)
    assert time.monotonic() - started < 5
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert json.loads(body) == {"error": "request not complete within 1.0 s"}
    writer.close()


# Out of file descriptors --------------------------------------------------------------------

OPEN_FILES = 64


@pytest.fixture
def starved(tmp_path: Path) -> Iterator[SidecarProcess]:
    config = base_config(tmp_path, workers=1, admin={"port": free_port()})
    sidecar = SidecarProcess(tmp_path, config, open_files=OPEN_FILES)
    try:
        yield sidecar.start()
    finally:
        sidecar.stop()


async def test_running_out_of_file_descriptors_is_logged_counted_and_survived(
    starved: SidecarProcess, session: aiohttp.ClientSession
) -> None:
    # More connections than the process has descriptors for: the ones past the limit wait in
    # the backlog (they are not closed unanswered) and the listener keeps listening.
    held = []
    for _ in range(OPEN_FILES):
        sock = socket.create_connection(("127.0.0.1", starved.port))
        held.append(sock)
    lines = await starved.wait_for_log(lambda e: e.get("msg", "").startswith("out of file"))
    assert lines, starved.stderr()[-2000:]
    assert lines[0]["level"] == "error"
    assert lines[0]["listener"] == "tls" and lines[0]["error"] == "EMFILE"
    await asyncio.sleep(1)  # many refused accepts later, still one line per interval
    assert len([e for e in starved.log_lines() if e.get("msg", "").startswith("out of file")]) == 1
    for sock in held:
        sock.close()
    ws = await eventually_admitted(session, starved)  # served again once descriptors are free
    await ws.close()
    metrics = await scrape(session, starved)
    assert metric(metrics, 'sidecar_accept_out_of_files_total{listener="tls"}') >= 1


# Subscription churn -------------------------------------------------------------------------


async def test_subscription_churn_past_the_rate_gets_4301_and_is_dropped(
    impatient: SidecarProcess, session: aiohttp.ClientSession
) -> None:
    churner = await open_ws(session, impatient)
    for i in range(150):  # 300 frames at once: past the burst of 100
        await churner.send_json({"event": "pusher:subscribe", "data": {"channel": f"churn-{i}"}})
        await churner.send_json({"event": "pusher:unsubscribe", "data": {"channel": f"churn-{i}"}})
    await churner.send_json({"event": "pusher:ping", "data": {}})
    frames = []
    while not frames or frames[-1]["event"] != "pusher:pong":
        frames.append(json.loads(await churner.receive_str(timeout=5)))
    succeeded = [f for f in frames if f["event"] == "pusher_internal:subscription_succeeded"]
    errors = [f for f in frames if f["event"] == "pusher:error"]
    assert 50 <= len(succeeded) <= 60  # a burst of 100 frames: 50 pairs (and a few refilled)
    assert len(errors) >= 180 and {e["data"]["code"] for e in errors} == {4301}
    assert errors[0]["data"]["message"] == (
        "subscriptions refused: over the limit of 100 per second"
    )
    await churner.close()


# With workers, and reloaded -----------------------------------------------------------------


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[SidecarProcess]:
    config = base_config(tmp_path, workers=2, limits={"max_connections_per_ip": 4})
    sidecar = SidecarProcess(tmp_path, config)
    try:
        yield sidecar.start()
    finally:
        sidecar.stop()


async def test_the_per_address_limit_is_per_node_and_applied_live_by_a_reload(
    two_workers: SidecarProcess, session: aiohttp.ClientSession
) -> None:
    sockets, refusals = [], 0
    for _ in range(12):  # each of the two workers allows half the node's 4
        try:
            sockets.append(await open_ws(session, two_workers))
        except (aiohttp.ClientError, OSError, ssl.SSLError):
            refusals += 1
    # The kernel hashes each connection to a worker: 2 at least (one worker full), 4 at most.
    assert 2 <= len(sockets) <= 4 and refusals == 12 - len(sockets)
    write_config(two_workers, limits={"max_connections_per_ip": 0})
    sighup(two_workers)
    await two_workers.wait_for_log(lambda e: e.get("msg") == "config reloaded")
    await asyncio.sleep(0.5)  # the workers apply it after the supervisor's line
    more = [await open_ws(session, two_workers) for _ in range(8)]  # no limit now
    for ws in sockets + more:
        await ws.close()
