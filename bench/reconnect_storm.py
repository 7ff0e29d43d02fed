"""A reconnect storm (issue 14, target 6): N TLS clients connecting at once, side by side.

    .venv/bin/python bench/reconnect_storm.py --servers sidecar,nchan --conns 10000 --runs 3

As after a restart: the server is up and idle, then `bench/client/wsload` opens all N TLS
connections at once (`--connect-batch N`: every handshake in flight together) and subscribes
each to one channel. Measured, per server and run:
  storm_s      from the start of the storm until every client is subscribed (wsload's
               connect_s: TCP connect, TLS handshake, upgrade, and for Pusher the welcome and
               subscription_succeeded)
  stall_max_ms the longest WebSocket ping round trip on a connection opened before the storm,
               pinged every --ping-interval: how long the server left a client unanswered
  stall_p99_ms the same, 99th percentile
  server_cpu_s the server's CPU (utime+stime of its process tree) during the storm
  us_per_conn  that CPU per connection
The server is pinned to CPU 0; wsload (niced, as in fanout.py) and the pinger to CPU 1. The
pinger measures from outside, so its figures include the client's own scheduling on CPU 1
(busy with N handshakes of its own): compare them side by side only.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fanout import CLIENT_CPU, LoadClient, Profiler, percentile
from bench.servers import KINDS, Server, cpu_seconds, require
from sidecar.tls.contexts import ensure_self_signed

PING_OPCODE, PONG_OPCODE = 0x9, 0xA


def subscribe_path(server: Server) -> str:
    args = server.subscribe_args()
    if "--path" in args:
        return args[args.index("--path") + 1]
    return args[args.index("--path-template") + 1].replace("%s", "probe")


class Pinger(threading.Thread):
    """One TLS WebSocket that pings the server every `interval` and times each pong."""

    def __init__(self, server: Server, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.rtts: list[float] = []
        self.failed: str | None = None
        self._stop_event = threading.Event()
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.sock.sendall(
            f"GET {subscribe_path(server)} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self._buffer = b""
        while b"\r\n\r\n" not in self._buffer:
            self._buffer += self._recv()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"pinger: no upgrade: {head[:200]!r}")

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the server")
        return data

    def _frame(self) -> tuple[int, bytes]:
        while True:
            if len(self._buffer) >= 2:
                opcode, length = self._buffer[0] & 0x0F, self._buffer[1] & 0x7F
                start = 2
                if length == 126:
                    start, length = 4, struct.unpack("!H", self._buffer[2:4])[0]
                elif length == 127:
                    start, length = 10, struct.unpack("!Q", self._buffer[2:10])[0]
                if len(self._buffer) >= start + length:
                    payload = self._buffer[start : start + length]
                    self._buffer = self._buffer[start + length :]
                    return opcode, payload
            self._buffer += self._recv()

    def run(self) -> None:
        sequence = 0
        try:
            while not self._stop_event.is_set():
                sequence += 1
                payload = struct.pack("!Q", sequence)
                mask = os.urandom(4)
                masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                sent = time.perf_counter()
                self.sock.sendall(bytes([0x80 | PING_OPCODE, 0x80 | len(payload)]) + mask + masked)
                while True:
                    opcode, data = self._frame()
                    if opcode == PONG_OPCODE and data == payload:
                        break
                self.rtts.append(time.perf_counter() - sent)
                self._stop_event.wait(self.interval)
        except (OSError, ConnectionError) as exc:
            self.failed = str(exc)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)
        self.sock.close()


def one(args: argparse.Namespace, kind: str, workdir: Path) -> dict[str, Any]:
    pair = ensure_self_signed(workdir.parent / "certs")
    extra = {"workers": args.workers} if kind.startswith("sidecar") else {}
    server = KINDS[kind](
        name=kind,
        workdir=workdir,
        tls=True,
        cert=pair.cert,
        key=pair.key,
        cpus=args.server_cpus,
        **extra,
    )
    server.start()
    client = None
    pinger = None
    try:
        time.sleep(0.5)
        pinger = Pinger(server, args.ping_interval)
        pinger.start()
        time.sleep(1.0)  # a second of quiet pings first: the floor
        quiet = len(pinger.rtts)
        pids = server.pids()
        cpu0 = cpu_seconds(pids)
        profiler = Profiler(args.profile, server, f"storm-{workdir.name}")
        client = LoadClient(server, args.conns, connect_batch=args.conns, connect_timeout=300)
        ready = client.ready()
        cpu = cpu_seconds(server.pids()) - cpu0
        profiler.stop()
        storm = pinger.rtts[quiet:]
        pinger.stop()
        if pinger.failed:
            raise RuntimeError(f"pinger: {pinger.failed}")
        return {
            "storm_s": ready["connect_s"],
            "stall_max_ms": max(storm, default=0.0) * 1000,
            "stall_p99_ms": percentile(storm, 0.99) * 1000 if storm else 0.0,
            "quiet_p99_ms": percentile(pinger.rtts[:quiet], 0.99) * 1000 if quiet else 0.0,
            "pings": len(storm),
            "server_cpu_s": cpu,
            "us_per_conn": cpu / args.conns * 1e6,
        }
    finally:
        if pinger is not None and pinger.is_alive():
            pinger.stop()
        if client is not None:
            client.close()
        server.stop()


METRICS = ["storm_s", "stall_max_ms", "stall_p99_ms", "quiet_p99_ms", "server_cpu_s", "us_per_conn"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", default="sidecar,nchan")
    parser.add_argument("--conns", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ping-interval", type=float, default=0.005, help="seconds")
    parser.add_argument("--workers", type=int, default=1, help="sidecar worker processes")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--profile", help="py-spy Sidecar during each storm into this directory")
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    kinds = [require(k) for k in args.servers.split(",") if k]
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="sidecar-storm-") as tmp:
        for run in range(args.runs):
            for kind in kinds:  # interleaved: drift on the machine hits every server alike
                result = one(args, kind, Path(tmp) / f"{kind}-{run}")
                results.setdefault(kind, []).append(result)
                print(f"run {run + 1}: {kind}: {json.dumps(result)}", file=sys.stderr, flush=True)
    print(
        f"\nReconnect storm: {args.conns} TLS clients at once, medians of {args.runs} runs "
        f"(min-max); server on CPU {args.server_cpus}, clients on CPU {CLIENT_CPU}.\n"
    )
    print("| server | " + " | ".join(METRICS) + " |")
    print("|" + " --- |" * (1 + len(METRICS)))
    for kind, runs in results.items():
        cells = []
        for metric in METRICS:
            values = [r[metric] for r in runs]
            med = statistics.median(values)
            cells.append(f"{med:.2f} ({min(values):.2f}-{max(values):.2f})")
        print(f"| {kind} | " + " | ".join(cells) + " |")
    print(f"\ncommand: python bench/reconnect_storm.py {' '.join(sys.argv[1:])}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
