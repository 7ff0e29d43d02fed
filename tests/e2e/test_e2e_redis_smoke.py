"""Two real `sidecar` nodes sharing a redis-server the test owns: the quick smoke test.

(The full multi-node and fault suite is tests/e2e/test_e2e_redis_*.py by the redis-tests work.)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from sidecar.api.client import PublishError, SidecarClient
from tests.support.browser_ws import next_frame, open_ws
from tests.support.observe import admin_block, get_json, wait_ready
from tests.support.process import SidecarProcess, base_config, free_port
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e

APP = {"id": "1", "key": "cluster-key", "secret": "cluster-secret"}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def node(
    start_sidecar: Callable[..., SidecarProcess], redis: RedisServer, folder: Path, workers: int
) -> SidecarProcess:
    return start_sidecar(
        folder,
        apps=[APP],
        workers=workers,
        admin=admin_block(),
        broker={"kind": "redis", "url": redis.url, "prefix": "smoke", "heartbeat": 1},
    )


async def readyz(sidecar: SidecarProcess) -> int:
    status, _ = await get_json(sidecar, "/readyz")
    return status


async def test_two_nodes_deliver_each_others_publications_and_refuse_while_redis_is_down(
    start_sidecar: Callable[..., SidecarProcess],
    redis_server: RedisServer,
    tmp_path: Path,
    session: aiohttp.ClientSession,
) -> None:
    a = node(start_sidecar, redis_server, tmp_path / "a", workers=1)
    b = node(start_sidecar, redis_server, tmp_path / "b", workers=2)
    ws = await open_ws(session, b)
    await ws.send_json({"event": "pusher:subscribe", "data": {"channel": "news"}})
    assert (await next_frame(ws))["event"] == "pusher_internal:subscription_succeeded"
    with SidecarClient(a.socket, app_id="1") as client:
        client.trigger("news", "created", {"id": 1})
    frame = await next_frame(ws)
    assert (frame["event"], frame["channel"], json.loads(frame["data"])) == (
        "created",
        "news",
        {"id": 1},
    )
    assert await readyz(a) == 200

    redis_server.kill()
    with SidecarClient(a.socket, app_id="1") as client, pytest.raises(PublishError) as info:
        client.trigger("news", "created", {"id": 2})
    assert info.value.status == 503
    assert await readyz(a) == 503
    assert not ws.closed  # clients stay connected

    redis_server.start()  # empty, as after a restart
    await wait_ready(a)
    await wait_ready(b)
    with SidecarClient(a.socket, app_id="1") as client:
        client.trigger("news", "created", {"id": 3})
    frame = await next_frame(ws, timeout=10)
    assert json.loads(frame["data"]) == {"id": 3}


def test_an_unreachable_redis_at_start_is_one_line_and_exit_2(tmp_path: Path) -> None:
    folder = tmp_path / "n"
    folder.mkdir()
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    process = SidecarProcess(
        folder, base_config(folder, broker={"kind": "redis", "url": url})
    ).launch()
    assert process.proc is not None
    assert process.proc.wait(timeout=20) == 2
    err = process.stderr().strip()
    assert "broker.url" in err and "127.0.0.1:" in err
    assert "hunter2" not in err
    assert len(err.splitlines()) == 1, err
