"""sidecar.protocol.forwarded: whose X-Forwarded-For/-Proto are believed, and what they give."""

from __future__ import annotations

import ipaddress

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.protocol.forwarded import TrustedProxies, forwarded_middleware, parse_address

PROXIES = TrustedProxies((ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.9", "203.0.113.9"),
        (" 203.0.113.9:51000 ", "203.0.113.9"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ('"203.0.113.9"', "203.0.113.9"),
        ("unknown", None),
        ("", None),
        ("[::1", None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    parsed = parse_address(text)
    assert (str(parsed) if parsed is not None else None) == expected


def test_an_untrusted_peer_is_the_client_whatever_it_says() -> None:
    assert PROXIES.client("198.51.100.1", ["1.2.3.4"]) == "198.51.100.1"
    assert PROXIES.scheme("198.51.100.1", ["https"]) is None


def test_the_first_untrusted_hop_from_the_right_is_the_client() -> None:
    # The client forged the first entry; our two proxies appended the rest.
    chain = ["6.6.6.6, 203.0.113.9", "10.0.0.2"]
    assert PROXIES.client("10.0.0.1", chain) == "203.0.113.9"


def test_only_trusted_hops_leave_the_leftmost() -> None:
    assert PROXIES.client("10.0.0.1", ["10.0.0.3, 10.0.0.2"]) == "10.0.0.3"


def test_garbage_in_the_chain_stops_at_the_last_vouched_address() -> None:
    assert PROXIES.client("10.0.0.1", ["203.0.113.9, garbage, 10.0.0.2"]) == "10.0.0.2"
    assert PROXIES.client("10.0.0.1", []) == "10.0.0.1"


def test_the_nearest_proxys_scheme_counts() -> None:
    assert PROXIES.scheme("10.0.0.1", ["http, HTTPS"]) == "https"
    assert PROXIES.scheme("10.0.0.1", ["gopher"]) is None
    assert PROXIES.scheme("::1", []) is None


def test_no_networks_trusts_nobody() -> None:
    assert not TrustedProxies().trusts("127.0.0.1")


async def echo_client(trusted: TrustedProxies) -> TestClient:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"remote": request.remote, "scheme": request.scheme})

    app = web.Application(middlewares=[forwarded_middleware(trusted)])
    app.router.add_get("/", echo)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.mark.parametrize(
    ("networks", "expected"),
    [
        (["127.0.0.1/32"], {"remote": "203.0.113.9", "scheme": "https"}),
        (["10.0.0.0/8"], {"remote": "127.0.0.1", "scheme": "http"}),
    ],
)
async def test_the_middleware_rewrites_remote_and_scheme_for_trusted_peers(
    networks: list[str], expected: dict[str, str]
) -> None:
    trusted = TrustedProxies(tuple(ipaddress.ip_network(n) for n in networks))
    client = await echo_client(trusted)
    try:
        headers = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
        response = await client.get("/", headers=headers)
        assert await response.json() == expected
    finally:
        await client.close()
