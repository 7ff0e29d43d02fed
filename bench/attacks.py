"""Issue 13's attacks on the browser port, with the server's memory and garbage collector measured.

The sidecar runs in one process (`workers: 1`) under a small probe: on SIGUSR1 it runs a full
collection and appends what it found to a JSON-lines file (objects the collector freed, their
types, the pause of a full collection over what is left, and the full collections the process
ran by itself since the last report), so a run can tell memory that comes back by reference
counting from memory waiting for a collection.

    .venv/bin/python bench/attacks.py bad-frames --connections 60 --frames 140000
    .venv/bin/python bench/attacks.py churn --cycles 30000 --concurrency 100 --tls
    .venv/bin/python bench/attacks.py gc-pause --connections 10000
    .venv/bin/python bench/attacks.py partial --connections 4000

`--tree DIR` runs the sidecar from another source tree (a checkout of the baseline: `git archive
BASE | tar -x -C DIR`) with the same virtualenv, for before/after figures in one session.
Every figure is printed as one JSON line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import APP_ID, APP_KEY, APP_SECRET, free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Runs the sidecar's command line with a SIGUSR1 handler that reports on a full collection.
PROBE = r"""
import collections, gc, json, os, signal, sys, time

full = {"count": 0, "ms_total": 0.0, "ms_max": 0.0}
started = [0.0]

def timed(phase, info):
    if info["generation"] != 2:
        return
    if phase == "start":
        started[0] = time.perf_counter()
        return
    ms = (time.perf_counter() - started[0]) * 1000
    full["count"] += 1
    full["ms_total"] = round(full["ms_total"] + ms, 1)
    full["ms_max"] = round(max(full["ms_max"], ms), 1)

def report(signum, frame):
    gc.callbacks.remove(timed)
    gc.set_debug(gc.DEBUG_SAVEALL)
    found = gc.collect()
    kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
    gc.garbage.clear()
    gc.set_debug(0)
    gc.collect()
    start = time.perf_counter()
    gc.collect()
    pause = time.perf_counter() - start
    line = {"found": found, "top": kinds.most_common(8), "pause_ms": round(pause * 1000, 1),
            "tracked": len(gc.get_objects()), "thresholds": gc.get_threshold(),
            "full_collections_before": dict(full)}
    full.update(count=0, ms_total=0.0, ms_max=0.0)
    gc.callbacks.append(timed)
    with open(os.environ["ATTACKS_GC_REPORT"], "a") as out:
        out.write(json.dumps(line) + "\n")

signal.signal(signal.SIGUSR1, report)
gc.callbacks.append(timed)
from sidecar.server import memory
if os.environ.get("ATTACKS_GC_THRESHOLDS"):
    memory.GC_THRESHOLDS = tuple(map(int, os.environ["ATTACKS_GC_THRESHOLDS"].split(",")))
from sidecar.cli import main
sys.exit(main(sys.argv[1:]))
"""


class Sidecar:
    """One sidecar process on loopback, plain or TLS, from `tree` (None: this checkout)."""

    def __init__(
        self, workdir: Path, tls: bool, tree: Path | None, gc_thresholds: str | None = None
    ) -> None:
        self.workdir = workdir
        self.tls = tls
        self.port = free_port()
        self.report = workdir / "gc.jsonl"
        config = {
            "listen": {"host": "127.0.0.1", "port": self.port},
            "http": {"port": None},
            "admin": None,
            "tls": {"mode": "self-signed" if tls else "off", "dir": str(workdir / "certs")},
            "publish": {"socket": str(workdir / "publish.sock")},
            "apps": [{"id": APP_ID, "key": APP_KEY, "secret": APP_SECRET}],
            "log": {"level": "warning"},
            "workers": 1,
        }
        path = workdir / "sidecar.yaml"
        path.write_text(yaml.safe_dump(config))
        env = dict(os.environ, ATTACKS_GC_REPORT=str(self.report))
        if tree is not None:
            env["PYTHONPATH"] = str(tree)
        if gc_thresholds:
            env["ATTACKS_GC_THRESHOLDS"] = gc_thresholds
        self.log = (workdir / "sidecar.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROBE, "run", "--config", str(path)],
            cwd=workdir,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def wait_idle(self, timeout: float = 300) -> float:
        """Until the server has worked through what it was sent (under 5% CPU for a second)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            before = self.cpu_seconds()
            time.sleep(1)
            if self.cpu_seconds() - before < 0.05:
                break
        return round(time.monotonic() - started, 1)

    def collect(self) -> dict[str, Any]:
        """A full collection in the server: what it freed and how long one takes."""
        done = len(self.report.read_text().splitlines()) if self.report.exists() else 0
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.report.exists():
                lines = self.report.read_text().splitlines()
                if len(lines) > done:
                    return json.loads(lines[-1])
            time.sleep(0.05)
        raise RuntimeError("no report from the server's collector")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# A WebSocket client, just enough of one ----------------------------------------------------


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """A masked client frame (the mask is all zeros: the payload goes as it is)."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        header = bytes((first, 0x80 | n))
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, n)
    return header + b"\0\0\0\0" + payload


CLOSE = client_frame(0x8, struct.pack("!H", 1000))
SUBSCRIBE = b'{"event":"pusher:subscribe","data":{"channel":"%s"}}'


async def open_socket(
    port: int, context: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket to /app/{key}, upgraded (101 read), nothing more read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    writer.write(
        (
            f"GET /app/{APP_KEY}?protocol=7 HTTP/1.1\r\nHost: localhost\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"upgrade refused: {head[:40]!r}")
    return reader, writer


def tls_client() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def bounded(count: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> None:
    """Run one(i) for i in range(count), at most `concurrency` at a time."""
    next_index = iter(range(count))

    async def lane() -> None:
        for i in next_index:
            await one(i)

    await asyncio.gather(*(lane() for _ in range(concurrency)))


def settle(server: Sidecar, seconds: float) -> float:
    time.sleep(seconds)
    return server.rss_mb()


# The attacks -------------------------------------------------------------------------------


async def told(reader: asyncio.StreamReader, code: bytes) -> bool:
    """Whether the first 64 KiB the server sent hold a close frame with `code` (2 bytes).

    An undercount: a connection the server already cut off (reset) has lost what it was sent.
    """
    received = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        while len(received) < 64 * 1024 and not reader.at_eof():
            received += await asyncio.wait_for(reader.read(64 * 1024), 0.5)
    # Server frames are unmasked; JSON text never holds the byte 0x88 (FIN + close).
    start = received.find(b"\x88")
    return start >= 0 and received[start + 2 : start + 4] == code


async def count_told(
    sockets: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], code: bytes
) -> int:
    return sum(await asyncio.gather(*(told(reader, code) for reader, _ in sockets)))


async def bad_frames(server: Sidecar, args: argparse.Namespace) -> dict[str, Any]:
    """Connections that send one-byte binary frames as fast as they can and never read."""
    context = tls_client() if server.tls else None
    figures: dict[str, Any] = {"rss_start_mb": server.rss_mb()}
    sockets = [await open_socket(server.port, context) for _ in range(args.connections)]
    frame = client_frame(0x2, b"x")
    burst = frame * 1000
    sent = [0] * len(sockets)

    async def flood(i: int) -> None:
        writer = sockets[i][1]
        for _ in range(args.frames // 1000):
            writer.write(burst)
            try:
                await asyncio.wait_for(writer.drain(), 5)
            except (TimeoutError, ConnectionError):
                return  # the server stopped reading (or closed): that is an answer too
            sent[i] += 1000

    await asyncio.gather(*(flood(i) for i in range(len(sockets))))
    figures["frames_sent"] = sum(sent)
    # The frames wait in the kernel's buffers: measure once the server has read them all.
    figures["seconds_to_idle"] = await asyncio.to_thread(server.wait_idle)
    figures["rss_attacking_mb"] = server.rss_mb()
    figures["closed_with_4101"] = await count_told(sockets, b"\x10\x05")
    for _, writer in sockets:
        writer.transport.abort()
    figures["rss_after_close_mb"] = await asyncio.to_thread(settle, server, args.settle)
    figures["gc"] = server.collect()
    figures["rss_after_gc_mb"] = server.rss_mb()
    return figures


async def churn(server: Sidecar, args: argparse.Namespace) -> dict[str, Any]:
    """Connect, upgrade, read the welcome, close with a close frame: `cycles` times."""
    context = tls_client() if server.tls else None
    figures: dict[str, Any] = {}

    async def cycle(_: int) -> None:
        reader, writer = await open_socket(server.port, context)
        await reader.readexactly(2)  # the start of pusher:connection_established
        writer.write(CLOSE)
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(reader.read(), 5)
        writer.transport.abort()

    # A first round warms the allocator and the process's one-time structures up.
    await bounded(min(1000, args.cycles), args.concurrency, cycle)
    await asyncio.to_thread(server.collect)
    figures["rss_start_mb"] = await asyncio.to_thread(settle, server, 1)
    started = time.monotonic()
    await bounded(args.cycles, args.concurrency, cycle)
    figures["seconds"] = round(time.monotonic() - started, 1)
    figures["rss_after_churn_mb"] = await asyncio.to_thread(settle, server, args.settle)
    figures["gc"] = server.collect()
    figures["rss_after_gc_mb"] = server.rss_mb()
    return figures


async def gc_pause(server: Sidecar, args: argparse.Namespace) -> dict[str, Any]:
    """The pause of a full collection with `connections` clients connected."""
    context = tls_client() if server.tls else None
    figures: dict[str, Any] = {"empty": server.collect()}
    sockets: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def one(i: int) -> None:
        reader, writer = await open_socket(server.port, context)
        if args.subscribe:
            channel = f"storm-{i % 100}"
            writer.write(client_frame(0x1, SUBSCRIBE % channel.encode()))
            await reader.readuntil(b"subscription_succeeded")
        sockets.append((reader, writer))

    started = time.monotonic()
    await bounded(args.connections, args.concurrency, one)
    figures["connect_seconds"] = round(time.monotonic() - started, 2)
    figures["rss_open_mb"] = await asyncio.to_thread(settle, server, args.settle)
    figures["open"] = [server.collect() for _ in range(3)]
    for _, writer in sockets:
        writer.transport.abort()
    figures["rss_after_close_mb"] = await asyncio.to_thread(settle, server, args.settle)
    figures["closed"] = server.collect()
    return figures


async def partial(server: Sidecar, args: argparse.Namespace) -> dict[str, Any]:
    """Connections that send all of a frame (64 KiB by default) but its last byte, then wait."""
    context = tls_client() if server.tls else None
    figures: dict[str, Any] = {"rss_start_mb": server.rss_mb()}
    unfinished = client_frame(0x1, b"x" * args.frame_bytes)[:-1]
    sockets: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def one(_: int) -> None:
        reader, writer = await open_socket(server.port, context)
        writer.write(unfinished)
        await writer.drain()
        sockets.append((reader, writer))

    await bounded(args.connections, args.concurrency, one)
    figures["rss_holding_mb"] = await asyncio.to_thread(settle, server, args.settle)
    figures["closed_with_1009"] = await count_told(sockets, b"\x03\xf1")
    for _, writer in sockets:
        writer.transport.abort()
    figures["rss_after_close_mb"] = await asyncio.to_thread(settle, server, args.settle)
    return figures


ATTACKS = {"bad-frames": bad_frames, "churn": churn, "gc-pause": gc_pause, "partial": partial}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("attack", choices=sorted(ATTACKS))
    parser.add_argument("--tls", action="store_true", help="the browser port over TLS")
    parser.add_argument("--tree", type=Path, help="run the sidecar from this source tree")
    parser.add_argument("--connections", type=int, default=60)
    parser.add_argument("--frames", type=int, default=140_000, help="bad-frames: per connection")
    parser.add_argument("--frame-bytes", type=int, default=64 * 1024 - 64, help="partial")
    parser.add_argument("--cycles", type=int, default=30_000, help="churn: connect/close cycles")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--subscribe", action="store_true", help="gc-pause: one channel each")
    parser.add_argument(
        "--gc-thresholds", help="override sidecar.server.memory.GC_THRESHOLDS: 700,10,10"
    )
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before reading RSS")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="attacks-") as folder:
        server = Sidecar(Path(folder), args.tls, args.tree, args.gc_thresholds)
        try:
            figures = asyncio.run(ATTACKS[args.attack](server, args))
        finally:
            server.stop()
    tree = str(args.tree) if args.tree else "this checkout"
    print(
        json.dumps(
            {
                "attack": args.attack,
                "tls": args.tls,
                "tree": tree,
                "gc_thresholds": args.gc_thresholds,
                **figures,
            }
        )
    )


if __name__ == "__main__":
    main()
