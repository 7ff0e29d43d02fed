"""CORS on the signed HTTP API, by aiohttp-cors, with `OriginPolicy` deciding every Origin.

aiohttp-cors looks origins up in a mapping (`config.get(origin, config.get("*"))`) and knows
only exact strings; the allow-list also has patterns (`*.example.com`, `http://localhost:*`).
So its default configuration is a mapping that asks the policy: one source of truth for the
WebSocket upgrade check and for CORS. The API is signed with the app secret, not with cookies,
so credentials stay off unless configured; preflights are cached by the browser for an hour.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping

import aiohttp_cors
from aiohttp import hdrs, web
from aiohttp_cors.urldispatcher_router_adapter import ResourcesUrlDispatcherRouterAdapter

from sidecar.config.origins import OriginPolicy
from sidecar.http_glue import json_error

# What the HTTP API answers to: events and batches are POSTed, queries are GETs.
ALLOWED_METHODS = ("GET", "POST")
# Headers a page or a Pusher server library sends beyond the CORS-safelisted ones: a JSON body,
# the library's name (pusher-http-node, -python), and jQuery-style XHR marking.
ALLOWED_HEADERS = ("Content-Type", "X-Pusher-Library", "X-Requested-With")
# Browsers cap it anyway (Chromium at 2 hours); an hour saves a preflight per call.
PREFLIGHT_MAX_AGE = 3600

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PolicyOrigins(Mapping[str, aiohttp_cors.ResourceOptions]):
    """Every Origin the policy allows maps to the same options; any other is absent."""

    def __init__(self, policy: OriginPolicy, options: aiohttp_cors.ResourceOptions) -> None:
        self.policy = policy
        self.options = options

    def __getitem__(self, origin: str) -> aiohttp_cors.ResourceOptions:
        # aiohttp-cors also asks for "*" (a catch-all entry): present only when `*` is listed.
        if self.policy.allows(origin):
            return self.options
        raise KeyError(origin)

    def __iter__(self) -> Iterator[str]:
        return iter(("*",) if self.policy.allow_all else ())

    def __len__(self) -> int:
        return 1 if self.policy.allow_all else 0

    def __bool__(self) -> bool:
        # aiohttp-cors takes an empty configuration for "no origin at all": ask per origin.
        return True


def resource_options(allow_credentials: bool) -> aiohttp_cors.ResourceOptions:
    return aiohttp_cors.ResourceOptions(
        allow_credentials=allow_credentials,
        allow_headers=ALLOWED_HEADERS,
        allow_methods=ALLOWED_METHODS,
        max_age=PREFLIGHT_MAX_AGE,
    )


def allow_cross_origin(
    app: web.Application, policy: OriginPolicy, *, allow_credentials: bool = False
) -> PolicyOrigins:
    """CORS for every resource routed in `app` so far (call it after adding the API routes).

    Returns what answers for every Origin: a reload changes its `policy` (in place) and
    `options` (credentials), and every later request sees them.
    """
    origins = PolicyOrigins(policy, resource_options(allow_credentials))
    cors = aiohttp_cors.CorsConfig(
        app, router_adapter=ResourcesUrlDispatcherRouterAdapter(app.router, origins)
    )
    for resource in list(app.router.resources()):
        cors.add(resource)
    # Innermost, so that json_errors does not turn the refusal into a bare "Forbidden".
    app.middlewares.append(preflight_refusals)
    app.on_response_prepare.append(vary_on_origin)
    return origins


@web.middleware
async def preflight_refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A refused preflight as JSON saying why (aiohttp-cors raises 403 with a text body)."""
    try:
        return await handler(request)
    except web.HTTPForbidden as exc:
        if request.method != hdrs.METH_OPTIONS or exc.content_type == "application/json":
            raise
        return json_error(403, exc.text or "CORS preflight request refused")


async def vary_on_origin(request: web.Request, response: web.StreamResponse) -> None:
    """A response that names the Origin it allows differs by Origin: caches must know."""
    if hdrs.ACCESS_CONTROL_ALLOW_ORIGIN in response.headers:
        vary = response.headers.get(hdrs.VARY)
        if vary is None:
            response.headers[hdrs.VARY] = hdrs.ORIGIN
        elif "origin" not in vary.lower():
            response.headers[hdrs.VARY] = f"{vary}, {hdrs.ORIGIN}"
