"""The socket-level fuzz test: attackers send mutated bytes to the real process while two
bystanders (pusher-js, and a WebSocket written by hand) must receive every event published
meanwhile, in order; afterwards the server is still up and its log has no traceback.

The attackers: request heads on the TLS port (mutations of a valid upgrade and of an API
request), WebSocket frames after a valid upgrade (mutations of Pusher messages and of frame
headers), and HTTP on the Unix socket (mutations of a publish). Seeded and reproducible: the
seed is printed, and `FUZZ_SEED=... FUZZ_SECONDS=60 pytest tests/e2e/test_e2e_fuzz.py -s` runs the
same attacks again, longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sidecar.api.client import SidecarClient
from tests.support.process import PusherJs, SidecarProcess
from tests.support.wire import (
    OPCODE_BINARY,
    OPCODE_CLOSE,
    OPCODE_PING,
    OPCODE_TEXT,
    RawSocket,
    client_context,
    frame,
    mutate,
    open_tls,
    publish_request,
    pusher_frame,
    read_pusher,
    upgrade_request,
)

pytestmark = pytest.mark.e2e

APP = {"id": "3", "key": "fuzz-key", "secret": "fuzz-secret-0123", "client_events": True}
SECONDS = float(os.environ.get("FUZZ_SECONDS", "12"))
EVENTS = int(os.environ.get("FUZZ_EVENTS", "120"))
SEED = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
# Whatever an attacker's socket does (reset, refused, cut mid-handshake) is its own business.
ATTACK_ERRORS = (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError, ValueError)

Attack = Callable[[SidecarProcess, random.Random], Awaitable[None]]


async def drain(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Whatever the server answers within `seconds` (an attacker may read or not)."""
    with contextlib.suppress(*ATTACK_ERRORS):
        return await asyncio.wait_for(reader.read(65536), seconds)
    return b""


def close(writer: asyncio.StreamWriter) -> None:
    if not writer.transport.is_closing():
        writer.transport.abort()


async def attack_heads(sidecar: SidecarProcess, rng: random.Random) -> None:
    """One connection: a mutated request head, sent in pieces, maybe a body; then gone."""
    templates = [
        upgrade_request(f"/app/{APP['key']}?protocol=7"),
        upgrade_request("/elsewhere"),
        b"GET /apps/3/channels?auth_key=fuzz-key&auth_signature=abc HTTP/1.1\r\n"
        b"Host: localhost\r\n\r\n",
        b"POST /apps/3/events HTTP/1.1\r\nHost: localhost\r\nContent-Length: 12\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n{"a": 1}\r\n',
    ]
    raw = mutate(rng.choice(templates), rng)
    reader, writer = await open_tls(sidecar.port, client_context(str(sidecar.cert)))
    try:
        cuts = sorted(rng.sample(range(len(raw) + 1), min(len(raw) + 1, rng.randint(0, 4))))
        start = 0
        for cut in [*cuts, len(raw)]:
            writer.write(raw[start:cut])
            start = cut
            await asyncio.sleep(rng.random() * 0.02)
        await drain(reader, rng.random() * 0.5)
    finally:
        close(writer)


async def attack_frames(sidecar: SidecarProcess, rng: random.Random) -> None:
    """A valid upgrade, then mutated frames: Pusher messages, control frames, bad headers."""
    sock = await RawSocket.open(sidecar.port, client_context(str(sidecar.cert)), APP["key"])
    channel = f"attack-{rng.randrange(100)}"
    valid = [
        pusher_frame("pusher:subscribe", {"channel": channel}),
        pusher_frame("pusher:subscribe", {"channel": "private-x", "auth": "fuzz-key:00"}),
        pusher_frame("pusher:unsubscribe", {"channel": channel}),
        pusher_frame("pusher:ping", {}),
        pusher_frame("client-x", {"a": 1}, channel),
        pusher_frame("pusher:signin", {"auth": "x", "user_data": "{}"}),
        frame(OPCODE_PING, b"ping"),
        frame(OPCODE_BINARY, rng.randbytes(rng.randint(0, 200))),
        frame(OPCODE_TEXT, b'{"event":"pusher:subscribe","data":', fin=False)
        + frame(0x0, b'{"channel":"' + channel.encode() + b'"}}'),
        frame(OPCODE_CLOSE, (1000).to_bytes(2, "big")),
    ]
    try:
        for _ in range(rng.randint(1, 30)):
            data = rng.choice(valid)
            sock.send(mutate(data, rng) if rng.random() < 0.7 else data)
            if rng.random() < 0.3:
                await drain(sock.reader, 0.01)
        await drain(sock.reader, rng.random() * 0.2)
    finally:
        sock.abort()


async def attack_unix(sidecar: SidecarProcess, rng: random.Random) -> None:
    """The publish socket's HTTP: mutated publishes (to channels nobody watches), pipelined."""
    body = {"name": "noise", "channel": f"attack-{rng.randrange(100)}", "data": '{"x":1}'}
    templates = [
        publish_request(APP["id"], body),
        publish_request(APP["id"], {**body, "channels": ["attack-1", "attack-2"]}),
        b"GET /apps/3/channels HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"POST /apps/3/batch_events HTTP/1.1\r\nContent-Length: 30\r\n\r\n"
        b'{"batch":[{"name":"n","data"}]}',
    ]
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(sidecar.socket), 5)
    try:
        for _ in range(rng.randint(1, 5)):
            writer.write(mutate(rng.choice(templates), rng))
        await drain(reader, rng.random() * 0.3)
    finally:
        close(writer)


ATTACKS: list[tuple[str, Attack]] = [
    ("heads", attack_heads),
    ("heads", attack_heads),
    ("frames", attack_frames),
    ("frames", attack_frames),
    ("unix", attack_unix),
]


async def attacker(
    name: str, attack: Attack, sidecar: SidecarProcess, seed: int, until: float
) -> dict[str, int]:
    rng = random.Random(seed)
    counts = {"rounds": 0, "errors": 0}
    while time.monotonic() < until:
        counts["rounds"] += 1
        try:
            await asyncio.wait_for(attack(sidecar, rng), 10)
        except ATTACK_ERRORS:
            counts["errors"] += 1
    return counts


async def publish_steadily(sidecar: SidecarProcess, channel: str, seconds: float) -> None:
    """EVENTS events, one every seconds/EVENTS, over the Unix socket (in a thread: blocking)."""
    interval = seconds / EVENTS
    with SidecarClient(sidecar.socket, app_id=APP["id"]) as client:
        for seq in range(EVENTS):
            await asyncio.to_thread(client.trigger, channel, "fuzz-seq", {"seq": seq})
            await asyncio.sleep(interval)


async def raw_bystander(sidecar: SidecarProcess, channel: str) -> list[int]:
    """A hand-written WebSocket on the same channel: every seq it receives, in order."""
    sock = await RawSocket.open(sidecar.port, client_context(str(sidecar.cert)), APP["key"])
    await sock.subscribe(channel)
    seen: list[int] = []
    try:
        while len(seen) < EVENTS:
            message = await asyncio.wait_for(read_pusher(sock.reader), SECONDS + 30)
            if message.get("event") == "pusher:ping":
                sock.send(pusher_frame("pusher:pong", {}))
            elif message.get("event") == "fuzz-seq":
                seen.append(json.loads(message["data"])["seq"])
    finally:
        sock.abort()
    return seen


async def test_attackers_do_not_cost_a_bystander_an_event(
    start_sidecar: Callable[..., SidecarProcess], caplog: pytest.LogCaptureFixture
) -> None:
    # This process aborts TLS sockets by the thousand: asyncio warns about each one.
    caplog.set_level(logging.ERROR, logger="asyncio")
    print(f"\nFUZZ_SEED={SEED} FUZZ_SECONDS={SECONDS} FUZZ_EVENTS={EVENTS}")
    sidecar = start_sidecar(apps=[APP], log={"level": "info"})
    channel = f"bystander-{SEED}"
    driver = await PusherJs.start(sidecar.cert)
    try:
        driver.send(cmd="connect", id="by", key=APP["key"], options=sidecar.pusher_options())
        await driver.expect(lambda r: r.get("id") == "by" and r["type"] == "connected")
        driver.send(cmd="subscribe", id="by", channel=channel)
        await driver.expect(lambda r: r.get("id") == "by" and r["type"] == "subscribed")
        raw = asyncio.ensure_future(raw_bystander(sidecar, channel))
        await asyncio.sleep(0.5)  # the raw bystander subscribed before the first event

        until = time.monotonic() + SECONDS
        attackers = [
            attacker(name, attack, sidecar, SEED + i, until)
            for i, (name, attack) in enumerate(ATTACKS)
        ]
        results = await asyncio.gather(publish_steadily(sidecar, channel, SECONDS), *attackers)
        for (name, _), counts in zip(ATTACKS, results[1:], strict=True):
            print(f"attacker {name}: {counts}")
            assert counts["rounds"] > counts["errors"] / 2, f"{name} hardly got through: {counts}"

        events = await driver.expect(
            lambda r: r.get("id") == "by" and r["type"] == "event" and r["event"] == "fuzz-seq",
            timeout=30,
            count=EVENTS,
        )
        assert [e["data"]["seq"] for e in events] == list(range(EVENTS))
        assert await asyncio.wait_for(raw, 30) == list(range(EVENTS))
        # pusher-js never lost its connection (a reconnect would also have lost events)
        assert not [r for r in driver.reports if r.get("id") == "by" and r["type"] == "error"]
    finally:
        await driver.close()

    assert sidecar.proc is not None and sidecar.proc.poll() is None, "the server died"
    assert sidecar.stop() == 0
    assert "Traceback" not in sidecar.stdout(), f"seed {SEED}"
    tracebacks = []
    for line in sidecar.stderr().splitlines():
        # Every line is JSON: one line per event, no raw dump of what was sent.
        entry: dict[str, Any] = json.loads(line)
        if "Traceback" in line:
            tracebacks.append(entry)
    assert not tracebacks, f"seed {SEED}: a traceback in the log means a bug:\n{tracebacks[:3]}"
