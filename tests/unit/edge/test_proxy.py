"""sidecar.edge.proxy: ReverseProxy in front of a real aiohttp app, over TCP and a Unix socket."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import ipaddress
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.config.edge import UpstreamConfig
from sidecar.edge.proxy import ReverseProxy
from sidecar.http_glue import json_errors
from sidecar.protocol.forwarded import TrustedProxies, forwarded_middleware
from tests.support.process import free_port
from tests.support.upstream_apps import CHUNK, Upstream, pattern

# Long enough that a proxy holding the whole body would be noticed, quick on a shared machine.
BODY_SIZE = 8 * 1024 * 1024


Front = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
async def tcp_upstream(upstream: Upstream) -> AsyncIterator[TestServer]:
    server = TestServer(upstream.app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def front(aiohttp_client: Any) -> Front:
    """The proxy in an aiohttp app (as the edge has it), pointed at an upstream config."""

    async def make(upstream: UpstreamConfig, trusted: TrustedProxies | None = None) -> TestClient:
        app = web.Application(middlewares=[json_errors])
        ReverseProxy(upstream, trusted or TrustedProxies()).install(app)
        return await aiohttp_client(app)

    return make


def tcp(server: TestServer, **timeouts: float) -> UpstreamConfig:
    assert server.port is not None
    return UpstreamConfig(
        url=f"http://127.0.0.1:{server.port}", host="127.0.0.1", port=server.port, **timeouts
    )


# Requests and responses, as sent -----------------------------------------------------------


async def test_request_reaches_the_app_with_its_path_query_method_and_body(
    front: Front, tcp_upstream: TestServer
) -> None:
    client = await front(tcp(tcp_upstream))
    response = await client.request(
        "PATCH",
        "/echo/a%2Fb/caf%C3%A9?q=1&q=%20two",
        data=b"hello",
        headers={"Content-Type": "text/plain"},
    )
    assert response.status == 200
    seen = await response.json()
    assert seen["method"] == "PATCH"
    assert seen["path_qs"] == "/echo/a%2Fb/caf%C3%A9?q=1&q=%20two"  # not decoded on the way
    assert seen["body"] == "hello"
    headers = dict(seen["headers"])
    assert headers["Content-Type"] == "text/plain"
    assert headers["Content-Length"] == "5"


async def test_forwarding_headers_and_hop_by_hop_dropped(
    front: Front, tcp_upstream: TestServer
) -> None:
    client = await front(tcp(tcp_upstream))
    response = await client.get(
        "/echo",
        headers={
            "Host": "app.example.com",
            "Connection": "keep-alive, X-Private",
            "X-Private": "drop me",
            "Keep-Alive": "300",
            "Proxy-Authorization": "Basic eA==",
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Ssl": "on",
            "Forwarded": "for=6.6.6.6",
        },
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
    )
    headers = dict((await response.json())["headers"])
    assert headers["Host"] == "app.example.com"
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == "app.example.com"
    for gone in ("X-Private", "Keep-Alive", "Proxy-Authorization", "X-Forwarded-Ssl", "Forwarded"):
        assert gone not in headers
    # Nothing the client did not send is added by the proxy's own HTTP client.
    assert "User-Agent" not in headers
    assert "Accept-Encoding" not in headers


async def test_a_trusted_proxy_in_front_is_believed(front: Front, tcp_upstream: TestServer) -> None:
    trusted = TrustedProxies((ipaddress.ip_network("127.0.0.0/8"),))
    client = await front(tcp(tcp_upstream), trusted)
    response = await client.get(
        "/echo", headers={"X-Forwarded-For": "198.51.100.4", "X-Forwarded-Proto": "https"}
    )
    headers = dict((await response.json())["headers"])
    assert headers["X-Forwarded-For"] == "198.51.100.4, 127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "https"


async def test_response_hop_by_hop_headers_are_dropped(
    front: Front, tcp_upstream: TestServer
) -> None:
    client = await front(tcp(tcp_upstream))
    response = await client.get("/hop")
    assert await response.text() == "ok"
    assert response.headers["X-Kept"] == "1"
    for gone in ("X-Hop", "Proxy-Authenticate"):
        assert gone not in response.headers
    assert response.headers.get("Keep-Alive") != "timeout=99"


async def test_encoded_bodies_pass_untouched(front: Front, tcp_upstream: TestServer) -> None:
    client = await front(tcp(tcp_upstream))
    response = await client.get("/gzip", auto_decompress=False)
    assert response.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await response.read()) == b"hello " * 100


async def test_redirects_are_the_clients_to_follow(front: Front, tcp_upstream: TestServer) -> None:
    client = await front(tcp(tcp_upstream))
    response = await client.get("/redirect", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == "/elsewhere"


async def test_cookies_are_not_kept_between_clients(front: Front, tcp_upstream: TestServer) -> None:
    client = await front(tcp(tcp_upstream))
    first = await client.get("/cookie")
    assert "session=user-one" in first.headers["Set-Cookie"]
    # Another browser, without the cookie: the proxy must not send the first one's.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as other:
        response = await other.get(client.make_url("/cookie"))
        assert (await response.json())["cookie"] is None


async def test_head_request(front: Front, tcp_upstream: TestServer) -> None:
    client = await front(tcp(tcp_upstream))
    response = await client.head("/gzip")
    assert response.status == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert await response.read() == b""


# Streaming ---------------------------------------------------------------------------------


async def test_upload_is_streamed(
    front: Front, tcp_upstream: TestServer, upstream: Upstream
) -> None:
    client = await front(tcp(tcp_upstream))
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        first = pattern(0, CHUNK)
        digest.update(first)
        yield first
        # The app must see the start while the client still holds the rest.
        await asyncio.wait_for(upstream.first_chunk.wait(), 10)
        sent = CHUNK
        while sent < BODY_SIZE:
            piece = pattern(sent, CHUNK)
            digest.update(piece)
            yield piece
            sent += CHUNK

    response = await client.post("/upload", data=body())
    assert response.status == 200
    assert await response.json() == {
        "size": BODY_SIZE,
        "sha256": digest.hexdigest(),
        "chunked": True,
    }


async def test_upload_with_a_content_length_keeps_it(
    front: Front, tcp_upstream: TestServer
) -> None:
    client = await front(tcp(tcp_upstream))
    body = pattern(0, 3 * CHUNK + 17)
    response = await client.post("/upload", data=body)
    assert await response.json() == {
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "chunked": False,
    }


async def test_download_is_streamed(
    front: Front, tcp_upstream: TestServer, upstream: Upstream
) -> None:
    client = await front(tcp(tcp_upstream))
    response = await client.get("/download", params={"size": str(BODY_SIZE)})
    assert response.status == 200
    assert response.content_length == BODY_SIZE
    received = bytearray()
    while len(received) < CHUNK:
        received += await asyncio.wait_for(response.content.readany(), 10)
    upstream.client_has_first.set()
    received += await response.read()
    assert len(received) == BODY_SIZE
    assert received[:CHUNK] == pattern(0, CHUNK)
    assert hashlib.sha256(received).digest() == hashlib.sha256(pattern(0, BODY_SIZE)).digest()


async def test_a_client_that_leaves_ends_the_apps_response(
    front: Front, tcp_upstream: TestServer, upstream: Upstream
) -> None:
    client = await front(tcp(tcp_upstream))
    response = await client.get("/forever")
    assert len(await response.content.readany()) > 0
    response.close()
    await asyncio.wait_for(upstream.download_stopped.wait(), 10)


# The app unavailable ------------------------------------------------------------------------


async def test_upstream_down_is_502_json(front: Front) -> None:
    port = free_port()  # nothing listens there
    client = await front(UpstreamConfig(url="x", host="127.0.0.1", port=port))
    response = await client.get("/anything")
    assert response.status == 502
    body = await response.json()
    assert body["error"].startswith("the app is not reachable")


async def test_upstream_down_is_a_short_page_for_a_browser(front: Front) -> None:
    client = await front(UpstreamConfig(url="x", host="127.0.0.1", port=free_port()))
    response = await client.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert response.status == 502
    assert response.content_type == "text/html"
    page = await response.text()
    assert "502 Bad Gateway" in page
    assert len(page) < 1000


async def test_silent_upstream_is_504(front: Front, tcp_upstream: TestServer) -> None:
    client = await front(tcp(tcp_upstream, timeout=0.3))
    response = await client.get("/slow")
    assert response.status == 504
    assert (await response.json())["error"] == "the app did not answer in time"


async def test_upstream_silent_midway_cuts_the_response_short(
    front: Front, tcp_upstream: TestServer
) -> None:
    client = await front(tcp(tcp_upstream, timeout=0.3))
    response = await client.get("/stall-midway")
    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


async def test_unix_socket_missing_is_502_until_the_app_is_there(
    front: Front, upstream: Upstream, tmp_path: Path
) -> None:
    path = tmp_path / "puma.sock"
    client = await front(UpstreamConfig(url=f"unix:{path}", socket=str(path)))
    response = await client.get("/echo")
    assert response.status == 502
    assert "No such file" in (await response.json())["error"]
    runner = web.AppRunner(upstream.app)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    try:
        response = await client.get("/echo?over=unix", headers={"Host": "app.example.com"})
        assert response.status == 200
        seen = await response.json()
        assert seen["path_qs"] == "/echo?over=unix"
        assert dict(seen["headers"])["Host"] == "app.example.com"
    finally:
        await runner.cleanup()


# A kept-alive connection the app closed ----------------------------------------------------


class ClosesReusedConnections(asyncio.Protocol):
    """Answers the first request on a connection; closes on the second without answering,
    as an app does whose keep-alive timeout ran out just as the proxy reused the connection."""

    def __init__(self) -> None:
        self.requests = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.requests += data.count(b"\r\n\r\n")
        if self.requests == 1:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:
            self.transport.close()


async def test_a_stale_kept_alive_connection_is_retried_for_a_get_not_a_post(
    front: Front,
) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(ClosesReusedConnections, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await front(UpstreamConfig(url="x", host="127.0.0.1", port=port))
        assert (await client.get("/")).status == 200
        retried = await client.get("/")  # reuses the connection, which the app closes
        assert retried.status == 200
        assert await retried.text() == "ok"
        refused = await client.post("/", data=b"once")  # never sent twice
        assert refused.status == 502
        assert "closed the connection" in json.loads(await refused.text())["error"]
    finally:
        server.close()
        await server.wait_closed()


# Details -----------------------------------------------------------------------------------


async def test_expect_100_continue_is_answered_by_the_proxy_not_passed_on(
    front: Front, tcp_upstream: TestServer
) -> None:
    client = await front(tcp(tcp_upstream))
    response = await client.put("/echo/form", data=b"a=1", expect100=True)
    assert response.status == 200
    seen = await response.json()
    assert seen["body"] == "a=1"
    assert "Expect" not in dict(seen["headers"])


async def test_hsts_is_added_to_https_responses(
    aiohttp_client: Any, tcp_upstream: TestServer
) -> None:
    trusted = TrustedProxies((ipaddress.ip_network("127.0.0.1/32"),))
    app = web.Application(middlewares=[forwarded_middleware(trusted), json_errors])
    ReverseProxy(tcp(tcp_upstream), trusted, hsts="max-age=600").install(app)
    client = await aiohttp_client(app)
    secure = await client.get("/echo", headers={"X-Forwarded-Proto": "https"})
    assert secure.headers["Strict-Transport-Security"] == "max-age=600"
    plain = await client.get("/echo")
    assert "Strict-Transport-Security" not in plain.headers


async def test_a_client_leaving_mid_upload_is_not_the_apps_failure(
    aiohttp_client: Any,
    tcp_upstream: TestServer,
    upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = ReverseProxy(tcp(tcp_upstream), TrustedProxies())
    app = web.Application(middlewares=[json_errors])
    proxy.install(app)
    client = await aiohttp_client(app)
    _, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"x" * CHUNK
    )
    await writer.drain()
    await asyncio.wait_for(upstream.first_chunk.wait(), 5)
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.3)  # for the proxy to notice the loss
    assert not [r for r in caplog.records if r.name == "sidecar.proxy"]
    assert proxy.down is False
    assert (await client.get("/echo")).status == 200


class Garbage(asyncio.Protocol):
    """Answers any request with something that is not HTTP."""

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")  # type: ignore[attr-defined]
        self.transport.close()  # type: ignore[attr-defined]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport


async def test_an_answer_that_is_not_http_is_502(front: Front) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await front(UpstreamConfig(url="x", host="127.0.0.1", port=port))
        response = await client.post("/", data=b"x")
        assert response.status == 502
        assert (await response.json())["error"].startswith("the app's answer broke off")
    finally:
        server.close()
