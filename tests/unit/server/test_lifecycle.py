"""sidecar.server.lifecycle: one deadline for a whole stop; every accepted event out before the
4200."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator

import pytest

from sidecar.engine import fanout
from sidecar.engine.broker.base import Publication
from sidecar.engine.relay import Relay
from sidecar.protocol.frame_writer import OP_TEXT
from sidecar.server.lifecycle import (
    Deadline,
    Step,
    StopAction,
    StopSequence,
    bounded,
    close_broker,
    drain_relay,
    reload_signal,
    stop_signal,
)
from tests.support.relay_clients import APP, MakeClient, parse_frames, subscribed


def test_deadline_counts_down_and_never_below_zero() -> None:
    now = [100.0]
    deadline = Deadline(10, clock=lambda: now[0])
    assert deadline.remaining() == 10
    now[0] = 104.0
    assert deadline.remaining() == 6
    assert deadline.remaining(keep=1.5) == 4.5
    now[0] = 200.0
    assert deadline.remaining() == 0 and deadline.remaining(keep=1) == 0


async def test_bounded_says_whether_it_finished() -> None:
    assert await bounded(asyncio.sleep(0), 1) is True
    assert await bounded(asyncio.sleep(10), 0.01) is False


class StuckBroker:
    async def close(self) -> None:
        await asyncio.sleep(3600)


async def test_a_broker_that_never_closes_costs_only_the_deadline() -> None:
    await asyncio.wait_for(close_broker(StuckBroker(), Deadline(0.05)), 2)  # type: ignore[arg-type]


async def test_every_event_handed_to_the_relay_reaches_each_client_before_its_4200(
    relay: Relay,
    make_client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Small slices: 20 events to 10 clients take 50 loop turns to hand over.
    monkeypatch.setattr(fanout, "DELIVER_SLICE", 4)
    clients = [make_client() for _ in range(10)]
    for client in clients:
        await subscribed(relay, client, "news")
    for i in range(20):
        relay.deliver(Publication.of(APP.id, ("news",), "tick", str(i)))
    # The fake sockets never go away (nothing calls relay.forget): the wait for them ends at
    # the deadline, after the close frames were asked for.
    await drain_relay(relay, Deadline(0.3))
    for client in clients:
        frames = parse_frames(b"".join(bytes(w) for w in client.sink.writes))
        events = [json.loads(p) for op, p in frames if op == OP_TEXT]
        ticks = [e["data"] for e in events if e.get("event") == "tick"]
        assert ticks == [str(i) for i in range(20)]
        assert client.closes == [(4200, "Relay restarting: reconnect")]


async def test_the_steps_run_in_order_each_waiting_for_all_its_actions() -> None:
    said: list[str] = []

    def at_once(name: str) -> StopAction:
        return lambda deadline: said.append(name)

    def awaited(name: str, delay: float) -> StopAction:
        async def act(deadline: Deadline) -> None:
            said.append(f"{name} begins")
            await asyncio.sleep(delay)
            said.append(f"{name} ends")

        return act

    stop = StopSequence()
    # Registered out of step order: the steps still run in theirs.
    stop.at(Step.LET_GO, at_once("let go"))
    stop.at(Step.HAND_OVER, at_once("mute"))
    stop.at(Step.HAND_OVER, awaited("broker", 0.02))
    stop.at(Step.SHUT, awaited("slow door", 0.05))
    stop.at(Step.SHUT, awaited("quick door", 0))
    await stop.run(Deadline(5))
    assert said == [
        "slow door begins",
        "quick door begins",
        "quick door ends",
        "slow door ends",  # the doors shut together; the next step waits for both
        "mute",
        "broker begins",
        "broker ends",
        "let go",
    ]


async def test_every_action_is_given_the_one_deadline_of_the_stop() -> None:
    seen: list[Deadline] = []
    stop = StopSequence()
    for step in Step:
        stop.at(step, seen.append)
    deadline = Deadline(5)
    await stop.run(deadline)
    assert seen == [deadline] * len(Step)


async def test_releases_run_last_registered_first_and_all_of_them_despite_an_error() -> None:
    said: list[str] = []

    async def sites() -> None:
        said.append("sites")

    def broken() -> None:
        said.append("broken")
        raise RuntimeError("a bug")

    stop = StopSequence()
    stop.on_release(lambda: said.append("socket file"))
    stop.on_release(sites)
    stop.on_release(broken)
    stop.on_release(lambda: said.append("certificates"))
    with pytest.raises(RuntimeError, match="a bug"):
        await stop.release()
    assert said == ["certificates", "broken", "sites", "socket file"]
    await stop.release()  # released once: nothing left
    assert len(said) == 4


@pytest.fixture
async def restore_signals() -> AsyncIterator[None]:
    """The handlers a test installs are the process's: put back what pytest had."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    loop = asyncio.get_running_loop()
    for sig, handler in saved.items():
        loop.remove_signal_handler(sig)
        signal.signal(sig, handler)


async def test_sigterm_stops_and_sighup_reloads_in_a_task(restore_signals: None) -> None:
    reloaded = asyncio.Event()

    async def reload() -> None:
        reloaded.set()

    stopping = stop_signal()
    reload_signal(reload)
    os.kill(os.getpid(), signal.SIGHUP)
    await asyncio.wait_for(reloaded.wait(), 2)
    assert not stopping.is_set()
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(stopping.wait(), 2)


async def test_a_worker_leaves_ctrl_c_to_its_supervisor(restore_signals: None) -> None:
    stopping = stop_signal(interrupt=False)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGINT)  # ignored: would raise KeyboardInterrupt otherwise
    await asyncio.sleep(0.05)
    assert not stopping.is_set()
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(stopping.wait(), 2)
