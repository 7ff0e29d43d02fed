"""Publish-acknowledgement latency over the Unix socket, with N subscribers connected.

    python bench/ack_latency.py --subscribers 1000 --publishes 1000 --runs 3

Side by side in one run, each measured with the same client (the package's SidecarClient,
one kept-alive connection, one publish at a time):
  floor      a bare aiohttp app on a Unix socket answering {} to the same POST: the cost of
             HTTP over a Unix socket in Python, which no relay built on aiohttp can beat;
  idle       the real `sidecar run` with no subscriber;
  loaded     the real `sidecar run` with N subscribers (wss, a separate process) on the channel.
Reports p50/p99/max of each and the ratio to the floor, the median over runs, and checks that
every subscriber received every event (lost deliveries). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar.publish.client import SidecarClient  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sidecar_command() -> list[str]:
    exe = Path(sys.executable).parent / "sidecar"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sidecar.cli"]


def wait_for_socket(path: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{path} not ready")


# The floor: a bare aiohttp server on a Unix socket ----------------------------------------


def floor_server(path: str) -> None:
    from aiohttp import web

    async def events(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"{}", content_type="application/json")

    app = web.Application()
    app.router.add_post("/apps/{app_id}/events", events)
    web.run_app(app, path=path, print=None, handle_signals=True)


# Subscribers: N wss connections in their own process -------------------------------------


def subscribers_process(
    url: str, cert: str, count: int, channel: str, ready: multiprocessing.Event, result_path: str
) -> None:
    import aiohttp

    async def run() -> list[int]:
        ctx = ssl.create_default_context(cafile=cert)
        received = [0] * count
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            sockets = []
            for start in range(0, count, 100):
                batch = await asyncio.gather(
                    *(
                        session.ws_connect(url, ssl=ctx)
                        for _ in range(start, min(count, start + 100))
                    )
                )
                sockets.extend(batch)
            for ws in sockets:
                await ws.receive_str()
                await ws.send_json({"event": "pusher:subscribe", "data": {"channel": channel}})
            for ws in sockets:
                await ws.receive_str()
            ready.set()

            async def count_events(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
                async for msg in ws:
                    if msg.type is aiohttp.WSMsgType.TEXT and '"event":"bench"' in msg.data:
                        received[i] += 1
                    elif msg.type is aiohttp.WSMsgType.TEXT and '"event":"bench-end"' in msg.data:
                        return

            await asyncio.gather(*(count_events(i, ws) for i, ws in enumerate(sockets)))
        return received

    try:
        import uvloop

        received = uvloop.run(run())
    except ImportError:
        received = asyncio.run(run())
    Path(result_path).write_text(json.dumps(received))


# Measuring ---------------------------------------------------------------------------------


def measure(
    socket_path: str, app_id: str, publishes: int, rate: float, payload: str
) -> list[float]:
    """Seconds from request to acknowledgement for each publish."""
    latencies = []
    interval = 1.0 / rate if rate > 0 else 0.0
    with SidecarClient(socket_path, app_id=app_id) as client:
        for _ in range(20):  # warm the connection and the server's code paths
            client.trigger("warmup", "bench", payload)
        next_at = time.perf_counter()
        for _ in range(publishes):
            if interval:
                next_at += interval
                delay = next_at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            t0 = time.perf_counter()
            client.trigger("bench", "bench", payload)
            latencies.append(time.perf_counter() - t0)
    return latencies


def percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6

    return {"p50": at(0.50), "p99": at(0.99), "max": ordered[-1] * 1e6}


class Sidecar:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.socket = str(workdir / "sidecar.sock")
        self.app = {"id": "1", "key": "bench-key", "secret": "bench-secret-0123"}
        config = {
            "listen": {"host": "127.0.0.1", "port": self.port},
            "http": {"port": None},
            "admin": {"port": None},
            "tls": {"mode": "self-signed", "dir": str(workdir / "certs")},
            "publish": {"socket": self.socket},
            "apps": [self.app],
            "log": {"level": "warning"},
        }
        (workdir / "sidecar.yaml").write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            [*sidecar_command(), "run", "--config", str(workdir / "sidecar.yaml")],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
        )
        wait_for_socket(self.socket)

    @property
    def cert(self) -> str:
        return str(self.workdir / "certs" / "localhost.crt")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def one_run(args: argparse.Namespace, workdir: Path) -> dict[str, dict[str, float]]:
    payload = "x" * args.payload
    results: dict[str, dict[str, float]] = {}

    floor_path = str(workdir / "floor.sock")
    floor = multiprocessing.Process(target=floor_server, args=(floor_path,), daemon=True)
    floor.start()
    wait_for_socket(floor_path)
    results["floor (bare aiohttp on a Unix socket)"] = percentiles(
        measure(floor_path, "1", args.publishes, args.rate, payload)
    )
    floor.terminate()
    floor.join()

    sidecar = Sidecar(workdir)
    try:
        results["sidecar, no subscriber"] = percentiles(
            measure(sidecar.socket, "1", args.publishes, args.rate, payload)
        )
        ready = multiprocessing.Event()
        result_path = str(workdir / "received.json")
        url = f"wss://localhost:{sidecar.port}/app/{sidecar.app['key']}?protocol=7"
        subs = multiprocessing.Process(
            target=subscribers_process,
            args=(url, sidecar.cert, args.subscribers, "bench", ready, result_path),
        )
        subs.start()
        if not ready.wait(120):
            raise RuntimeError("subscribers did not connect")
        loaded = percentiles(measure(sidecar.socket, "1", args.publishes, args.rate, payload))
        with SidecarClient(sidecar.socket, app_id="1") as client:
            client.trigger("bench", "bench-end", "")
        subs.join(120)
        received = json.loads(Path(result_path).read_text())
        expected = args.publishes * args.subscribers
        loaded["lost"] = expected - sum(received)
        results[f"sidecar, {args.subscribers} subscribers"] = loaded
    finally:
        sidecar.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--publishes", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0, help="publishes/s; 0: back to back")
    parser.add_argument("--payload", type=int, default=100, help="bytes of event data")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
            runs.append(one_run(args, Path(tmp)))
        print(f"run {i + 1}/{args.runs}: {json.dumps(runs[-1])}", file=sys.stderr)

    rate = f"{args.rate:g}/s" if args.rate else "back to back"
    print(
        f"\nPublish acknowledgement over the Unix socket: {args.publishes} publishes ({rate}), "
        f"{args.payload}-byte data, median of {args.runs} runs (min-max), microseconds.\n"
    )
    print("| server | p50 µs | p99 µs | max µs | p50 / floor | lost deliveries |")
    print("| --- | --- | --- | --- | --- | --- |")
    floor_name = next(iter(runs[0]))
    for name in runs[0]:
        cells = []
        for metric in ("p50", "p99", "max"):
            values = [r[name][metric] for r in runs]
            cells.append(f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})")
        ratio = statistics.median(r[name]["p50"] / r[floor_name]["p50"] for r in runs)
        lost = [r[name].get("lost") for r in runs]
        lost_cell = "-" if lost[0] is None else ", ".join(str(int(x)) for x in lost)
        print(f"| {name} | {' | '.join(cells)} | {ratio:.2f} | {lost_cell} |")
    print(
        f"\nmachine: {os.cpu_count()} cores; command: python bench/ack_latency.py "
        f"--subscribers {args.subscribers} --publishes {args.publishes} --rate {args.rate:g} "
        f"--payload {args.payload} --runs {args.runs}"
    )


if __name__ == "__main__":
    main()
