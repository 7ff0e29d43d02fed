"""Presence, counts, client events, cache and terminate_connections across two worker processes:
sockets are placed on both workers on purpose (told apart by their socket_id prefix), and the
answers must not depend on which worker holds whom or which process answers a query."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Callable

import aiohttp
import pusher
import pytest

from sidecar.api.client import SidecarClient
from tests.support.cluster_socket import APP, SIGNER, Socket, open_socket
from tests.support.process import SidecarProcess
from tests.support.process_tree import worker_pids
from tests.support.pusher_server import server_library

pytestmark = pytest.mark.e2e


@pytest.fixture
def sidecar(start_sidecar: Callable[..., SidecarProcess]) -> SidecarProcess:
    return start_sidecar(workers=2, apps=[APP], limits={"max_presence_members": 2})


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def on_both_workers(
    session: aiohttp.ClientSession, sidecar: SidecarProcess, per_worker: int = 1
) -> tuple[list[Socket], list[Socket]]:
    """Open sockets until each of the two workers holds `per_worker`; close the extra ones."""
    by_worker: dict[str, list[Socket]] = {}
    for _ in range(200):
        sock = await open_socket(session, sidecar)
        held = by_worker.setdefault(sock.worker, [])
        if len(held) < per_worker:
            held.append(sock)
        else:
            await sock.ws.close()
        if len(by_worker) == 2 and all(len(s) == per_worker for s in by_worker.values()):
            first, second = by_worker.values()
            return first, second
    raise AssertionError("connections never reached both workers")


def signed_api(sidecar: SidecarProcess) -> pusher.Pusher:
    return server_library(sidecar, APP)


async def eventually(check: Callable[[], bool], timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    assert check()


async def test_presence_and_counts_agree_across_workers(
    sidecar: SidecarProcess, session: aiohttp.ClientSession
) -> None:
    ([ann], [bob]) = await on_both_workers(session, sidecar)
    assert (await ann.join("presence-room", "ann"))["ids"] == ["ann"]
    bob_view = await bob.join("presence-room", "bob")
    assert bob_view == {"ids": ["ann", "bob"], "hash": {"ann": None, "bob": None}, "count": 2}
    added = await ann.next_event("pusher_internal:member_added")
    assert json.loads(added["data"]) == {"user_id": "bob", "user_info": None}
    for sock in (ann, bob):
        await sock.subscribe("news")

    with SidecarClient(sidecar.socket, app_id=APP["id"]) as local:
        # The supervisor's answer (Unix socket) and a worker's (TLS) are the same.
        def counted() -> bool:
            reply = local.channels(info=["subscription_count"])
            return reply == {
                "channels": {
                    "presence-room": {"subscription_count": 2},
                    "news": {"subscription_count": 2},
                }
            }

        await eventually(counted)
        assert local.users("presence-room") == ["ann", "bob"]
    api = signed_api(sidecar)
    assert api.channels_info("presence-", ["user_count"]) == {
        "channels": {"presence-room": {"user_count": 2}}
    }
    assert api.channel_info("news", ["subscription_count"]) == {
        "occupied": True,
        "subscription_count": 2,
    }
    assert api.users_info("presence-room") == {"users": [{"id": "ann"}, {"id": "bob"}]}

    # The member limit (2) is the cluster's, not each worker's.
    ([carl], [dora]) = await on_both_workers(session, sidecar)
    for sock, user in ((carl, "carl"), (dora, "dora")):
        auth = SIGNER.authenticate("presence-room", sock.socket_id, {"user_id": user})
        await sock.send("pusher:subscribe", {"channel": "presence-room", **auth})
        refused = await sock.next_event("pusher:subscription_error")
        assert json.loads(refused["data"])["type"] == "LimitReached"

    await bob.ws.close()
    removed = await ann.next_event("pusher_internal:member_removed")
    assert json.loads(removed["data"]) == {"user_id": "bob"}
    await eventually(lambda: api.users_info("presence-room") == {"users": [{"id": "ann"}]})


async def test_client_events_and_cache_cross_workers(
    sidecar: SidecarProcess, session: aiohttp.ClientSession
) -> None:
    ([ann], [bob]) = await on_both_workers(session, sidecar)
    await ann.join("presence-chat", "ann")
    await bob.join("presence-chat", "bob")
    await ann.next_event("pusher_internal:member_added")
    await ann.send("client-wave", {"hi": 1}, channel="presence-chat")
    frame = await bob.next_event("client-wave")
    assert frame == {
        "event": "client-wave",
        "channel": "presence-chat",
        "data": '{"hi":1}',
        "user_id": "ann",
    }
    assert await ann.silent()

    signed_api(sidecar).trigger("cache-ticker", "price", {"v": 3})
    ([late_a], [late_b]) = await on_both_workers(session, sidecar)
    for sock in (late_a, late_b):
        _, cached = await sock.subscribe("cache-ticker")
        assert (cached["event"], json.loads(cached["data"])) == ("price", {"v": 3})


async def test_terminate_connections_reaches_every_worker(
    sidecar: SidecarProcess, session: aiohttp.ClientSession
) -> None:
    ([ann_a], [ann_b]) = await on_both_workers(session, sidecar)
    ([bob], _) = await on_both_workers(session, sidecar)
    for sock, user in ((ann_a, "ann"), (ann_b, "ann"), (bob, "bob")):
        await sock.send("pusher:signin", SIGNER.authenticate_user(sock.socket_id, {"id": user}))
        assert (await sock.next())["event"] == "pusher:signin_success"
    with SidecarClient(sidecar.socket, app_id=APP["id"]) as local:
        assert local.terminate_user_connections("ann") == {}
    for sock in (ann_a, ann_b):
        msg = await sock.ws.receive(timeout=10)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4009)
    await bob.send("pusher:ping", {})
    assert (await bob.next())["event"] == "pusher:pong"


async def test_a_dead_workers_members_leave_and_its_channels_vacate(
    sidecar: SidecarProcess, session: aiohttp.ClientSession
) -> None:
    ([ann], [bob]) = await on_both_workers(session, sidecar)
    await ann.join("presence-room", "ann")
    await bob.join("presence-room", "bob")
    await ann.next_event("pusher_internal:member_added")
    await ann.subscribe("alone-ann")
    await bob.subscribe("alone-bob")
    api = signed_api(sidecar)
    await eventually(lambda: {"alone-ann", "alone-bob"} <= set(api.channels_info()["channels"]))

    # One worker dies; ann and bob are on different workers, so exactly one of them goes.
    victim = worker_pids(sidecar)[0]
    os.kill(victim, signal.SIGKILL)
    # The dead worker's socket is cut; the other hears that its member left.
    ann_msg, bob_msg = await asyncio.gather(ann.ws.receive(timeout=15), bob.ws.receive(timeout=15))
    if ann_msg.type is aiohttp.WSMsgType.TEXT:
        kept_user, gone_user, removed = "ann", "bob", json.loads(ann_msg.data)
        assert bob_msg.type is not aiohttp.WSMsgType.TEXT
    else:
        kept_user, gone_user, removed = "bob", "ann", json.loads(bob_msg.data)
    assert removed["event"] == "pusher_internal:member_removed"
    assert json.loads(removed["data"]) == {"user_id": gone_user}
    await eventually(lambda: api.users_info("presence-room") == {"users": [{"id": kept_user}]})
    await eventually(lambda: f"alone-{gone_user}" not in set(api.channels_info()["channels"]))
    assert f"alone-{kept_user}" in api.channels_info()["channels"]
    # The restarted worker starts from the cluster's state: every answer agrees.
    await eventually(lambda: len(worker_pids(sidecar)) == 2 and victim not in worker_pids(sidecar))
    for _ in range(10):
        assert api.users_info("presence-room") == {"users": [{"id": kept_user}]}
        assert api.channel_info(f"alone-{kept_user}") == {"occupied": True}


async def test_one_process_gives_the_same_answers(
    start_sidecar: Callable[..., SidecarProcess], session: aiohttp.ClientSession
) -> None:
    sidecar = start_sidecar(workers=1, apps=[APP])
    ann, bob = await open_socket(session, sidecar), await open_socket(session, sidecar)
    await ann.join("presence-room", "ann")
    assert (await bob.join("presence-room", "bob"))["ids"] == ["ann", "bob"]
    await ann.next_event("pusher_internal:member_added")
    with SidecarClient(sidecar.socket, app_id=APP["id"]) as local:
        assert local.users("presence-room") == ["ann", "bob"]
        assert local.channel("presence-room", info=["user_count", "subscription_count"]) == {
            "occupied": True,
            "user_count": 2,
            "subscription_count": 2,
        }
        await bob.send("pusher:signin", SIGNER.authenticate_user(bob.socket_id, {"id": "bob"}))
        assert (await bob.next())["event"] == "pusher:signin_success"
        local.terminate_user_connections("bob")
    msg = await bob.ws.receive(timeout=10)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4009)
    removed = await ann.next_event("pusher_internal:member_removed")
    assert json.loads(removed["data"]) == {"user_id": "bob"}
    assert signed_api(sidecar).users_info("presence-room") == {"users": [{"id": "ann"}]}
