"""sidecar.api.gate: publishes refused with 503 once the process stops, on both paths."""

from __future__ import annotations

import json
import logging

import pytest
from pytest_aiohttp import AiohttpClient

from sidecar.api.fastpath import FastPublishProtocol
from sidecar.api.gate import SHUTTING_DOWN, PublishGate
from sidecar.api.handlers import PublishApi
from sidecar.config.apps import AppRegistry
from sidecar.engine.broker.changes import TerminateUser
from sidecar.engine.channel_state import ChannelState
from sidecar.http_glue import ApiError
from sidecar.server.prepare import publish_application
from tests.support.fastpath_fakes import (
    APP,
    EVENT,
    FakeBroker,
    FakeTransport,
    HttpFactory,
    parse_responses,
)
from tests.support.fastpath_fakes import post as raw_post


class RecordingBroker(FakeBroker):
    def __init__(self) -> None:
        super().__init__()
        self.announced: list[object] = []
        self.reported: list[object] = []

    def announce(self, changes: object) -> None:
        self.announced.append(changes)

    def report(self, app_id: str, event: object) -> None:
        self.reported.append((app_id, event))


def test_open_gate_passes_everything_through() -> None:
    broker = RecordingBroker()
    gate = PublishGate(broker)  # type: ignore[arg-type]
    gate.announce([TerminateUser("1", "u")])
    gate.report("1", {"name": "x"})  # what a gate does not guard is the broker's own
    assert broker.announced and broker.reported


def test_shut_gate_refuses_publishes_and_announcements_with_503() -> None:
    broker = RecordingBroker()
    gate = PublishGate(broker)  # type: ignore[arg-type]
    gate.shut()
    with pytest.raises(ApiError) as refused:
        gate.publish(object())  # type: ignore[arg-type]
    assert (refused.value.status, refused.value.message) == (503, SHUTTING_DOWN)
    with pytest.raises(ApiError):
        gate.announce([TerminateUser("1", "u")])
    assert broker.publications == [] and broker.announced == []


def api_behind(gate: PublishGate) -> PublishApi:
    return PublishApi(AppRegistry((APP,)), gate, signed=False, state=ChannelState())  # type: ignore[arg-type]


async def test_the_fast_path_answers_503_once_shut(caplog: pytest.LogCaptureFixture) -> None:
    broker = FakeBroker()
    gate = PublishGate(broker)  # type: ignore[arg-type]
    transport = FakeTransport()
    protocol = FastPublishProtocol(api_behind(gate), HttpFactory())
    protocol.connection_made(transport)
    protocol.data_received(raw_post("/apps/1/events"))
    gate.shut()
    with caplog.at_level(logging.INFO, logger="sidecar.api"):
        protocol.data_received(raw_post("/apps/1/events"))
    (first, second) = parse_responses(transport.written)
    assert first[0] == "HTTP/1.1 200 OK"
    assert second[0] == "HTTP/1.1 503 Service Unavailable"
    assert json.loads(second[2]) == {"error": SHUTTING_DOWN}
    assert len(broker.publications) == 1
    (line,) = [r for r in caplog.records if r.getMessage() == "api request refused"]
    assert (line.listener, line.status) == ("unix", 503)  # type: ignore[attr-defined]


async def test_the_aiohttp_path_answers_503_once_shut(aiohttp_client: AiohttpClient) -> None:
    broker = FakeBroker()
    gate = PublishGate(broker)  # type: ignore[arg-type]
    client = await aiohttp_client(publish_application(api_behind(gate)))
    batch = {"batch": [EVENT]}
    async with client.post("/apps/1/batch_events", json=batch) as response:
        assert response.status == 200
    gate.shut()
    async with client.post("/apps/1/batch_events", json=batch) as response:
        assert response.status == 503
        assert await response.json() == {"error": SHUTTING_DOWN}
    async with client.post("/apps/1/users/u1/terminate_connections") as response:
        assert response.status == 503
    assert len(broker.publications) == 1
