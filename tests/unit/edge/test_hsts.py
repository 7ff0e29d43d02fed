"""sidecar.edge.hsts: the header on HTTPS responses only, errors included."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from sidecar.config.model import from_mapping
from sidecar.config.tls import HstsConfig
from sidecar.edge.hsts import HEADER, hsts_middleware
from sidecar.server.prepare import edge_middlewares

MIDDLEWARE = hsts_middleware(HstsConfig(max_age=60))


async def ok(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


async def missing(request: web.Request) -> web.StreamResponse:
    raise web.HTTPNotFound()


async def test_https_responses_carry_the_header() -> None:
    request = make_mocked_request("GET", "/").clone(scheme="https")
    response = await MIDDLEWARE(request, ok)
    assert response.headers[HEADER] == "max-age=60"


async def test_https_errors_carry_it_too() -> None:
    request = make_mocked_request("GET", "/").clone(scheme="https")
    try:
        await MIDDLEWARE(request, missing)
    except web.HTTPNotFound as exc:
        assert exc.headers[HEADER] == "max-age=60"
    else:
        raise AssertionError("the error was swallowed")


async def test_plain_http_never_does() -> None:
    request = make_mocked_request("GET", "/")
    response = await MIDDLEWARE(request, ok)
    assert HEADER not in response.headers


def test_the_edge_has_no_hsts_unless_configured() -> None:
    assert edge_middlewares(from_mapping({})) == []
    assert len(edge_middlewares(from_mapping({"tls": {"hsts": True}}))) == 1
