"""aiohttp's socket site with a TLS handshake deadline.

`loop.create_server` cuts a handshake that takes longer than `ssl_handshake_timeout` (asyncio
and uvloop alike; their default is 60 s), but aiohttp's sites do not pass it on. A client that
connects and says nothing holds a socket and a file descriptor until then.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from aiohttp import web


class TlsSockSite(web.SockSite):
    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        *,
        ssl_context: ssl.SSLContext | None,
        handshake_timeout: float,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context, backlog=backlog)
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        extra = {}
        if self._ssl_context is not None:
            extra["ssl_handshake_timeout"] = self._handshake_timeout
        self._server = await asyncio.get_running_loop().create_server(
            server, sock=self._sock, ssl=self._ssl_context, backlog=self._backlog, **extra
        )
