"""sidecar.server.control: the line beside the broker's pipe; reloads and console switches to a
worker (kept in the socket until it listens), its console items and `finished` back."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from sidecar.engine.broker.frames import meta_frame
from sidecar.server.control import CONTROL, ControlLine, SupervisorControl, WorkerControl
from tests.support.waiting import eventually


@dataclass
class AtSupervisor:
    finished: list[tuple[int, int]] = field(default_factory=list)
    items: list[tuple[int, list[Any]]] = field(default_factory=list)

    def end(self, worker_id: int, sock: socket.socket) -> SupervisorControl:
        return SupervisorControl(
            worker_id,
            sock,
            lambda w, n: self.finished.append((w, n)),
            lambda w, i: self.items.append((w, i)),
        )


@dataclass
class Line:
    seen: AtSupervisor
    supervisor: SupervisorControl
    worker: WorkerControl


@pytest.fixture
async def line() -> AsyncIterator[Line]:
    ours, theirs = socket.socketpair()
    seen = AtSupervisor()
    made = Line(seen, seen.end(3, ours), WorkerControl(theirs))
    await made.supervisor.open()
    yield made
    made.supervisor.close()
    made.worker.close()


def framed(message: object) -> bytes:
    return meta_frame(CONTROL, orjson.dumps(message))


def test_messages_are_whole_across_any_chunking() -> None:
    messages = [{"kind": "reload", "config": "x" * n} for n in (0, 1, 300, 70_000)]
    wire = b"".join(framed(m) for m in messages)
    for chunk in (1, 5, 4096, len(wire)):
        got: list[dict[str, Any]] = []
        line = ControlLine(got.append)
        for start in range(0, len(wire), chunk):
            line.data_received(wire[start : start + chunk])
        assert got == messages, chunk


def test_a_message_that_does_not_parse_is_skipped_and_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    got: list[dict[str, Any]] = []
    line = ControlLine(got.append)
    body = b"{not json"
    with caplog.at_level(logging.ERROR, "sidecar.cluster"):
        line.data_received(meta_frame(CONTROL, body) + framed([1, 2]))
        line.data_received(framed({"kind": "console", "on": True}))
    assert got == [{"kind": "console", "on": True}]
    assert len(caplog.records) == 2


async def test_a_reload_sent_while_the_worker_starts_waits_for_it(line: Line) -> None:
    line.supervisor.reload("log:\n  level: debug\n")
    line.supervisor.reload(None)  # certificates only
    await asyncio.sleep(0.05)  # the worker is still starting: nobody reads yet
    asked: list[str | None] = []
    await line.worker.listen(asked.append)
    await eventually(lambda: len(asked) == 2, 2.0)
    assert asked == ["log:\n  level: debug\n", None]


async def test_console_switches_reach_the_worker_and_its_items_come_back_tagged(
    line: Line,
) -> None:
    switched: list[bool] = []
    await line.worker.listen(lambda text: None, switched.append)
    line.supervisor.console(True)
    await eventually(lambda: switched == [True], 2.0)
    line.worker.console_items([{"kind": "connected", "socket_id": "1.1"}])
    await eventually(lambda: line.seen.items, 2.0)
    assert line.seen.items == [(3, [{"kind": "connected", "socket_id": "1.1"}])]
    line.supervisor.console(False)
    await eventually(lambda: switched == [True, False], 2.0)


async def test_finished_carries_the_count_of_publications_written(line: Line) -> None:
    await line.worker.listen(lambda text: None)
    line.worker.finished(17)
    await eventually(lambda: line.seen.finished, 2.0)
    assert line.seen.finished == [(3, 17)]


async def test_a_worker_without_a_console_ignores_the_switch(line: Line) -> None:
    asked: list[str | None] = []
    await line.worker.listen(asked.append)  # no admin listener: no console here
    line.supervisor.console(True)
    line.supervisor.reload(None)
    await eventually(lambda: asked == [None], 2.0)


async def test_sending_on_a_closed_line_is_no_error(line: Line) -> None:
    await line.worker.listen(lambda text: None)
    line.supervisor.close()
    await asyncio.sleep(0.05)
    line.supervisor.reload(None)
    line.worker.finished(0)  # the supervisor is gone: a stopping worker may still try
    line.worker.console_items([])


async def test_what_the_supervisor_sends_before_its_end_opens_is_kept_in_order() -> None:
    ours, theirs = socket.socketpair()
    seen = AtSupervisor()
    supervisor, worker = seen.end(0, ours), WorkerControl(theirs)
    supervisor.console(True)  # the worker is being started: its line is not open yet
    supervisor.reload("a: 1\n")
    await supervisor.open()
    asked: list[str | None] = []
    switched: list[bool] = []
    await worker.listen(asked.append, switched.append)
    await eventually(lambda: asked and switched, 2.0)
    assert (switched, asked) == ([True], ["a: 1\n"])
    supervisor.close()
    worker.close()
