"""End to end: bad input at the real `sidecar run` is answered in JSON, logged quietly (info,
one line each, rate-limited, never the bytes) and counted in /metrics, with one process and
with workers; the admin listener and the plain-HTTP port refuse names not their own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.support.observe import admin_block, admin_url, sample, scrape, wait_ready, wait_until
from tests.support.process import SidecarProcess, free_port

pytestmark = pytest.mark.e2e

APP = {"id": "5", "key": "bad-input-key", "secret": "bad-input-secret-0123456789"}
SIGNATURE = "f00dfeed" * 8  # looks like an auth_signature; must never be logged or echoed


async def send(sidecar: SidecarProcess, data: bytes) -> bytes:
    """`data` on a fresh TLS connection; everything answered until the sidecar closed it."""
    context = ssl.create_default_context(cafile=str(sidecar.cert))
    reader, writer = await asyncio.open_connection(
        "localhost", sidecar.port, ssl=context, server_hostname="localhost"
    )
    writer.write(data)
    answered = b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        answered = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answered


def status_and_json(answer: bytes) -> tuple[int, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head, answer
    return int(head.split(b" ")[1]), json.loads(body)


MALFORMED = (
    f"GET /apps/5/channels?auth_key=k&auth_signature={SIGNATURE} HTTP/1.1\r\n"
    f"Host: localhost\r\nX-Broken: a\x01{SIGNATURE}\r\n\r\n"
).encode()
# An upgrade, then a frame without a mask: a broken framing rule (1002).
UNMASKED = (
    b"GET /app/bad-input-key?protocol=7 HTTP/1.1\r\nHost: localhost\r\n"
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    b"\x81\x05hello"
)
H2C = b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"


def assert_quiet(sidecar: SidecarProcess) -> list[dict[str, Any]]:
    """No traceback, nothing above info for client input, no signature: the bad-input lines."""
    lines = sidecar.log_lines()
    assert SIGNATURE not in json.dumps(lines)
    assert SIGNATURE not in sidecar.stderr()
    assert not [line for line in lines if "exc" in line], lines
    assert not [line for line in lines if line["level"] in ("error", "critical")], lines
    return [line for line in lines if line.get("msg") == "bad input"]


@pytest.mark.parametrize("workers", [1, 2])
async def test_bad_input_is_answered_logged_quietly_and_counted(
    start_sidecar: Callable[..., SidecarProcess], workers: int
) -> None:
    sidecar = start_sidecar(apps=[APP], admin=admin_block(), workers=workers)
    await wait_ready(sidecar)

    status, body = status_and_json(await send(sidecar, MALFORMED))
    assert status == 400 and SIGNATURE not in body["error"]
    answer = await send(sidecar, UNMASKED)
    assert answer.startswith(b"HTTP/1.1 101 ")
    assert b"\x88" in answer  # a close frame (1002) follows the welcome
    status, body = status_and_json(await send(sidecar, H2C))
    assert status == 400 and "websocket" in body["error"]
    old_version = UNMASKED.split(b"\r\n\r\n")[0].replace(b"Version: 13", b"Version: 8")
    status, body = status_and_json(await send(sidecar, old_version + b"\r\n\r\n"))
    assert status == 426

    async def counted() -> Any:
        samples = await scrape(sidecar)
        kinds = {k: sample(samples, "sidecar_bad_input_total", kind=k) for k in KINDS}
        return kinds if all(kinds.values()) else None

    assert await wait_until(counted) == {"request": 1, "upgrade": 2, "frame": 1}
    bad = assert_quiet(sidecar)
    assert sorted(line["kind"] for line in bad) == ["frame", "request", "upgrade", "upgrade"]
    assert all(line["level"] == "info" and line["peer"] == "127.0.0.1" for line in bad)


KINDS = ("request", "upgrade", "frame")


async def test_a_flood_of_bad_input_is_rate_limited_in_the_log_but_all_counted(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    sidecar = start_sidecar(apps=[APP], admin=admin_block(), workers=1)
    await wait_ready(sidecar)
    flood = 120
    answers = await asyncio.gather(*(send(sidecar, MALFORMED) for _ in range(flood)))
    assert [answer[8:13] for answer in answers] == [b" 400 "] * flood

    async def summed_up() -> Any:
        lines = sidecar.log_lines()
        return [line for line in lines if line.get("msg") == "bad input lines held back"]

    held = await wait_until(summed_up)
    bad = assert_quiet(sidecar)
    assert len(bad) < flood
    assert len(bad) + sum(line["count"] for line in held) == flood
    samples = await scrape(sidecar)
    assert sample(samples, "sidecar_bad_input_total", kind="request") == flood


async def test_names_not_our_own_are_refused_by_admin_and_the_plain_http_port(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    http_port = free_port()
    sidecar = start_sidecar(apps=[APP], admin=admin_block(), http={"port": http_port})
    await wait_ready(sidecar)
    async with aiohttp.ClientSession() as session:
        rebound = {"Host": "rebound.evil.test"}
        async with session.get(admin_url(sidecar, "/status"), headers=rebound) as response:
            assert response.status == 421
            assert "evil" not in await response.text()
        async with session.get(admin_url(sidecar, "/status")) as response:
            assert response.status == 200
        plain = f"http://127.0.0.1:{http_port}/app/x?y=1"
        async with session.get(plain, headers=rebound, allow_redirects=False) as response:
            assert response.status == 421
            assert response.content_type == "application/json"
            assert "evil" not in await response.text()
            assert "Location" not in response.headers
        local = {"Host": f"localhost:{http_port}"}
        async with session.get(plain, headers=local, allow_redirects=False) as response:
            assert response.status == 308
            assert response.headers["Location"] == f"https://localhost:{sidecar.port}/app/x?y=1"
