"""What a TLS delivery costs in Python, against the least any Python loop can spend on it.

    .venv/bin/python bench/delivery_floor.py [--subscribers 500] [--events 20]
    .venv/bin/python bench/delivery_floor.py --opcodes

One process, no sockets: `--subscribers` server-side TLS connections (sidecar/batched_tls.py,
handshaken with in-memory clients) whose transport below TLS is a list's `append`. One event's
frame is handed to all of them, `--events` times, two ways, each counted under callgrind:

  sidecar  the relay's own path: FanoutQueue (direct writes, as at a sparse rate) ->
           Connection.direct_write -> the TLS protocol's record writer -> WriteBatch.flush
  floor    the least Python can do: one loop encrypting the frame for every connection, one loop
           reading each record out of its memory BIO; no check and no call of a Python function
           per delivery

Each count is split into OpenSSL's record (`SSLObject.write`, `_ssl`'s C wrapper included), the
read of the record out of the memory BIO, and the rest: the interpreter and what it calls. Left
out: the socket write (uvloop's, in the server under bench/instructions.py) and the kernel.
`--opcodes` counts instead the bytecodes each Python function runs per delivery on the sidecar
path (sys.settrace, no valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.instructions import VALGRIND
from sidecar.batched_tls import BatchedTLSProtocol
from sidecar.engine.connection import Connection
from sidecar.engine.fanout import FanoutQueue, FlushScheduler
from sidecar.engine.heartbeat import Heartbeat
from sidecar.protocol.frame_writer import text_frame
from sidecar.protocol.pusher import encode_event
from sidecar.tls.contexts import ensure_self_signed, server_context

# callgrind_annotate's names for the two C functions every delivery calls (inclusive counts).
RECORD = "_ssl__SSLSocket_write"
BIO_READ = "_ssl_MemoryBIO_read"


class ListTransport(asyncio.Transport):
    """Below TLS: what the batch writes is appended to a list (a C call, as uvloop's is)."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []
        self.write = self.out.append  # type: ignore[method-assign,assignment]

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class AppProtocol(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]


class Sink:
    """The FrameSink a Connection writes to (sidecar/edge/websocket.py's PusherSocket's part),
    with the writers PusherSocket picks (earlier code had fewer: the harness runs on it too)."""

    __slots__ = ("batched", "direct", "paused", "write")

    def __init__(self, transport: Any) -> None:
        self.paused = False
        tls = getattr(transport, "tls_protocol", None)
        self.batched = tls
        if tls is None:
            self.write = self.direct = getattr(transport, "write_record", transport.write)
        else:
            self.write, self.direct = tls.write_record, tls.direct

    async def wait_drained(self) -> None:
        pass

    def abort(self) -> None:
        pass


async def handshaken(
    loop: asyncio.AbstractEventLoop, server: ssl.SSLContext, client: ssl.SSLContext
) -> tuple[BatchedTLSProtocol, asyncio.Transport, ListTransport]:
    app = AppProtocol()
    waiter: asyncio.Future[None] = loop.create_future()
    tls = BatchedTLSProtocol(loop, app, server, waiter, None)
    below = ListTransport()
    tls.connection_made(below)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    peer = client.wrap_bio(incoming, outgoing, server_side=False)
    for _ in range(20):
        with contextlib.suppress(ssl.SSLWantReadError):
            peer.do_handshake()
        data = outgoing.read()
        if data:
            tls.get_buffer(len(data))[: len(data)] = data
            tls.buffer_updated(len(data))
        await asyncio.sleep(0)  # the batch writes the server's flight
        if below.out:
            incoming.write(b"".join(below.out))
            below.out.clear()
        if waiter.done():
            return tls, app.transport, below
    raise RuntimeError("the in-memory handshake did not finish")


def callgrind(*args: str) -> None:
    if os.environ.get("DELIVERY_FLOOR_COUNT"):
        subprocess.run(["callgrind_control", *args, str(os.getpid())], check=True)


async def run(path: str, subscribers: int, events: int, on: Callable[[], None]) -> int:
    """Hand `events` events to `subscribers` connections by `path`; `on()` before the counted
    ones. Returns the deliveries counted."""
    loop = asyncio.get_running_loop()
    certs = Path(tempfile.mkdtemp(prefix="delivery-floor-"))
    pair = ensure_self_signed(certs)
    server = server_context(pair.cert, pair.key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    links = [await handshaken(loop, server, client) for _ in range(subscribers)]
    shutil.rmtree(certs)
    frame = text_frame(encode_event("tick", "x" * 130, "bench"))
    written = [below.out for _, _, below in links]

    if path == "sidecar":
        scheduler = FlushScheduler(loop)
        fanout = FanoutQueue(loop)
        connections: dict[Connection, None] = {}
        for number, (_, transport, _) in enumerate(links):
            conn = Connection(
                f"1.{number}",
                "app",
                Sink(transport),
                scheduler,
                Heartbeat(0.0, 120.0, 30.0, 0.0),
                1 << 20,
                lambda code, reason: None,
            )
            conn.subscriptions.add("bench")
            connections[conn] = None
        tls = getattr(links[0][1], "tls_protocol", None)
        if tls is not None:  # as PusherSocket.open sets it
            fanout.written = tls.batch.add_written

        async def deliver() -> None:
            fanout.broadcast("bench", frame, connections, None)
            await fanout.wait_empty()
            await asyncio.sleep(0)  # the batch's flush

    else:
        # asyncio's SSLProtocol keeps its BIO in a private attribute that typeshed does not declare.
        targets = [(tls._encrypt, tls._outgoing) for tls, _, _ in links]  # type: ignore[attr-defined]
        sent: list[bytes] = []

        async def deliver() -> None:
            for encrypt, _ in targets:
                encrypt(frame)
            for _, outgoing in targets:
                sent.append(outgoing.read())
            sent.clear()

    async def event(send: Callable[[], Awaitable[None]]) -> None:
        await send()
        for out in written:
            out.clear()

    for _ in range(3):  # warm
        await event(deliver)
    on()
    for _ in range(events):
        await event(deliver)
    return subscribers * events


def child(args: argparse.Namespace) -> None:
    """Under valgrind: instrumentation off until the counted events, then one dump."""

    def on() -> None:
        callgrind("-i", "on")
        callgrind("-z")

    uvloop.run(run(args.child, args.subscribers, args.events, on))
    callgrind("-d", "counted")


def inclusive(dump: Path) -> dict[str, int]:
    """Inclusive instructions per function name, from callgrind_annotate."""
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(dump)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    counts: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or not fields[0][0].isdigit():
            continue
        count = int(fields[0].replace(",", ""))
        if fields[-1] == "TOTALS":
            counts["total"] = count
            continue
        # "( 3.47%)" is two fields, "(44.73%)" one: the location follows the percentage.
        at = next(i for i, field in enumerate(fields) if field.endswith("%)")) + 1
        name = fields[at].rsplit(":", 1)[-1]
        counts[name] = max(counts.get(name, 0), count)
    return counts


def count(path: str, args: argparse.Namespace, folder: Path) -> dict[str, float]:
    out = folder / f"{path}.out"
    subprocess.run(
        [
            *VALGRIND,
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--child",
            path,
            f"--subscribers={args.subscribers}",
            f"--events={args.events}",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "DELIVERY_FLOOR_COUNT": "1"},
    )
    dumps = sorted(folder.glob(f"{path}.out.*"))
    counts = inclusive(dumps[-1])
    deliveries = args.subscribers * args.events
    record, read = counts.get(RECORD, 0), counts.get(BIO_READ, 0)
    return {
        "total": counts["total"] / deliveries,
        "record": record / deliveries,
        "bio_read": read / deliveries,
        "python": (counts["total"] - record - read) / deliveries,
    }


def opcodes(args: argparse.Namespace) -> None:
    """Bytecodes per delivery, per function, on the sidecar path."""
    per_function: collections.Counter[str] = collections.Counter()

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        name = f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_qualname}"

        def each(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "opcode":
                per_function[name] += 1
            return each

        return each

    uvloop.run(run("sidecar", args.subscribers, args.events, lambda: sys.settrace(trace)))
    sys.settrace(None)
    deliveries = args.subscribers * args.events
    print(f"bytecodes per delivery: {sum(per_function.values()) / deliveries:.1f}")
    for name, number in per_function.most_common(12):
        print(f"  {number / deliveries:7.1f}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--opcodes", action="store_true", help="bytecodes per function instead")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.opcodes:
        opcodes(args)
        return
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install valgrind")
    with tempfile.TemporaryDirectory(prefix="delivery-floor-") as folder:
        rows = {path: count(path, args, Path(folder)) for path in ("sidecar", "floor")}
    print(
        f"\nUser-space instructions per TLS delivery, in process, {args.subscribers} connections,"
        f" {args.events} events:\n"
    )
    print("| path | in all | OpenSSL record | BIO read | the rest (Python) |")
    print("| --- | --- | --- | --- | --- |")
    for path, row in rows.items():
        cells = " | ".join(f"{row[key]:,.0f}" for key in ("total", "record", "bio_read", "python"))
        print(f"| {path} | {cells} |")
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
