"""sidecar.observe.bad_input: one info line per bad input, rate-limited, every one counted."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sidecar.observe.bad_input import BadInputLog, peer_address
from sidecar.observe.snapshot import key


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sidecar.bad_input"]


def test_a_line_at_info_with_the_peer_and_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    log = BadInputLog(clock=Clock())
    log.report("request", "203.0.113.9", "malformed header")
    (line,) = lines(caplog)
    assert line.levelno == logging.INFO
    assert line.getMessage() == "bad input"
    assert (line.kind, line.peer, line.reason) == ("request", "203.0.113.9", "malformed header")  # type: ignore[attr-defined]
    assert line.exc_info is None


def test_past_the_rate_lines_are_held_back_and_summed_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    log = BadInputLog(per_second=3, clock=clock)
    for _ in range(10):
        log.report("frame", "192.0.2.1", "reserved bits set")
    assert len(lines(caplog)) == 3
    assert log.held_back == 7
    clock.now += 1.0
    log.report("frame", "192.0.2.1", "reserved bits set")
    messages = [r.getMessage() for r in lines(caplog)]
    assert messages == ["bad input"] * 3 + ["bad input lines held back", "bad input"]
    assert lines(caplog)[3].count == 7  # type: ignore[attr-defined]
    assert log.counts["frame"] == 11  # every one counted, logged or not


async def test_the_summary_comes_when_the_second_is_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    log = BadInputLog(per_second=1)
    log.report("upgrade", None, "a")
    log.report("upgrade", None, "a")
    await asyncio.sleep(1.1)
    assert [r.getMessage() for r in lines(caplog)][-1] == "bad input lines held back"
    assert log.held_back == 0


def test_counts_go_into_a_snapshot() -> None:
    log = BadInputLog(clock=Clock())
    log.report("upgrade", None, "x")
    counters: dict[object, float] = {}
    log.write(counters)
    assert counters[key("bad_input", kind="upgrade")] == 1
    assert counters[key("bad_input", kind="request")] == 0


class Transport:
    def __init__(self, peer: object) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.peer if name == "peername" else default


def test_peer_address() -> None:
    assert peer_address(Transport(("::1", 5, 0, 0))) == "::1"  # type: ignore[arg-type]
    assert peer_address(Transport(None)) is None  # type: ignore[arg-type]
    assert peer_address(None) is None
