"""Publish-acknowledgement latency over the Unix socket, with N subscribers connected.

    .venv/bin/python bench/ack_latency.py --subscribers 1000 --publishes 1000 --rate 100 --runs 3

Side by side in one run, each publishing with the same client (one kept-alive connection, one
publish at a time, at a fixed rate), each server's subscribers held by bench/client/wsload:
  floor        a bare aiohttp app on a Unix socket answering {} to the same POST: HTTP over a
               Unix socket in Python, which no aiohttp-based relay can beat;
  sidecar w1   the real `sidecar run`, one process (acknowledges, then fans out in slices);
  sidecar w2   two workers (the supervisor acknowledges; the workers fan out).
With --baseline, also the checkout $SIDECAR_BASELINE names, two workers, in the same runs.
Reports p50/p99/max of the acknowledgement, the p50 ratio to the floor, and how many deliveries
arrived (at 1,000 publishes/s to 5,000 subscribers no single machine of this size delivers
everything: the figure shows what the publisher sees while the relay is saturated).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fanout import LoadClient, marked
from bench.servers import (
    SidecarBaselineServer,
    SidecarServer,
    paced,
    require,
    unix_pusher_publisher,
    wait_unix,
)
from sidecar.tls.contexts import ensure_self_signed


def floor_server(path: str) -> None:
    from aiohttp import web

    async def events(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"{}", content_type="application/json")

    app = web.Application()
    app.router.add_post("/apps/{app_id}/events", events)
    web.run_app(app, path=path, print=None)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def publish_at_rate(socket_path: str, publishes: int, rate: float, size: int) -> list[float]:
    publisher = unix_pusher_publisher(socket_path)
    for _ in range(20):  # warm the connection and the server's code paths
        publisher.publish("warmup", marked(size))
    latencies = []
    for _ in paced(publishes, rate):
        t0 = time.perf_counter()
        publisher.publish("ch0", marked(size))
        latencies.append(time.perf_counter() - t0)
    publisher.close()
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(latencies, 0.5) * 1e6,
        "p99": percentile(latencies, 0.99) * 1e6,
        "max": max(latencies) * 1e6,
    }


def run_floor(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    path = str(workdir / "floor.sock")
    proc = multiprocessing.Process(target=floor_server, args=(path,), daemon=True)
    proc.start()
    wait_unix(path)
    try:
        return summary(publish_at_rate(path, args.publishes, args.rate, args.size))
    finally:
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGTERM)
        proc.join()


def run_sidecar(
    args: argparse.Namespace, workdir: Path, workers: int, kind: type[SidecarServer] = SidecarServer
) -> dict[str, float]:
    pair = ensure_self_signed(workdir / "certs")
    server = kind(
        name=f"{kind.__name__}-w{workers}",
        workdir=workdir / f"{kind.__name__}-w{workers}",
        tls=False,
        cert=pair.cert,
        key=pair.key,
        cpus="0" if workers == 1 else "0,1",
        workers=workers,
    )
    server.start()
    client = None
    try:
        client = LoadClient(server, args.subscribers)
        client.ready()
        client.reset()
        result = summary(publish_at_rate(server.socket, args.publishes, args.rate, args.size))
        stats = client.wait_deliveries(args.publishes * args.subscribers, stall=3)
        result["delivered"] = stats["deliveries"] / (args.publishes * args.subscribers)
        result["closed"] = stats["closed"]
        return result
    finally:
        if client is not None:
            client.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--publishes", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100, help="publishes/s; 0: back to back")
    parser.add_argument("--size", type=int, default=100, help="bytes of event data")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--baseline", action="store_true", help="also $SIDECAR_BASELINE, 2 workers, side by side"
    )
    args = parser.parse_args()
    if args.baseline:
        require("sidecar-baseline")
    socket.setdefaulttimeout(60)
    os.sched_setaffinity(0, {1})

    names = ["floor (bare aiohttp)", "sidecar, 1 process", "sidecar, 2 workers"]
    if args.baseline:
        names.append("sidecar-baseline, 2 workers")
    runs: list[dict[str, dict[str, float]]] = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="sidecar-ack-") as tmp:
            workdir = Path(tmp)
            run = {
                names[0]: run_floor(args, workdir),
                names[1]: run_sidecar(args, workdir, 1),
                names[2]: run_sidecar(args, workdir, 2),
            }
            if args.baseline:
                run[names[3]] = run_sidecar(args, workdir, 2, SidecarBaselineServer)
            runs.append(run)
        print(f"run {i + 1}/{args.runs}: {runs[-1]}", file=sys.stderr, flush=True)

    rate = f"{args.rate:g}/s" if args.rate else "back to back"
    print(
        f"\nPublish acknowledgement over the Unix socket: {args.publishes} publishes at {rate}, "
        f"{args.size}-byte data, {args.subscribers} subscribers (wsload); median of "
        f"{args.runs} runs (min-max), microseconds.\n"
    )
    print("| server | p50 µs | p99 µs | max µs | p50 / floor | delivered | slow closes |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        cells = []
        for metric in ("p50", "p99", "max"):
            values = [r[name][metric] for r in runs]
            cells.append(f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})")
        ratio = statistics.median(r[name]["p50"] / r[names[0]]["p50"] for r in runs)
        delivered = [r[name].get("delivered") for r in runs]
        closed = [r[name].get("closed") for r in runs]
        d_cell = "-" if delivered[0] is None else f"{statistics.median(delivered):.0%}"
        c_cell = "-" if closed[0] is None else f"{statistics.median(closed):.0f}"
        print(f"| {name} | {' | '.join(cells)} | {ratio:.2f} | {d_cell} | {c_cell} |")
    print(f"\ncommand: python bench/ack_latency.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
