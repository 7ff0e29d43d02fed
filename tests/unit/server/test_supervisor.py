"""sidecar.server.supervisor: the supervisor's channel state, fed by the hub, is where webhooks come
from."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from sidecar.config.apps import AppRegistry
from sidecar.config.model import AppConfig, Config, LimitsConfig
from sidecar.engine.broker.changes import CountDelta, MemberJoin
from sidecar.engine.broker.pipe import WorkerBroker
from sidecar.server.prepare import Prepared
from sidecar.server.supervisor import Supervisor

APP = AppConfig(id="1", key="k", secret="secret-123")


def supervisor() -> Supervisor:
    config = Config(limits=LimitsConfig(max_presence_members=5))
    prepared = Prepared(config, AppRegistry((APP,)), False, None, None, [], None, None)
    return Supervisor(prepared, None, 2)


async def test_worker_changes_and_reports_reach_the_supervisors_observer() -> None:
    sup = supervisor()
    events: list[tuple[str, dict[str, Any]]] = []
    sup.state.on_event = lambda app_id, event: events.append((app_id, event))
    await sup.hub.start(lambda p: None, sup._changed, sup._reported)
    workers = []
    for worker_id in (0, 1):
        hub_end, worker_end = socket.socketpair()
        await sup.hub.attach(worker_id, hub_end)
        worker = WorkerBroker(worker_end)
        await worker.start(lambda p: None, lambda o, c: None)
        workers.append((worker, worker_end))
    workers[0][0].announce([CountDelta("1", "news", 2)])
    workers[1][0].announce([MemberJoin("1", "presence-a", "2.1", "ann")])
    workers[1][0].report("1", {"name": "cache_miss", "channel": "cache-x"})
    for _ in range(200):
        if len(events) == 4:
            break
        await asyncio.sleep(0.01)
    assert sorted(e["name"] for _, e in events) == [
        "cache_miss",
        "channel_occupied",
        "channel_occupied",
        "member_added",
    ]
    assert sup.state.members("1", "presence-a") == {"ann": None}
    assert sup.state.max_presence_members == 5

    workers[1][1].close()  # that worker dies: what it held is released, in order
    for _ in range(200):
        if len(events) == 6:
            break
        await asyncio.sleep(0.01)
    assert events[-2:] == [
        ("1", {"name": "member_removed", "channel": "presence-a", "user_id": "ann"}),
        ("1", {"name": "channel_vacated", "channel": "presence-a"}),
    ]
    assert sup.state.info("1", "news") is not None
    await sup.hub.close()
