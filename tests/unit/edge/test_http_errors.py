"""sidecar.edge.http_errors: aiohttp's own refusals in JSON, one quiet line, no traceback."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from sidecar.edge.http_errors import QuietAppRunner, reason_for
from sidecar.observe.bad_input import BAD_INPUT

SIGNATURE = "5ba7f1e2c3d4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233"


async def read_body(request: web.Request) -> web.Response:
    return web.json_response({"size": len(await request.read())})


async def broken(request: web.Request) -> web.Response:
    raise RuntimeError("a bug")


@pytest.fixture
async def port() -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_route("*", "/body", read_body)
    app.router.add_get("/bug", broken)
    runner = QuietAppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers, body


def records_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.getMessage()} {r.__dict__} {r.exc_text or ''}" for r in caplog.records)


@pytest.mark.parametrize(
    "request_bytes",
    [
        f"GET /body?auth_signature={SIGNATURE} HTTP/1.1\r\nHost: x\r\n"
        f"X-Bad: a\x01{SIGNATURE}\r\n\r\n".encode(),
        f"GET /body?auth_signature={SIGNATURE} HTTP/1.1 extra\r\n\r\n".encode(),
        f"{SIGNATURE}\r\n\r\n".encode(),
        b"POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"zz{SIGNATURE}\r\n".encode(),
    ],
    ids=["control-character", "request-line", "garbage", "chunked-framing"],
)
async def test_malformed_requests_get_json_and_one_quiet_line(
    port: int, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    before = sum(BAD_INPUT.counts.values())
    status, headers, body = await exchange(port, request_bytes)
    assert status == 400
    assert headers["Content-Type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert SIGNATURE not in error
    assert SIGNATURE not in records_text(caplog)  # nowhere in any log line, nor a traceback
    assert all(r.exc_info is None for r in caplog.records)
    assert all(r.levelno < logging.WARNING for r in caplog.records)
    bad = [r for r in caplog.records if r.getMessage() == "bad input"]
    assert [(r.kind, r.peer, r.reason) for r in bad] == [("request", "127.0.0.1", error)]  # type: ignore[attr-defined]
    assert sum(BAD_INPUT.counts.values()) == before + 1


async def test_a_bug_is_still_logged_with_its_traceback_but_answered_in_json(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    status, _, body = await exchange(port, b"GET /bug HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 500
    assert json.loads(body) == {"error": "internal server error"}
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is not None


async def test_a_good_request_is_untouched(port: int) -> None:
    status, _, body = await exchange(
        port, b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    )
    assert (status, json.loads(body)) == (200, {"size": 3})


def test_reasons_are_fixed_strings() -> None:
    from aiohttp import http_exceptions

    assert (
        reason_for(http_exceptions.BadHttpMethod(SIGNATURE)) == "not an HTTP request (bad method)"
    )
    assert (
        reason_for(http_exceptions.LineTooLong(SIGNATURE, "8190"))
        == "request line or header too long"
    )
    assert reason_for(ValueError(SIGNATURE)) == "malformed request"
