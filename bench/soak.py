"""The soak benchmark: hours of ordinary traffic plus issue 13's attacks, at a low rate. Flat
memory is the pass.

    .venv/bin/python bench/soak.py                                  # 30 minutes, 5,000 conns
    .venv/bin/python bench/soak.py --minutes 1 --connections 500    # a one-minute smoke check

One `sidecar run` (TLS, two workers, an upstream app behind it) carries:
  steady    the C load client (bench/client/wsload) holding most connections, subscribed to
            100 channels that get --publish-rate events/s over the Unix socket
  churn     --churn of the connections (Python) closing and reconnecting every 1-20 s
  slow      --slow clients on a channel of 64 KiB events that never read (cut with 4100,
            they come back)
  attacks   bad frames from a client that does not read, half-sent request heads, idle
            keep-alive HTTP connections, subscription and presence churn, requests pipelined
            behind an Upgrade, publishes whose data is small but large once JSON-escaped
Every --interval seconds (10) one JSON line: RSS of the server's process tree, its open file
descriptors, event-loop lag from outside (a pusher:ping's round trip on its own connection and
/healthz on the admin port, timed), delivery latency (publish to receipt on a dedicated
subscriber, and the load client's p50/p99), and what each attack and the clients saw. At the
end: a PNG chart beside the JSON lines, the RSS slope after warm-up, and the verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from bench.fanout import WSLOAD, marked
from bench.servers import (
    APP_ID,
    APP_KEY,
    APP_SECRET,
    free_port,
    process_tree,
    rss_bytes,
    unix_pusher_publisher,
    wait_port,
    wait_unix,
)
from bench.soak_chart import draw_chart, rss_slope
from bench.soak_traffic import (
    CHANNELS,
    SOCKET_ERRORS,
    Traffic,
    round_trip,
    wait_event,
)
from tests.support.wire import RawSocket, pusher_frame

BENCH = Path(__file__).resolve().parent
MiB = 1024 * 1024


@dataclass
class Soak:
    args: argparse.Namespace
    workdir: Path
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    upstream_port: int = field(default_factory=free_port)
    server: subprocess.Popen[bytes] | None = None
    wsload: subprocess.Popen[str] | None = None
    traffic: Traffic = field(init=False)

    def __post_init__(self) -> None:
        self.traffic = Traffic(
            port=self.port,
            cert=str(self.workdir / "certs" / "localhost.crt"),
            socket=self.socket,
            upstream_port=self.upstream_port,
            idle_cap=self.args.idle_cap,
        )

    @property
    def socket(self) -> str:
        return str(self.workdir / "publish.sock")

    # The server and the load client -----------------------------------------------------------

    def start_server(self) -> None:
        config = {
            "listen": {"host": "127.0.0.1", "port": self.port},
            "http": {"port": None},
            "admin": {"host": "127.0.0.1", "port": self.admin_port},
            "tls": {"mode": "self-signed", "dir": str(self.workdir / "certs")},
            "publish": {"socket": self.socket},
            "upstream": f"http://127.0.0.1:{self.upstream_port}",
            "apps": [
                {
                    "id": APP_ID,
                    "key": APP_KEY,
                    "secret": APP_SECRET,
                    "client_events": True,
                    # Small enough that the escaped-payload attack is cheap to send.
                    "max_payload_bytes": "1MiB",
                }
            ],
            "log": {"level": "warning"},
            # Every client of the soak comes from 127.0.0.1: the per-address cap (1,000) would
            # refuse most of them. The other limits stay at their defaults.
            "limits": {"max_connections_per_ip": 0},
            "workers": self.args.workers,
        }
        path = self.workdir / "sidecar.yaml"
        path.write_text(yaml.safe_dump(config))
        exe = Path(sys.executable).parent / "sidecar"
        base = [str(exe)] if exe.exists() else [sys.executable, "-m", "sidecar.cli"]
        self.server = subprocess.Popen(
            [*base, "run", "--config", str(path)],
            cwd=self.workdir,
            stdout=(self.workdir / "sidecar.out").open("wb"),
            stderr=(self.workdir / "sidecar.err").open("wb"),
        )
        wait_unix(self.socket)
        wait_port(self.port)
        wait_port(self.admin_port)

    def start_wsload(self, conns: int) -> None:
        if not WSLOAD.exists():
            subprocess.run(["sh", str(BENCH / "client" / "build.sh")], check=True)
        self.wsload = subprocess.Popen(
            [
                str(WSLOAD), "--host", "127.0.0.1", "--port", str(self.port), "--tls",
                "--sni", "localhost", "--conns", str(conns), "--mode", "pusher",
                "--path", f"/app/{APP_KEY}?protocol=7", "--channels", str(CHANNELS),
                "--prefix", "soak-", "--connect-timeout", "300",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )  # fmt: skip
        ready = json.loads(self.wsload.stdout.readline())  # type: ignore[union-attr]
        if ready.get("event") != "ready":
            raise RuntimeError(f"wsload: {ready}")

    def wsload_stats(self) -> dict[str, Any]:
        """Deliveries and latency since the last sample (the client's counters reset)."""
        assert self.wsload is not None and self.wsload.stdin and self.wsload.stdout
        self.wsload.stdin.write("stats\n")
        self.wsload.stdin.flush()
        stats = json.loads(self.wsload.stdout.readline())
        self.wsload.stdin.write("reset\n")
        self.wsload.stdin.flush()
        self.wsload.stdout.readline()
        return stats

    def stop(self) -> None:
        if self.wsload is not None and self.wsload.poll() is None:
            with contextlib.suppress(OSError):
                self.wsload.stdin.write("quit\n")  # type: ignore[union-attr]
                self.wsload.stdin.flush()  # type: ignore[union-attr]
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.wsload.wait(5)
            if self.wsload.poll() is None:
                self.wsload.kill()
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()

    # Steady traffic -------------------------------------------------------------------------
    def publish_steadily(self, stop: threading.Event) -> None:
        """--publish-rate small events/s to the load client's channels; 64 KiB to the slow."""
        publisher = unix_pusher_publisher(self.socket)
        big = "x" * 64 * 1024
        interval = 1.0 / self.args.publish_rate
        next_at = time.monotonic()
        i = 0
        while not stop.is_set():
            try:
                publisher.publish(f"soak-{i % CHANNELS}", marked(100))
                if i % max(1, int(self.args.publish_rate / 2)) == 0:
                    publisher.publish("soak-slow", big)
                self.traffic.counters.add("published")
            except (OSError, RuntimeError):
                self.traffic.counters.add("publish_failed")
            i += 1
            next_at += interval
            stop.wait(max(0.0, next_at - time.monotonic()))

    # Sampling -------------------------------------------------------------------------------

    async def sample_forever(self, out: Path, started: float) -> list[dict[str, Any]]:
        lag_socket = await RawSocket.open(self.port, self.traffic.tls(), APP_KEY)
        probe = await RawSocket.open(self.port, self.traffic.tls(), APP_KEY)
        await probe.subscribe("soak-probe")
        publisher = unix_pusher_publisher(self.socket)
        samples: list[dict[str, Any]] = []
        with out.open("w") as lines:
            while not self.traffic.stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.traffic.stopping.wait(), self.args.interval)
                sample = await self.sample(lag_socket, probe, publisher, started)
                samples.append(sample)
                lines.write(json.dumps(sample) + "\n")
                lines.flush()
                print(
                    f"t={sample['t']:6.0f}s rss={sample['rss_mib']:7.1f} MiB fds={sample['fds']:5d}"
                    f" ping={sample['ping_ms']:7.1f} ms healthz={sample['healthz_ms']:7.1f} ms"
                    f" delivery={sample['delivery_ms']:7.1f} ms idle={sample['idle_held']}",
                    flush=True,
                )
        lag_socket.abort()
        probe.abort()
        return samples

    async def sample(
        self, lag_socket: RawSocket, probe: RawSocket, publisher: Any, started: float
    ) -> dict[str, Any]:
        assert self.server is not None
        pids = process_tree(self.server.pid)
        fds = 0
        for pid in pids:
            with contextlib.suppress(OSError):
                fds += len(os.listdir(f"/proc/{pid}/fd"))
        ping_ms = await timed(round_trip(lag_socket, pusher_frame("pusher:ping", {}), "pong"))
        healthz_ms = await timed(self.healthz())
        sent_ns = time.monotonic_ns()
        delivery = asyncio.ensure_future(wait_event(probe, "bench"))
        await asyncio.to_thread(publisher.publish, "soak-probe", f"@@T{sent_ns}@@")
        delivery_ms = await timed(delivery, since_ns=sent_ns)
        stats = await asyncio.to_thread(self.wsload_stats)
        return {
            "t": round(time.monotonic() - started, 1),
            "rss_mib": round(rss_bytes(pids) / MiB, 2),
            "processes": len(pids),
            "fds": fds,
            "ping_ms": ping_ms,
            "healthz_ms": healthz_ms,
            "delivery_ms": delivery_ms,
            "wsload_p50_ms": stats["lat_us"]["p50"] / 1000,
            "wsload_p99_ms": stats["lat_us"]["p99"] / 1000,
            "wsload_deliveries": stats["deliveries"],
            "wsload_closed": stats["closed"],
            "wsload_close_codes": stats["close_codes"],
            "idle_held": sum(not w.transport.is_closing() for w in self.traffic.idle),
            "counters": dict(self.traffic.counters.values),
        }

    async def healthz(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.admin_port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            await reader.read()
        finally:
            writer.close()


async def timed(awaitable: Any, since_ns: int | None = None, timeout: float = 30) -> float:
    """Milliseconds until `awaitable` finished (since `since_ns` if given); -1 on a timeout."""
    start = since_ns if since_ns is not None else time.monotonic_ns()
    try:
        await asyncio.wait_for(awaitable, timeout)
    except (*SOCKET_ERRORS, ConnectionError):
        return -1.0
    return round((time.monotonic_ns() - start) / 1e6, 2)


async def run(args: argparse.Namespace, workdir: Path) -> int:
    soak = Soak(args, workdir)
    churners = int(args.connections * args.churn)
    steady = max(1, args.connections - churners - args.slow)
    upstream = await soak.traffic.upstream_app()
    soak.start_server()
    stop_publishing = threading.Event()
    tasks: list[asyncio.Future[Any]] = []
    samples: list[dict[str, Any]] = []
    publisher = threading.Thread(target=soak.publish_steadily, args=(stop_publishing,))
    try:
        print(f"sidecar on :{soak.port}, pid {soak.server.pid}; results in {workdir}")  # type: ignore[union-attr]
        await asyncio.to_thread(soak.start_wsload, steady)
        print(f"{steady} steady connections (wsload), {churners} churning, {args.slow} slow")
        publisher.start()
        tasks += [
            asyncio.ensure_future(soak.traffic.churner(random.Random(i))) for i in range(churners)
        ]
        tasks += [asyncio.ensure_future(soak.traffic.slow_client()) for _ in range(args.slow)]
        scale = args.attack_interval_scale
        attacks = [
            (30, "bad_frames", soak.traffic.bad_frames),
            (2, "half_head", soak.traffic.half_head),
            (2, "idle_keep_alive", soak.traffic.idle_keep_alive),
            (5, "subscription_churn", soak.traffic.subscription_churn),
            (5, "pipelined_upgrade", soak.traffic.pipelined_upgrade),
            (30, "escaped_payload", soak.traffic.escaped_payload),
        ]
        tasks += [
            asyncio.ensure_future(soak.traffic.every(seconds * scale, name, attack))
            for seconds, name, attack in attacks
        ]
        started = time.monotonic()
        asyncio.get_running_loop().call_later(args.minutes * 60, soak.traffic.stopping.set)
        samples = await soak.sample_forever(workdir / "soak.jsonl", started)
    finally:
        soak.traffic.stopping.set()
        stop_publishing.set()
        if publisher.is_alive():
            publisher.join()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in soak.traffic.idle:
            writer.transport.abort()
        alive = soak.server is not None and soak.server.poll() is None
        soak.stop()
        await soak.traffic.close_upstream(upstream)
    return report(args, workdir, samples, alive)


def report(
    args: argparse.Namespace, workdir: Path, samples: list[dict[str, Any]], alive: bool
) -> int:
    warmup = max(args.interval * 2, args.minutes * 60 * args.warmup)
    slope = rss_slope(samples, warmup)
    tracebacks = (workdir / "sidecar.err").read_text(errors="replace").count("Traceback")
    flat = slope is not None and slope <= args.max_slope
    verdict = "PASS: flat memory" if flat else "FAIL: memory grows"
    if slope is None:
        verdict = "NO VERDICT: too few samples after warm-up"
    chart = workdir / "soak.png"
    draw_chart(samples, chart, warmup, f"{verdict} ({slope_text(slope)})")
    last = samples[-1] if samples else {}
    print(json.dumps({"counters": last.get("counters", {}), "tracebacks_in_log": tracebacks}))
    print(f"server alive to the end: {alive}")
    print(
        f"RSS slope after {warmup:.0f} s warm-up: {slope_text(slope)}"
        f" (pass: <= {args.max_slope} MiB/h)"
    )
    print(f"chart: {chart}\nsamples: {workdir / 'soak.jsonl'}")
    print(verdict)
    return 0 if flat and alive else 1


def slope_text(slope: float | None) -> str:
    return "n/a" if slope is None else f"{slope:+.1f} MiB/h"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--churn", type=float, default=0.05, help="fraction that reconnects")
    parser.add_argument("--slow", type=int, default=20, help="clients that never read")
    parser.add_argument("--publish-rate", type=float, default=20, help="events/s")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--interval", type=float, default=10, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=0.2, help="fraction of the run ignored")
    parser.add_argument("--max-slope", type=float, default=20, help="MiB/h of RSS that passes")
    parser.add_argument("--idle-cap", type=int, default=500, help="idle HTTP connections held")
    parser.add_argument(
        "--attack-interval-scale", type=float, default=1.0, help="<1: attacks more often"
    )
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/soak-*")
    args = parser.parse_args()
    workdir = args.out or BENCH / "results" / time.strftime("soak-%Y%m%d-%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the server inherits it
    return asyncio.run(run(args, workdir))


if __name__ == "__main__":
    sys.exit(main())
