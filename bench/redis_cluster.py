"""Issue 11's cost: Sidecar with the Redis broker against the pipe broker, same machine, one run.

    bash bench/client/build.sh                  # once: the load client (bench/client/wsload)
    .venv/bin/python bench/redis_cluster.py     # the defaults below; --help for the knobs

Both brokers run the same `sidecar run` with --workers workers (default 2): "pipe" is the memory
broker, whose workers meet in the supervisor's pipe hub; "redis" adds `broker: {kind: redis}` and a
redis-server of its own. Servers (and redis-server) are pinned to --server-cpus, the load client
and this harness to the other CPU, as in bench/fanout.py, whose machinery this reuses. Phases,
each on freshly started servers, pipe then redis:
  cpu   --subscribers (5,000) on one channel, about --deliveries deliveries with 4 publishes in
        flight over the Unix socket: server CPU µs per delivery (the node's process tree; with
        Redis also counting redis-server's), deliveries/s
  ack   --ack-subscribers on one channel, --ack-events publishes at --ack-rate (1,000/s) from one
        publisher: acknowledgement p50/p99, publish-to-delivery p50 (the added latency is the
        difference of the p50s)
  rate  publishes spread over every node's Unix socket at rising rates (--rates), --step-seconds
        each, --rate-subscribers in all, each publisher thread waiting for its acknowledgement:
        the highest rate the nodes took with every event reaching every subscriber, until a
        step falls short of its rate or loses one (redis: three nodes sharing the subscribers;
        pipe: one node holding them all)
Prints a table of both brokers, their ratio and the issue's target, then the command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fanout import LoadClient, marked, measure_latency, measure_throughput
from bench.servers import Publisher, SidecarServer, cpu_seconds, paced
from sidecar.tls.contexts import ensure_self_signed
from tests.support.redis_server import RedisServer

BROKERS = ("pipe", "redis")


class Bench:
    """Starts the servers of one phase in a folder of its own."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.pair = ensure_self_signed(root / "certs")
        self.count = 0

    def folder(self, name: str) -> Path:
        self.count += 1
        path = self.root / f"{self.count:02d}-{name}"
        path.mkdir(parents=True)
        return path

    @contextlib.contextmanager
    def redis(self) -> Iterator[RedisServer]:
        server = RedisServer(self.folder("redis")).start()
        cpus = self.args.redis_cpus or self.args.server_cpus
        os.sched_setaffinity(server.pid, {int(c) for c in cpus.split(",")})
        try:
            yield server
        finally:
            server.close()

    @contextlib.contextmanager
    def nodes(self, broker: str, count: int = 1) -> Iterator[tuple[list[SidecarServer], list[int]]]:
        """`count` nodes of one broker, and the pids of what they share (redis-server)."""
        with contextlib.ExitStack() as stack:
            shared: list[int] = []
            config = None
            if broker == "redis":
                redis = stack.enter_context(self.redis())
                config = {"kind": "redis", "url": redis.url, "prefix": "bench", "heartbeat": 5}
                shared.append(redis.pid)
            servers = []
            for i in range(count):
                server = SidecarServer(
                    name=f"{broker}{i}",
                    workdir=self.folder(f"{broker}{i}"),
                    tls=False,
                    cert=self.pair.cert,
                    key=self.pair.key,
                    cpus=self.args.server_cpus,
                    workers=self.args.workers,
                    broker=config,
                )
                server.start()
                stack.callback(server.stop)
                servers.append(server)
            yield servers, shared


def cpu_phase(bench: Bench, broker: str) -> dict[str, float]:
    args = bench.args
    with bench.nodes(broker) as ([server], shared):
        client = LoadClient(server, args.subscribers)
        publishers = [server.publisher() for _ in range(4)]
        try:
            client.ready()
            time.sleep(1.0)
            shared_cpu = cpu_seconds(shared)
            result = measure_throughput(
                client, server, publishers, args.subscribers, args.deliveries, args.size
            )
            shared_cpu = cpu_seconds(shared) - shared_cpu
        finally:
            for publisher in publishers:
                publisher.close()
            client.close()
    events = max(4, args.deliveries // args.subscribers)
    got = events * args.subscribers - result["lost_throughput"]
    result["with_redis_us_per_delivery"] = (
        result["server_us_per_delivery"] + shared_cpu / max(got, 1) * 1e6
    )
    return result


def ack_phase(bench: Bench, broker: str) -> dict[str, float]:
    args = bench.args
    with bench.nodes(broker) as ([server], _):
        client = LoadClient(server, args.ack_subscribers)
        publisher = server.publisher()
        try:
            client.ready()
            for _ in range(50):  # warm the connection and the server's code paths
                publisher.publish("warmup", marked(args.size))
            return measure_latency(
                client,
                server,
                publisher,
                args.ack_subscribers,
                args.ack_events,
                args.ack_rate,
                args.size,
            )
        finally:
            publisher.close()
            client.close()


def rate_phase(bench: Bench, broker: str) -> dict[str, float]:
    """The highest of --rates at which every publish was accepted and every event delivered."""
    args = bench.args
    count = 3 if broker == "redis" else 1
    with bench.nodes(broker, count) as (servers, _):
        per_node = args.rate_subscribers // count
        clients = [LoadClient(server, per_node) for server in servers]
        publishers = [servers[i % count].publisher() for i in range(args.publishers)]
        best = 0.0
        try:
            for client in clients:
                client.ready()
            for rate in (float(r) for r in args.rates.split(",")):
                ok, detail = one_rate(clients, publishers, rate, per_node, args)
                print(f"  rate {broker} x{count} {rate:g}/s: {detail}", file=sys.stderr, flush=True)
                if not detail["all_delivered"]:
                    break
                # Publishers wait for each acknowledgement: what they reached is what the nodes
                # took, all of it delivered; short of the asked rate, the nodes are saturated.
                best = max(best, detail["achieved_per_s"])
                if not ok:
                    break
        finally:
            for publisher in publishers:
                publisher.close()
            for client in clients:
                client.close()
    return {"max_rate": best, "nodes": count}


def one_rate(
    clients: list[LoadClient],
    publishers: list[Publisher],
    rate: float,
    per_node: int,
    args: argparse.Namespace,
) -> tuple[bool, dict[str, Any]]:
    events = int(rate * args.step_seconds)
    share = rate / len(publishers)
    for client in clients:
        client.reset()

    def run(index: int) -> int:
        mine = len(range(index, events, len(publishers)))
        publisher, refused = publishers[index], 0
        for _ in paced(mine, share):
            try:
                publisher.publish("ch0", marked(args.size))
            except RuntimeError:
                refused += 1
        return refused

    started = time.perf_counter()
    with ThreadPoolExecutor(len(publishers)) as pool:
        refused = sum(pool.map(run, range(len(publishers))))
    took = time.perf_counter() - started
    stats = [client.wait_deliveries(events * per_node, stall=3.0) for client in clients]
    delivered = sum(s["deliveries"] for s in stats)
    achieved = events / took
    detail = {
        "achieved_per_s": round(achieved),
        "refused": refused,
        "delivered": f"{delivered}/{events * per_node * len(clients)}",
        "closed": sum(s["closed"] for s in stats),
        "lat_p99_ms": max(s["lat_us"]["p99"] for s in stats) / 1000,
    }
    detail["all_delivered"] = (
        refused == 0 and delivered == events * per_node * len(clients) and detail["closed"] == 0
    )
    ok = detail["all_delivered"] and achieved >= 0.95 * rate
    return ok, detail


ROWS = [
    # (phase, metric, label, target)
    ("cpu", "server_us_per_delivery", "server CPU µs/delivery, N={n} (node)", "≤ 1.2x"),
    ("cpu", "with_redis_us_per_delivery", "server CPU µs/delivery, N={n} (+ redis-server)", ""),
    ("cpu", "deliveries_per_s", "deliveries/s, N={n}", ""),
    ("cpu", "lost_throughput", "lost deliveries (cpu phase)", "0"),
    ("ack", "ack_p50_us", "publish ack p50 µs at {r}/s", ""),
    ("ack", "ack_p99_us", "publish ack p99 µs at {r}/s", "p99 < 2,000 µs"),
    ("ack", "lat_p50_ms", "publish-to-delivery p50 ms at {r}/s", "added < 1 ms"),
    ("ack", "lat_p99_ms", "publish-to-delivery p99 ms at {r}/s", ""),
    ("ack", "lost_latency", "lost deliveries (ack phase)", "0"),
    ("rate", "max_rate", "highest publishes/s taken, all delivered (pipe 1 node, redis 3)", ""),
]


def table(results: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace) -> str:
    lines = [
        "| measure | pipe | redis | redis / pipe | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for phase, metric, label, target in ROWS:
        pipe = results.get("pipe", {}).get(phase, {}).get(metric)
        redis = results.get("redis", {}).get(phase, {}).get(metric)
        if pipe is None and redis is None:
            continue
        ratio = f"{redis / pipe:.2f}x" if pipe and redis is not None else "-"
        if metric == "lat_p50_ms" and pipe is not None and redis is not None:
            ratio += f" (added {redis - pipe:+.2f} ms)"
        label = label.format(n=f"{args.subscribers:,}", r=f"{args.ack_rate:,.0f}")
        lines.append(f"| {label} | {cell(pipe)} | {cell(redis)} | {ratio} | {target} |")
    return "\n".join(lines)


def cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--phases", default="cpu,ack,rate")
    parser.add_argument("--brokers", default="pipe,redis")
    parser.add_argument("--workers", type=int, default=2, help="workers of every node")
    parser.add_argument("--subscribers", type=int, default=5000, help="cpu phase")
    parser.add_argument("--deliveries", type=int, default=500_000, help="cpu phase")
    parser.add_argument("--ack-subscribers", type=int, default=100)
    parser.add_argument("--ack-events", type=int, default=3000)
    parser.add_argument("--ack-rate", type=float, default=1000)
    parser.add_argument("--rate-subscribers", type=int, default=300, help="in all, rate phase")
    parser.add_argument("--rates", default="250,500,1000,2000,3000,4000,6000,8000")
    parser.add_argument("--step-seconds", type=float, default=3.0)
    parser.add_argument("--publishers", type=int, default=12, help="rate phase, threads")
    parser.add_argument("--size", type=int, default=100, help="event data bytes")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--redis-cpus", help="redis-server's CPUs (default: --server-cpus)")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.client_cpu})

    phases = {"cpu": cpu_phase, "ack": ack_phase, "rate": rate_phase}
    results: dict[str, dict[str, dict[str, float]]] = {b: {} for b in BROKERS}
    with tempfile.TemporaryDirectory(prefix="sidecar-redis-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        for phase in args.phases.split(","):
            for broker in args.brokers.split(
                ","
            ):  # side by side: the same minute of the same machine
                results[broker][phase] = phases[phase](bench, broker)
                line = json.dumps(results[broker][phase])
                print(f"{phase} {broker}: {line}", file=sys.stderr, flush=True)
    print(
        f"\nRedis broker against the pipe broker: {args.workers} workers per node, "
        f"{args.size}-byte events, servers on CPU {args.server_cpus}, redis-server on CPU "
        f"{args.redis_cpus or args.server_cpus}, client on CPU {args.client_cpu}; one run.\n"
    )
    print(table(results, args))
    print(f"\ncommand: python bench/redis_cluster.py {' '.join(sys.argv[1:])}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
