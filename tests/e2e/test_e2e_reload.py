"""SIGHUP on the real sidecar: the configuration file re-read without dropping a connection; a
broken file refused with one line naming the key, the running configuration kept."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from sidecar.api.client import SidecarClient
from tests.support.config_reload import sighup, write_config
from tests.support.process import SidecarProcess, free_port
from tests.support.process_tree import worker_pids

pytestmark = pytest.mark.e2e

APP = {"id": "7", "key": "reload-key", "secret": "reload-secret-0123456789"}
OTHER = {"id": "8", "key": "other-key", "secret": "other-secret-0123456789"}
ALLOWED = "https://app.example.com"
LATER = "https://admin.example.com"


async def open_socket(
    session: aiohttp.ClientSession,
    sidecar: SidecarProcess,
    origin: str,
    key: str = APP["key"],
    channel: str | None = "news",
) -> aiohttp.ClientWebSocketResponse:
    ctx = ssl.create_default_context(cafile=str(sidecar.cert))
    ws = await session.ws_connect(sidecar.ws_url(key), ssl=ctx, headers={"Origin": origin})
    established = json.loads(await ws.receive_str(timeout=5))
    assert established["event"] == "pusher:connection_established"
    if channel is not None:
        await ws.send_json({"event": "pusher:subscribe", "data": {"channel": channel}})
        await ws.receive_str(timeout=5)
    return ws


async def refused(session: aiohttp.ClientSession, sidecar: SidecarProcess, origin: str) -> int:
    """The status a WebSocket upgrade from `origin` is refused with (0: it was not)."""
    try:
        ws = await open_socket(session, sidecar, origin, channel=None)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 0


async def still_receives(ws: aiohttp.ClientWebSocketResponse, sidecar: SidecarProcess) -> None:
    with SidecarClient(sidecar.socket, app_id=APP["id"]) as client:
        client.trigger("news", "still-here", "yes")
    event = json.loads(await ws.receive_str(timeout=5))
    assert (event["event"], event["data"]) == ("still-here", "yes")


async def reload_lines(
    sidecar: SidecarProcess, msg: str, level: str, count: int
) -> list[dict[str, Any]]:
    """Wait for `count` log lines of one kind of reload outcome; those lines."""
    for _ in range(200):
        lines = [e for e in sidecar.log_lines() if e.get("msg") == msg and e.get("level") == level]
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} x {msg!r} ({level}) not logged: {sidecar.stderr()[-2000:]}")


@pytest.fixture
def reloadable(start_sidecar: Callable[..., SidecarProcess]) -> SidecarProcess:
    # Debug: each worker's own line says it applied the reload (the supervisor's is at info).
    return start_sidecar(
        workers=2,
        apps=[APP],
        cors={"allowed_origins": [ALLOWED]},
        log={"level": "debug"},
    )


async def test_a_new_allowed_origin_is_let_in_by_every_worker_and_no_one_is_dropped(
    reloadable: SidecarProcess,
) -> None:
    sidecar = reloadable
    async with aiohttp.ClientSession() as session:
        existing = await open_socket(session, sidecar, ALLOWED)
        assert await refused(session, sidecar, LATER) == 403
        # Also changed: settings that need a restart (named as such, and left as they run).
        write_config(
            sidecar,
            cors={"allowed_origins": [ALLOWED, LATER]},
            listen={"host": "127.0.0.1", "port": free_port()},
        )
        sighup(sidecar)
        (line,) = await reload_lines(sidecar, "config reloaded", "info", 1)
        await reload_lines(sidecar, "config reloaded", "debug", 2)  # each worker
        assert line["changed"] == ["cors.allowed_origins"]
        assert line["needs_restart"] == ["listen.port"]
        # The kernel spreads connections over both workers: every one lets the page in.
        for _ in range(8):
            assert await refused(session, sidecar, LATER) == 0
        await still_receives(existing, sidecar)
        await existing.close()
    assert sidecar.proc is not None and sidecar.proc.poll() is None


async def test_a_broken_file_is_refused_and_the_running_config_stays(
    reloadable: SidecarProcess,
) -> None:
    sidecar = reloadable
    async with aiohttp.ClientSession() as session:
        existing = await open_socket(session, sidecar, ALLOWED)
        write_config(
            sidecar,
            cors={"allowed_origins": [ALLOWED, LATER]},
            limits={"activity_timeout": "soon"},
        )
        sighup(sidecar)
        (line,) = await reload_lines(
            sidecar, "config reload refused; the running configuration stays", "error", 1
        )
        assert line["key"] == "limits.activity_timeout"
        assert line["error"].startswith("limits.activity_timeout: must be an integer")
        await asyncio.sleep(0.3)  # room for a worker to wrongly apply anything
        assert sidecar.proc is not None and sidecar.proc.poll() is None
        assert await refused(session, sidecar, LATER) == 403
        assert await refused(session, sidecar, ALLOWED) == 0
        await still_receives(existing, sidecar)
        assert not [e for e in sidecar.log_lines() if e.get("msg") == "config reloaded"]
        # Fixed, and signalled again: applied.
        write_config(sidecar, cors={"allowed_origins": [ALLOWED, LATER]})
        sighup(sidecar)
        await reload_lines(sidecar, "config reloaded", "debug", 2)
        for _ in range(4):
            assert await refused(session, sidecar, LATER) == 0
        await still_receives(existing, sidecar)
        await existing.close()


async def test_a_worker_restarted_after_a_reload_runs_the_reloaded_config_not_the_file(
    reloadable: SidecarProcess,
) -> None:
    """A worker that dies is started again with what the others run, even while the file on
    disk is being edited (here: broken)."""
    sidecar = reloadable
    write_config(sidecar, cors={"allowed_origins": [ALLOWED, LATER]})
    sighup(sidecar)
    await reload_lines(sidecar, "config reloaded", "debug", 2)
    sidecar.config_path.write_text("cors: {allowed_origins: [unclosed\n")
    before = worker_pids(sidecar)
    os.kill(before[0], signal.SIGKILL)
    for _ in range(200):
        now = worker_pids(sidecar)
        if len(now) == 2 and before[0] not in now:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"worker not restarted: {sidecar.stderr()[-2000:]}")
    await reload_lines(sidecar, "certificate loaded", "info", 3)  # the new one serves
    async with aiohttp.ClientSession() as session:
        for _ in range(8):
            assert await refused(session, sidecar, LATER) == 0


async def test_apps_added_and_removed_in_one_process(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    """A new app takes connections and publishes at once; a removed app's clients get 4200,
    and coming back, 4001 (pusher-js then stops); a changed secret is never logged."""
    sidecar = start_sidecar(workers=1, apps=[APP], cors={"allowed_origins": [ALLOWED]})
    async with aiohttp.ClientSession() as session:
        leaving = await open_socket(session, sidecar, ALLOWED)
        new_secret = "rotated-secret-9876543210"
        write_config(sidecar, apps=[{**OTHER, "secret": new_secret}])
        sighup(sidecar)
        (line,) = await reload_lines(sidecar, "config reloaded", "info", 1)
        assert line["apps"] == {"added": ["8"], "removed": ["7"]}
        msg = await leaving.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4200)
        ctx = ssl.create_default_context(cafile=str(sidecar.cert))
        again = await session.ws_connect(
            sidecar.ws_url(APP["key"]), ssl=ctx, headers={"Origin": ALLOWED}
        )
        error = json.loads(await again.receive_str(timeout=5))
        assert error["event"] == "pusher:error" and error["data"]["code"] == 4001
        arriving = await open_socket(session, sidecar, ALLOWED, key=OTHER["key"])
        with SidecarClient(sidecar.socket, app_id=OTHER["id"]) as client:
            client.trigger("news", "hello", "new app")
        event = json.loads(await arriving.receive_str(timeout=5))
        assert event["data"] == "new app"
        await arriving.close()
        await again.close()
    assert new_secret not in sidecar.stderr()
    assert APP["secret"] not in sidecar.stderr()
