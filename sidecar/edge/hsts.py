"""Strict-Transport-Security on HTTPS responses, when `tls.hsts` asks for it.

Only on HTTPS (directly, or as a trusted proxy reports it): browsers ignore the header over
plain HTTP, and sending it there would only mislead whoever reads the responses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from sidecar.config.tls import HstsConfig

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HEADER = "Strict-Transport-Security"


def hsts_middleware(hsts: HstsConfig) -> Callable[..., Awaitable[web.StreamResponse]]:
    value = hsts.header()

    @web.middleware
    async def strict_transport(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if request.secure:
                exc.headers.setdefault(HEADER, value)
            raise
        if request.secure and not response.prepared:
            response.headers.setdefault(HEADER, value)
        return response

    return strict_transport
