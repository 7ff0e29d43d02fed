"""End to end: the real `sidecar run` as reverse proxy to an app started by the test.

One sidecar per upstream kind (TCP, Unix socket) for the module; each test starts the app at
the address the sidecar was configured with, and stops it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support.process import SidecarProcess, free_port, running_sidecar
from tests.support.upstream_apps import CHUNK, PROTOCOL, Cable, Upstream, pattern

pytestmark = pytest.mark.e2e

APP = {"id": "9", "key": "proxy-key", "secret": "proxy-secret-0123456789abcdef0123456789"}
LARGE = 50 * 1024 * 1024


@pytest.fixture(scope="module")
def app_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def app_socket(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("app") / "puma.sock")


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory, app_port: int) -> Iterator[SidecarProcess]:
    upstream = {"url": f"http://127.0.0.1:{app_port}", "timeout": 2}
    with running_sidecar(tmp_path_factory.mktemp("proxy"), apps=[APP], upstream=upstream) as s:
        yield s


@pytest.fixture(scope="module")
def plain_sidecar(
    tmp_path_factory: pytest.TempPathFactory, app_port: int
) -> Iterator[SidecarProcess]:
    """tls.mode off: the same proxy over plain TCP."""
    upstream = {"url": f"http://127.0.0.1:{app_port}", "timeout": 2}
    folder = tmp_path_factory.mktemp("proxy-plain")
    tls_off = {"mode": "off", "dir": "certs"}
    with running_sidecar(folder, apps=[APP], upstream=upstream, tls=tls_off) as s:
        yield s


@pytest.fixture(scope="module")
def unix_sidecar(
    tmp_path_factory: pytest.TempPathFactory, app_socket: str
) -> Iterator[SidecarProcess]:
    folder = tmp_path_factory.mktemp("proxy-unix")
    with running_sidecar(folder, apps=[APP], upstream=f"unix://{app_socket}") as s:
        yield s


class App:
    """The app behind the sidecar: test_proxy's HTTP routes and test_passthrough's /cable."""

    def __init__(self) -> None:
        self.http = Upstream()
        self.cable = Cable()
        self.http.app.router.add_get("/cable", self.cable.cable)
        # A handler still sleeping (the slow app) must not hold the test up at its end.
        self.runner = web.AppRunner(self.http.app, shutdown_timeout=0.5)

    async def serve(self, site: type[web.BaseSite], *where: object) -> App:
        await self.runner.setup()
        await site(self.runner, *where).start()  # type: ignore[arg-type]
        return self

    async def close(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def app(app_port: int) -> AsyncIterator[App]:
    served = await App().serve(web.TCPSite, "127.0.0.1", app_port)
    yield served
    await served.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def tls(sidecar: SidecarProcess) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(sidecar.cert))


def url(sidecar: SidecarProcess, path: str, scheme: str = "https") -> str:
    return f"{scheme}://localhost:{sidecar.port}{path}"


def resident_bytes(pid: int) -> int:
    """Resident memory of a process and its children (the worker processes)."""
    total = 0
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(child) for child in (task / "children").read_text().split()]
    for each in pids:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


async def settled_resident_bytes(pid: int) -> int:
    """Resident memory once the workers are done starting (the supervisor is ready first)."""
    last = resident_bytes(pid)
    for _ in range(50):
        await asyncio.sleep(0.2)
        now = resident_bytes(pid)
        if abs(now - last) < 1024 * 1024:
            return now
        last = now
    return last


# Streaming ---------------------------------------------------------------------------------


async def test_large_upload_and_download_stream_through(
    sidecar: SidecarProcess, app: App, session: aiohttp.ClientSession
) -> None:
    assert sidecar.proc is not None
    before = await settled_resident_bytes(sidecar.proc.pid)
    sent = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        first = pattern(0, CHUNK)
        sent.update(first)
        yield first
        # The app has the start of the body while most of it is still with the client.
        await asyncio.wait_for(app.http.first_chunk.wait(), 15)
        offset = CHUNK
        while offset < LARGE:
            piece = pattern(offset, CHUNK)
            sent.update(piece)
            yield piece
            offset += CHUNK

    async with session.post(url(sidecar, "/upload"), data=body(), ssl=tls(sidecar)) as response:
        assert response.status == 200
        assert await response.json() == {
            "size": LARGE,
            "sha256": sent.hexdigest(),
            "chunked": True,
        }

    received = hashlib.sha256()
    size = 0
    async with session.get(url(sidecar, f"/download?size={LARGE}"), ssl=tls(sidecar)) as response:
        assert response.status == 200
        assert response.content_length == LARGE
        # The app sends the rest only once the client has the first chunk.
        while size < CHUNK:
            piece = await asyncio.wait_for(response.content.readany(), 15)
            received.update(piece)
            size += len(piece)
        app.http.client_has_first.set()
        async for piece in response.content.iter_any():
            received.update(piece)
            size += len(piece)
    assert size == LARGE
    assert received.digest() == hashlib.sha256(pattern(0, LARGE)).digest()
    # 100 MB went through; the sidecar holds no body whole.
    assert resident_bytes(sidecar.proc.pid) - before < LARGE // 2


# Headers -----------------------------------------------------------------------------------


async def test_forwarding_and_hop_by_hop_headers(
    sidecar: SidecarProcess, app: App, session: aiohttp.ClientSession
) -> None:
    async with session.get(
        url(sidecar, "/echo/page?x=1"),
        ssl=tls(sidecar),
        headers={
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Host": "evil.test",
            "Connection": "keep-alive, X-Private",
            "X-Private": "1",
            "Keep-Alive": "300",
        },
    ) as response:
        assert response.status == 200
        seen = await response.json()
    headers = dict(seen["headers"])
    assert seen["path_qs"] == "/echo/page?x=1"
    assert headers["Host"] == f"localhost:{sidecar.port}"
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "https"
    assert headers["X-Forwarded-Host"] == f"localhost:{sidecar.port}"
    assert "X-Private" not in headers
    assert "Keep-Alive" not in headers
    async with session.get(url(sidecar, "/hop"), ssl=tls(sidecar)) as response:
        assert response.headers["X-Kept"] == "1"
        assert "X-Hop" not in response.headers
        assert "Proxy-Authenticate" not in response.headers


# WebSockets --------------------------------------------------------------------------------


async def test_websocket_echoed_through_the_sidecar(
    sidecar: SidecarProcess, app: App, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(
        url(sidecar, "/cable", "wss"),
        ssl=tls(sidecar),
        protocols=(PROTOCOL,),
        origin="https://anywhere.test",  # the app's socket: the app judges its Origin
        max_msg_size=0,
    ) as ws:
        assert ws.protocol == PROTOCOL
        await ws.send_str("ping through")
        assert await ws.receive_str(timeout=5) == "ping through"
        big = pattern(0, 1024 * 1024)
        await ws.send_bytes(big)
        assert await ws.receive_bytes(timeout=10) == big
    (head,) = app.cable.heads
    assert head["X-Forwarded-Proto"] == "https"
    assert head["X-Forwarded-For"] == "127.0.0.1"


async def test_the_sidecar_keeps_its_own_paths(
    sidecar: SidecarProcess, app: App, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(sidecar.ws_url(APP["key"]), ssl=tls(sidecar)) as ws:
        established = json.loads(await ws.receive_str(timeout=5))
        assert established["event"] == "pusher:connection_established"
    async with session.get(url(sidecar, f"/apps/{APP['id']}/channels"), ssl=tls(sidecar)) as r:
        assert r.status == 401  # the sidecar's signed API, not the app
        assert "auth_key" in (await r.json())["error"]
    async with session.get(url(sidecar, "/apps/anything/else"), ssl=tls(sidecar)) as r:
        assert r.status == 404
        assert (await r.json())["error"] == "nothing at /apps/anything/else"
    assert app.http.requests == []


# No smuggling through the WebSocket passthrough (issue 13) ----------------------------------

FORGED = (
    "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.test\r\nX-Forwarded-Proto: gopher\r\n"
    "X-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6;host=evil.test\r\n"
)
WEBSOCKET = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


async def exchange(
    sidecar: SidecarProcess, secure: bool, *sends: bytes, until_closed: bool = True
) -> bytes:
    """Each of `sends` written in turn on one connection (waiting for an answer after each
    but the last); everything the sidecar answered until it closed (or, not `until_closed`,
    the head of its last answer)."""
    context = tls(sidecar) if secure else None
    reader, writer = await asyncio.open_connection(
        "localhost", sidecar.port, ssl=context, server_hostname="localhost" if secure else None
    )
    answered = b""
    try:
        for i, data in enumerate(sends):
            writer.write(data)
            if i < len(sends) - 1:
                answered += await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        if not until_closed:
            return answered + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        with contextlib.suppress(ConnectionResetError, ssl.SSLError):
            answered += await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return answered


def assert_forwarded_by_the_sidecar(request: web.Request, host: str, scheme: str) -> None:
    headers = request.headers
    assert headers.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert headers.getall("X-Forwarded-Host") == [host]
    assert headers.getall("X-Forwarded-Proto") == [scheme]
    assert "X-Real-IP" not in headers
    assert "Forwarded" not in headers


@pytest.mark.parametrize("secure", [True, False], ids=["tls", "plain"])
async def test_an_upgrade_that_is_not_a_websocket_is_refused(
    sidecar: SidecarProcess, plain_sidecar: SidecarProcess, app: App, secure: bool
) -> None:
    served = sidecar if secure else plain_sidecar
    host = f"localhost:{served.port}"
    first = (
        f"GET /echo/first HTTP/1.1\r\nHost: {host}\r\n"
        f"Upgrade: not-a-websocket-at-all\r\nConnection: Upgrade\r\n{FORGED}\r\n"
    )
    second = f"GET /echo/second HTTP/1.1\r\nHost: {host}\r\n{FORGED}Connection: close\r\n\r\n"
    answered = await exchange(served, secure, (first + second).encode())
    assert answered.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert answered.endswith(b'{"error":"the only upgrade served here is Upgrade: websocket"}')
    assert app.http.requests == []
    # A request pipelined behind a plain one is the proxy's to rewrite, like the first.
    plain = f"GET /echo/first HTTP/1.1\r\nHost: {host}\r\n{FORGED}\r\n"
    answered = await exchange(served, secure, (plain + second).encode())
    assert answered.count(b"HTTP/1.1 200 OK") == 2
    assert [r.path for r in app.http.requests] == ["/echo/first", "/echo/second"]
    for request in app.http.requests:
        assert_forwarded_by_the_sidecar(request, host, "https" if secure else "http")


@pytest.mark.parametrize("secure", [True, False], ids=["tls", "plain"])
async def test_nothing_after_a_refused_websocket_upgrade_reaches_the_app(
    sidecar: SidecarProcess, plain_sidecar: SidecarProcess, app: App, secure: bool
) -> None:
    served = sidecar if secure else plain_sidecar
    host = f"localhost:{served.port}"
    # /echo answers the upgrade 200 (a refusal); a request sent after it must not be read.
    upgrade = f"GET /echo/upgrade HTTP/1.1\r\nHost: {host}\r\n{WEBSOCKET}{FORGED}\r\n"
    smuggled = f"GET /echo/smuggled HTTP/1.1\r\nHost: {host}\r\n{FORGED}\r\n"
    answered = await exchange(served, secure, upgrade.encode(), smuggled.encode())
    assert answered.startswith(b"HTTP/1.1 200 OK")
    assert [r.path for r in app.http.requests] == ["/echo/upgrade"]
    (request,) = app.http.requests
    assert_forwarded_by_the_sidecar(request, host, "https" if secure else "http")
    # Pipelined in the same write: refused by the sidecar, the app sees nothing.
    answered = await exchange(served, secure, (upgrade + smuggled).encode())
    assert answered.startswith(b"HTTP/1.1 400 ")
    assert json.loads(answered.split(b"\r\n\r\n", 1)[1]) == {
        "error": "nothing may follow a WebSocket upgrade request before its answer"
    }
    assert len(app.http.requests) == 1


@pytest.mark.parametrize("secure", [True, False], ids=["tls", "plain"])
async def test_the_api_paths_never_reach_the_app_as_upgrades(
    sidecar: SidecarProcess, plain_sidecar: SidecarProcess, app: App, secure: bool
) -> None:
    served = sidecar if secure else plain_sidecar
    host = f"localhost:{served.port}"
    for path in ("/apps/1/channels", "/%61pps/1/channels", "//apps/1/channels"):
        for upgrade in (WEBSOCKET, "Upgrade: h2c\r\nConnection: Upgrade\r\n"):
            request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{upgrade}\r\n"
            answered = await exchange(served, secure, request.encode(), until_closed=False)
            assert answered.startswith((b"HTTP/1.1 101 ", b"HTTP/1.1 400 ")), (path, upgrade)
    assert app.http.requests == []
    assert app.cable.heads == []


# The app unavailable ------------------------------------------------------------------------


async def test_app_down_is_502_for_pages_and_sockets(
    sidecar: SidecarProcess, session: aiohttp.ClientSession
) -> None:
    async with session.get(
        url(sidecar, "/"), ssl=tls(sidecar), headers={"Accept": "text/html"}
    ) as response:
        assert response.status == 502
        assert "502 Bad Gateway" in await response.text()
    async with session.post(url(sidecar, "/form"), data=b"a=1", ssl=tls(sidecar)) as response:
        assert response.status == 502
        assert (await response.json())["error"].startswith("the app is not reachable")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await session.ws_connect(url(sidecar, "/cable", "wss"), ssl=tls(sidecar))
    assert info.value.status == 502
    failures = await sidecar.wait_for_log(lambda e: e.get("msg") == "upstream failed")
    assert failures
    assert all(f"{APP['secret']}" not in json.dumps(e) for e in sidecar.log_lines())


async def test_slow_app_is_504(
    sidecar: SidecarProcess, app: App, session: aiohttp.ClientSession
) -> None:
    async with session.get(url(sidecar, "/slow"), ssl=tls(sidecar)) as response:
        assert response.status == 504
        assert (await response.json())["error"] == "the app did not answer in time"


# A Unix socket ------------------------------------------------------------------------------


async def test_unix_socket_app_502_until_it_listens(
    unix_sidecar: SidecarProcess, app_socket: str, session: aiohttp.ClientSession
) -> None:
    async with session.get(url(unix_sidecar, "/echo"), ssl=tls(unix_sidecar)) as response:
        assert response.status == 502
    served = await App().serve(web.UnixSite, app_socket)
    try:
        async with session.post(
            url(unix_sidecar, "/echo/over-unix"), data=b"body", ssl=tls(unix_sidecar)
        ) as response:
            assert response.status == 200
            seen = await response.json()
            assert seen["body"] == "body"
            assert dict(seen["headers"])["X-Forwarded-Proto"] == "https"
        async with session.ws_connect(
            url(unix_sidecar, "/cable", "wss"), ssl=tls(unix_sidecar), protocols=(PROTOCOL,)
        ) as ws:
            await ws.send_str("over unix")
            assert await ws.receive_str(timeout=5) == "over unix"
    finally:
        await served.close()


def test_the_banner_names_the_app(sidecar: SidecarProcess, app_port: int) -> None:
    assert f"https://localhost:{sidecar.port}/ -> http://127.0.0.1:{app_port}" in sidecar.stdout()


@pytest.mark.parametrize("secure", [True, False], ids=["tls", "plain"])
async def test_an_upgrade_later_on_a_kept_alive_connection_smuggles_nothing(
    sidecar: SidecarProcess, plain_sidecar: SidecarProcess, app: App, secure: bool
) -> None:
    # The edge reads only a connection's first head; aiohttp reads the rest, and its parser
    # takes an `Upgrade: h2c` request for a switch of protocol.
    served = sidecar if secure else plain_sidecar
    host = f"localhost:{served.port}"
    first = f"GET /echo/first HTTP/1.1\r\nHost: {host}\r\n\r\n"
    upgrade = (
        f"GET /echo/upgrade HTTP/1.1\r\nHost: {host}\r\n"
        f"Upgrade: h2c\r\nConnection: Upgrade\r\n{FORGED}\r\n"
    )
    behind = f"GET /echo/behind HTTP/1.1\r\nHost: {host}\r\n{FORGED}Connection: close\r\n\r\n"
    answered = await exchange(served, secure, (first + upgrade + behind).encode())
    # Whatever reaches the app was read as a request by the sidecar, and rewritten (aiohttp
    # 3.14 forwards the h2c request without its Upgrade and reads nothing after it: its
    # answer closes the connection, so the client is not left waiting).
    assert answered.count(b"HTTP/1.1 200 OK") == 2
    assert answered.count(b"Connection: close") == 1
    assert [r.path for r in app.http.requests][:1] == ["/echo/first"]
    for request in app.http.requests:
        assert_forwarded_by_the_sidecar(request, host, "https" if secure else "http")
        assert "Upgrade" not in request.headers
