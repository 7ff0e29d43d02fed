"""sidecar.api.client: the synchronous Python publisher, against a small aiohttp server."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sidecar.api.client import PublishError, SidecarClient


class FakeSidecar:
    """An aiohttp app on a Unix socket, in a thread with its own loop; records each request."""

    def __init__(self, path: str, keepalive_timeout: float = 75.0) -> None:
        self.path = path
        self.keepalive_timeout = keepalive_timeout
        self.requests: list[tuple[str, Any]] = []
        self.peers: set[int] = set()  # one entry per server-side connection seen
        self.reply: tuple[int, bytes, str] = (200, b"{}", "application/json")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.peers.add(id(request.transport))
        self.requests.append((request.path, await request.json()))
        status, body, content_type = self.reply
        return web.Response(status=status, body=body, content_type=content_type)

    async def _handle_get(self, request: web.Request) -> web.Response:
        self.requests.append(("GET", request.raw_path))
        status, body, content_type = self.reply
        return web.Response(status=status, body=body, content_type=content_type)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/apps/{app_id}/{kind}", self._handle)
        app.router.add_post("/apps/{app_id}/users/{user}/{kind}", self._handle)
        app.router.add_get("/{tail:.*}", self._handle_get)
        self._runner = web.AppRunner(app, keepalive_timeout=self.keepalive_timeout)
        await self._runner.setup()
        await web.UnixSite(self._runner, self.path).start()

    def start(self) -> FakeSidecar:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=5)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="sc-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def server(short_dir: Path) -> Iterator[FakeSidecar]:
    fake = FakeSidecar(str(short_dir / "sidecar.sock")).start()
    yield fake
    fake.stop()


@pytest.fixture
def client(server: FakeSidecar) -> Iterator[SidecarClient]:
    with SidecarClient(server.path, app_id="7", timeout=5) as c:
        yield c


def test_trigger_to_one_channel(server: FakeSidecar, client: SidecarClient) -> None:
    assert client.trigger("orders", "created", "plain text") == {}
    assert server.requests == [
        ("/apps/7/events", {"name": "created", "data": "plain text", "channel": "orders"})
    ]


def test_trigger_to_several_channels(server: FakeSidecar, client: SidecarClient) -> None:
    client.trigger(["a", "b"], "created", "x")
    client.trigger(iter(("c",)), "created", "y")  # any iterable of names
    assert [body for _, body in server.requests] == [
        {"name": "created", "data": "x", "channels": ["a", "b"]},
        {"name": "created", "data": "y", "channels": ["c"]},
    ]


def test_trigger_with_socket_id(server: FakeSidecar, client: SidecarClient) -> None:
    client.trigger("orders", "created", "x", socket_id="123.456")
    (_, body) = server.requests[0]
    assert body["socket_id"] == "123.456"


def test_trigger_without_socket_id_sends_none(server: FakeSidecar, client: SidecarClient) -> None:
    client.trigger("orders", "created", "x")
    assert "socket_id" not in server.requests[0][1]


def test_data_objects_are_json_encoded_to_a_string(
    server: FakeSidecar, client: SidecarClient
) -> None:
    client.trigger("orders", "created", {"id": 42, "tags": ["a"]})
    data = server.requests[0][1]["data"]
    assert isinstance(data, str)
    assert json.loads(data) == {"id": 42, "tags": ["a"]}


def test_trigger_batch(server: FakeSidecar, client: SidecarClient) -> None:
    events = [
        {"channel": "a", "name": "one", "data": {"n": 1}},
        {"channel": "b", "name": "two", "data": "raw", "socket_id": "1.2"},
    ]
    assert client.trigger_batch(events) == {}
    ((path, body),) = server.requests
    assert path == "/apps/7/batch_events"
    assert body["batch"][1] == {"channel": "b", "name": "two", "data": "raw", "socket_id": "1.2"}
    assert json.loads(body["batch"][0]["data"]) == {"n": 1}
    assert events[0]["data"] == {"n": 1}  # the caller's dicts are not changed


def test_several_calls_share_one_connection(server: FakeSidecar, client: SidecarClient) -> None:
    for n in range(3):
        client.trigger("orders", "e", str(n))
    assert len(server.requests) == 3
    assert len(server.peers) == 1


def test_a_400_raises_publish_error_with_status_and_message(
    server: FakeSidecar, client: SidecarClient
) -> None:
    server.reply = (400, b'{"error":"name: required, a non-empty string"}', "application/json")
    with pytest.raises(PublishError) as info:
        client.trigger("orders", "", "x")
    assert info.value.status == 400
    assert info.value.message == "name: required, a non-empty string"
    assert str(info.value) == "400: name: required, a non-empty string"


def test_the_connection_is_still_usable_after_an_error_reply(
    server: FakeSidecar, client: SidecarClient
) -> None:
    server.reply = (404, b'{"error":"no app"}', "application/json")
    with pytest.raises(PublishError):
        client.trigger("orders", "e", "x")
    server.reply = (200, b"{}", "application/json")
    assert client.trigger("orders", "e", "x") == {}


def test_a_non_json_error_reply_still_raises_publish_error(
    server: FakeSidecar, client: SidecarClient
) -> None:
    server.reply = (502, b"<html>Bad Gateway</html>", "text/html")
    with pytest.raises(PublishError) as info:
        client.trigger("orders", "e", "x")
    assert info.value.status == 502


def test_a_kept_alive_connection_closed_by_the_server_is_retried_once(short_dir: Path) -> None:
    server = FakeSidecar(str(short_dir / "s.sock"), keepalive_timeout=0.05).start()
    try:
        with SidecarClient(server.path, app_id="1") as client:
            client.trigger("orders", "e", "first")
            first_conn = client._conn
            time.sleep(0.5)  # the server closes the idle kept-alive connection
            dropped = []
            real_close = client.close

            def close() -> None:
                dropped.append(client._conn)
                real_close()

            client.close = close  # type: ignore[method-assign]
            assert client.trigger("orders", "e", "second") == {}
            assert dropped == [first_conn]  # the failure was seen, and the dead one dropped
            assert client._conn is not first_conn
        assert [body["data"] for _, body in server.requests] == ["first", "second"]
        assert len(server.peers) == 2
    finally:
        server.stop()


def test_a_missing_socket_raises_file_not_found(short_dir: Path) -> None:
    client = SidecarClient(str(short_dir / "absent.sock"), app_id="1")
    with pytest.raises(FileNotFoundError):
        client.trigger("orders", "e", "x")


def test_a_missing_socket_raises_and_the_client_recovers_once_it_is_up(
    short_dir: Path,
) -> None:
    path = str(short_dir / "later.sock")
    client = SidecarClient(path, app_id="1")
    with pytest.raises(FileNotFoundError):
        client.trigger("orders", "e", "x")
    server = FakeSidecar(path).start()
    try:
        assert client.trigger("orders", "e", "y") == {}
        assert [body["data"] for _, body in server.requests] == ["y"]
    finally:
        client.close()
        server.stop()


def test_a_fresh_connection_closed_without_reply_raises_instead_of_looping(
    short_dir: Path,
) -> None:
    path = str(short_dir / "rude.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    listener.settimeout(0.05)
    accepted = []
    stop = threading.Event()

    def rude() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(conn)
            conn.settimeout(2)
            conn.recv(65536)
            conn.close()  # reads the request, answers nothing

    thread = threading.Thread(target=rude, daemon=True)
    thread.start()
    try:
        client = SidecarClient(path, timeout=2)
        with pytest.raises(ConnectionError):
            client.trigger("orders", "e", "x")
        time.sleep(0.2)  # room for a retry to show up, if there were one
    finally:
        stop.set()
        thread.join(timeout=2)
        listener.close()
    assert len(accepted) == 1  # no retry on a connection that was fresh


def test_queries_and_terminate(server: FakeSidecar, client: SidecarClient) -> None:
    client.channels()
    client.channels(prefix="presence-", info=["user_count", "subscription_count"])
    client.channel("#server-to-user-ann", info=["subscription_count"])
    server.reply = (200, b'{"users": [{"id": "ann"}, {"id": "bob"}]}', "application/json")
    assert client.users("presence-room") == ["ann", "bob"]
    server.reply = (200, b"{}", "application/json")
    assert client.terminate_user_connections("ann") == {}
    assert server.requests == [
        ("GET", "/apps/7/channels"),
        ("GET", "/apps/7/channels?filter_by_prefix=presence-&info=user_count,subscription_count"),
        ("GET", "/apps/7/channels/%23server-to-user-ann?info=subscription_count"),
        ("GET", "/apps/7/channels/presence-room/users"),
        ("/apps/7/users/ann/terminate_connections", {}),
    ]
