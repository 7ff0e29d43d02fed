"""Apps that stand behind the reverse proxy in tests: HTTP routes that record and stream, and a
WebSocket endpoint in the manner of Rails' ActionCable."""

from __future__ import annotations

import asyncio
import gzip
import hashlib

import aiohttp
from aiohttp import web

CHUNK = 64 * 1024


class Upstream:
    """The app behind the proxy: records what it was sent, streams what it is asked for."""

    def __init__(self) -> None:
        self.first_chunk = asyncio.Event()  # the app has the first piece of an upload
        self.client_has_first = asyncio.Event()  # the client has the first piece of a download
        self.download_stopped = asyncio.Event()
        self.requests: list[web.Request] = []
        self.app = web.Application()
        routes = [
            ("*", "/echo{tail:.*}", self.echo),
            ("POST", "/upload", self.upload),
            ("GET", "/download", self.download),
            ("GET", "/forever", self.forever),
            ("GET", "/slow", self.slow),
            ("GET", "/stall-midway", self.stall_midway),
            ("GET", "/gzip", self.gzipped),
            ("GET", "/redirect", self.redirect),
            ("GET", "/cookie", self.cookie),
            ("GET", "/hop", self.hop),
        ]
        for method, path, handler in routes:
            if method == "GET":
                self.app.router.add_get(path, handler)  # HEAD too
            else:
                self.app.router.add_route(method, path, handler)

    async def echo(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path_qs": request.raw_path,
                "headers": list(request.headers.items()),
                "body": body.decode(),
            }
        )

    async def upload(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            if size == 0:
                self.first_chunk.set()
            size += len(chunk)
            digest.update(chunk)
        return web.json_response(
            {
                "size": size,
                "sha256": digest.hexdigest(),
                "chunked": "Content-Length" not in request.headers,
            }
        )

    async def download(self, request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        await response.write(pattern(0, CHUNK))
        # Not another byte until the client has the first: a buffering proxy never finishes.
        await asyncio.wait_for(self.client_has_first.wait(), 10)
        sent = CHUNK
        while sent < size:
            piece = pattern(sent, min(CHUNK, size - sent))
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def forever(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            while True:
                await response.write(b"x" * CHUNK)
        finally:  # the connection lost: a write fails, or aiohttp cancels the handler
            self.download_stopped.set()

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="too late")

    async def stall_midway(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b"x" * 100)
        await asyncio.sleep(30)
        return response

    async def gzipped(self, request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b"hello " * 100),
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
        )

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    async def cookie(self, request: web.Request) -> web.Response:
        response = web.json_response({"cookie": request.headers.get("Cookie")})
        response.set_cookie("session", "user-one")
        return response

    async def hop(self, request: web.Request) -> web.Response:
        return web.Response(
            text="ok",
            headers={
                "Keep-Alive": "timeout=99",
                "Proxy-Authenticate": "Basic",
                "X-Hop": "1",
                "Connection": "X-Hop",
                "X-Kept": "1",
            },
        )


CYCLE = bytes(range(251))  # a prime length: no chunk size lines up with it


def pattern(offset: int, size: int) -> bytes:
    """Bytes whose position is visible in their value, so a reordering would show."""
    start = offset % len(CYCLE)
    return (CYCLE * ((start + size) // len(CYCLE) + 1))[start : start + size]


PROTOCOL = "actioncable-v1-json"


class Cable:
    """The app's WebSocket endpoint (ActionCable-like): echoes, closes when asked to."""

    def __init__(self) -> None:
        self.heads: list[dict[str, str]] = []
        self.closed = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/cable", self.cable)
        self.app.router.add_get("/plain", self.plain)

    async def cable(self, request: web.Request) -> web.WebSocketResponse:
        self.heads.append(dict(request.headers))
        ws = web.WebSocketResponse(protocols=(PROTOCOL,), compress=True, max_msg_size=0)
        await ws.prepare(request)
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT and message.data == "close-me":
                await ws.close(code=4001, message=b"asked to")
            elif message.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(message.data)
            elif message.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        self.closed.set()
        return ws

    async def plain(self, request: web.Request) -> web.Response:
        return web.Response(status=404, text="no socket here")
