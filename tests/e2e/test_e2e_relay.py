"""End to end over real sockets: bad input, close codes, liveness and slow clients.

Each refusal checks the exact error the client sees, and that the server and another client go on.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from sidecar.api.client import SidecarClient
from tests.support.browser_ws import next_frame, open_ws, tls_context
from tests.support.process import SidecarProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def subscribe(ws: aiohttp.ClientWebSocketResponse, channel: str) -> None:
    await ws.send_json({"event": "pusher:subscribe", "data": {"channel": channel}})
    reply = json.loads(await ws.receive_str(timeout=5))
    assert reply == {
        "event": "pusher_internal:subscription_succeeded",
        "channel": channel,
        "data": "{}",
    }


async def expect_close(ws: aiohttp.ClientWebSocketResponse, code: int, timeout: float = 6) -> None:
    """The close frame the client received carries `code` (what pusher-js acts on)."""
    msg = await ws.receive(timeout=timeout)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, code)


def publish(sidecar: SidecarProcess, channel: str, event: str, data: Any) -> None:
    with SidecarClient(sidecar.socket, app_id=sidecar.app["id"]) as client:
        client.trigger(channel, event, data)


async def test_connection_established_shape(
    sidecar: SidecarProcess, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(sidecar.ws_url(), ssl=tls_context(sidecar)) as ws:
        frame = await next_frame(ws)
        data = json.loads(frame["data"])
        assert frame["event"] == "pusher:connection_established"
        assert set(data) == {"socket_id", "activity_timeout"}
        assert data["activity_timeout"] == 120
        assert all(part.isdigit() for part in data["socket_id"].split("."))


BAD_FRAMES: list[tuple[str, Callable[[aiohttp.ClientWebSocketResponse], Any], str]] = [
    ("not json", lambda ws: ws.send_str("{nope"), "frame is not JSON"),
    ("no event", lambda ws: ws.send_str('{"data": {}}'), "frame has no 'event' string"),
    ("binary", lambda ws: ws.send_bytes(b"\x00\x01"), "binary frames are not supported"),
    (
        "unknown pusher event",
        lambda ws: ws.send_json({"event": "pusher:teleport", "data": {}}),
        "unsupported event 'pusher:teleport'",
    ),
    (
        "channel too long",
        lambda ws: ws.send_json({"event": "pusher:subscribe", "data": {"channel": "c" * 165}}),
        "channel name is 165 characters, over the limit of 164",
    ),
    (
        "bad channel characters",
        lambda ws: ws.send_json({"event": "pusher:subscribe", "data": {"channel": "a b!"}}),
        "has characters outside",
    ),
    (
        "client event on a public channel",
        lambda ws: ws.send_json({"event": "client-typing", "channel": "room", "data": {}}),
        "client events are only allowed on private and presence channels",
    ),
]


@pytest.mark.parametrize(
    ("case", "send_bad", "message"), BAD_FRAMES, ids=[c[0] for c in BAD_FRAMES]
)
async def test_bad_frame_gets_pusher_error_and_nobody_else_notices(
    sidecar: SidecarProcess,
    session: aiohttp.ClientSession,
    case: str,
    send_bad: Callable[[aiohttp.ClientWebSocketResponse], Any],
    message: str,
) -> None:
    offender = await open_ws(session, sidecar)
    bystander = await open_ws(session, sidecar)
    await subscribe(offender, "room")
    await subscribe(bystander, "room")
    await send_bad(offender)
    error = await next_frame(offender)
    assert error["event"] == "pusher:error"
    assert message in error["data"]["message"]
    assert error["data"]["code"] == 4300
    publish(sidecar, "room", "after", "still here")
    for ws in (offender, bystander):  # the offender stays connected too
        frame = await next_frame(ws)
        assert (frame["event"], frame["data"]) == ("after", "still here")
    await offender.close()
    await bystander.close()


async def test_frame_over_limit_closes_1009_others_unaffected(
    start_sidecar: Callable[..., SidecarProcess], session: aiohttp.ClientSession
) -> None:
    sidecar = start_sidecar(limits={"max_client_message_bytes": 4096})
    offender = await open_ws(session, sidecar)
    bystander = await open_ws(session, sidecar)
    await subscribe(bystander, "room")
    await offender.send_str(json.dumps({"event": "client-x", "channel": "a", "data": "y" * 5000}))
    await expect_close(offender, 1009)
    publish(sidecar, "room", "after", "ok")
    assert (await next_frame(bystander))["data"] == "ok"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/app/unknown-key?protocol=7", 4001),
        ("/app/{key}", 4008),
        ("/app/{key}?protocol=6", 4007),
        ("/app/{key}?protocol=seven", 4007),
        ("/somewhere/else", 4005),
    ],
)
async def test_handshake_close_codes(
    sidecar: SidecarProcess, session: aiohttp.ClientSession, path: str, code: int
) -> None:
    url = f"wss://localhost:{sidecar.port}{path.format(key=sidecar.app['key'])}"
    async with session.ws_connect(url, ssl=tls_context(sidecar)) as ws:
        error = await next_frame(ws)
        assert error["event"] == "pusher:error"
        assert error["data"]["code"] == code
        await expect_close(ws, code)


async def test_refused_origin_gets_403_before_upgrade(
    sidecar: SidecarProcess, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await session.ws_connect(
            sidecar.ws_url(), ssl=tls_context(sidecar), origin="https://evil.example"
        )
    assert info.value.status == 403
    ws = await open_ws(session, sidecar, origin=f"https://localhost:{sidecar.port}")
    await ws.close()


async def test_pusher_ping_gets_pong(
    sidecar: SidecarProcess, session: aiohttp.ClientSession
) -> None:
    ws = await open_ws(session, sidecar)
    await ws.send_json({"event": "pusher:ping", "data": {}})
    assert (await next_frame(ws))["event"] == "pusher:pong"
    await ws.close()


async def test_server_pings_then_closes_4201_without_pong(
    start_sidecar: Callable[..., SidecarProcess], session: aiohttp.ClientSession
) -> None:
    sidecar = start_sidecar(limits={"activity_timeout": 1, "pong_timeout": 2})
    silent = await open_ws(session, sidecar)
    polite = await open_ws(session, sidecar)
    await subscribe(silent, "a")
    await subscribe(polite, "a")
    assert (await next_frame(silent, timeout=5))["event"] == "pusher:ping"
    assert (await next_frame(polite, timeout=5))["event"] == "pusher:ping"
    await polite.send_json({"event": "pusher:pong", "data": {}})
    await expect_close(silent, 4201)
    assert not polite.closed
    await polite.close()


async def test_idle_connection_without_subscriptions_closes_4202(
    start_sidecar: Callable[..., SidecarProcess], session: aiohttp.ClientSession
) -> None:
    sidecar = start_sidecar(limits={"idle_timeout": 1})
    idle = await open_ws(session, sidecar)
    busy = await open_ws(session, sidecar)
    await subscribe(busy, "a")
    await expect_close(idle, 4202)
    assert not busy.closed
    await busy.close()


async def test_slow_client_closed_4100_others_get_everything(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    sidecar = start_sidecar(limits={"send_queue_bytes": "1MiB"})
    ctx = tls_context(sidecar)
    # The slow client: a raw TLS socket with a tiny receive buffer that stops reading.
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", sidecar.port))
    reader, writer = await asyncio.open_connection(sock=raw, ssl=ctx, server_hostname="localhost")
    key = sidecar.app["key"]
    writer.write(
        (
            f"GET /app/{key}?protocol=7 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    # Masked client frame: subscribe to "firehose".
    payload = json.dumps({"event": "pusher:subscribe", "data": {"channel": "firehose"}}).encode()
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    await writer.drain()
    await reader.readuntil(b"subscription_succeeded")
    writer.transport.pause_reading()  # from here on, the slow client reads nothing

    async with aiohttp.ClientSession() as session:
        fast = await open_ws(session, sidecar, max_msg_size=0)
        await subscribe(fast, "firehose")
        chunk = "z" * 60_000
        count = 400  # 24 MB in all: far over the slow client's queue and socket buffers

        received = [0]

        def publish_all() -> None:
            with SidecarClient(sidecar.socket, app_id=sidecar.app["id"]) as client:
                for i in range(count):
                    # Paced by the fast client (at most 4 events, 240 KB, ahead of it): on a
                    # loaded machine an unpaced publisher can put even a reading client a queue
                    # behind, and this test is about the one that does not read at all.
                    while i - received[0] > 4:
                        time.sleep(0.001)
                    client.trigger("firehose", "chunk", f"{i}:{chunk}")

        publishing = asyncio.ensure_future(asyncio.to_thread(publish_all))
        for i in range(count):
            frame = await next_frame(fast, timeout=10)
            assert frame["data"].startswith(f"{i}:")
            received[0] = i + 1
        await publishing
        await fast.close()
    writer.transport.resume_reading()
    tail = await asyncio.wait_for(reader.read(), timeout=15)
    # The close frame with 4100 (0x1004) ends what the slow client gets.
    assert b"\x88" in tail and b"\x10\x04" in tail
    writer.close()
    lines = await sidecar.wait_for_log(
        lambda entry: entry.get("msg") == "connection closed" and entry.get("close_code") == 4100
    )
    assert len(lines) == 1


async def test_http_api_errors_are_json(sidecar: SidecarProcess) -> None:
    connector = aiohttp.UnixConnector(path=sidecar.socket)
    app_id = sidecar.app["id"]
    cases = [
        (f"/apps/{app_id}/events", b"{not json", 400, "body is not valid JSON"),
        (f"/apps/{app_id}/events", b'{"channel":"a","data":"x"}', 400, "name: required"),
        (f"/apps/{app_id}/events", b'{"channel":"a","name":"e"}', 400, "data: required"),
        (f"/apps/{app_id}/events", b'{"name":"e","data":"x"}', 400, "channel: required"),
        (f"/apps/{app_id}/batch_events", b'{"batch":[{"name":"e"}]}', 400, "batch[0].channel"),
        ("/apps/999/events", b'{"name":"e","data":"x","channel":"a"}', 404, "no app with id"),
        (f"/apps/{app_id}/nothing", b"{}", 404, "Not Found"),
    ]
    async with aiohttp.ClientSession(connector=connector) as session:
        for path, body, status, message in cases:
            async with session.post(f"http://sidecar{path}", data=body) as resp:
                assert resp.status == status, path
                assert resp.content_type == "application/json"
                assert message in (await resp.json())["error"]


async def test_payload_limit_is_413_json_and_configurable(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    sidecar = start_sidecar(
        apps=[{"id": "7", "key": "k7", "secret": "s" * 16, "max_payload_bytes": "1MiB"}]
    )
    with SidecarClient(sidecar.socket, app_id="7") as client:
        client.trigger("a", "fits", "x" * (1024 * 1024))
        with pytest.raises(Exception) as info:
            client.trigger("a", "too-big", "x" * (1024 * 1024 + 1))
    assert getattr(info.value, "status", None) == 413
    assert "over this app's limit of 1048576 bytes" in str(info.value)
    # Far over the limit: refused before the body is read, still JSON.
    connector = aiohttp.UnixConnector(path=sidecar.socket)
    async with aiohttp.ClientSession(connector=connector) as session:
        body = json.dumps({"name": "e", "channel": "a", "data": "x" * (3 * 1024 * 1024)})
        async with session.post("http://sidecar/apps/7/events", data=body) as resp:
            assert resp.status == 413
            assert "error" in await resp.json()


async def test_eight_megabytes_by_default(
    sidecar: SidecarProcess, session: aiohttp.ClientSession
) -> None:
    ws = await open_ws(session, sidecar, max_msg_size=0)
    await subscribe(ws, "big")
    payload = "y" * (8 * 1024 * 1024)
    publish(sidecar, "big", "blob", payload)
    frame = await next_frame(ws, timeout=20)
    assert frame["data"] == payload
    with pytest.raises(Exception) as info:
        publish(sidecar, "big", "blob", payload + "y")
    assert getattr(info.value, "status", None) == 413
    await ws.close()
