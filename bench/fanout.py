"""The fan-out benchmark: Sidecar and its peers side by side, one run, one load client.

    bash bench/setup.sh                      # once: nchan, soketi, the C load client
    .venv/bin/python bench/fanout.py --servers sidecar,naive,nchan,soketi \\
        --subscribers 1000,5000 --tls off,on --runs 3

For each server, subscriber count and TLS setting: the server is started pinned to CPU 0, the
load client (bench/client/wsload, C) and this harness to CPU 1. Then:
  connect   N subscribers on one channel; RSS of the server's process tree before and after
  latency   events at a fixed rate (default 10/s), publish call to receipt on every subscriber
  throughput  about --deliveries deliveries with 4 publishes in flight: deliveries/s, server CPU
            seconds per delivery (from /proc), the client's own CPU per delivery, peak RSS
Results are medians over runs with min-max, written as a Markdown table (and JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import (
    KINDS,
    PeakRss,
    Publisher,
    Server,
    cpu_seconds,
    cpu_times,
    paced,
    require,
    rss_bytes,
)
from sidecar.tls.contexts import ensure_self_signed

BENCH = Path(__file__).resolve().parent
WSLOAD = BENCH / "client" / "wsload"
SERVER_CPU, CLIENT_CPU = "0", "1"


def marked(size: int) -> str:
    """Event data of `size` bytes carrying the publish time for the client to measure."""
    head = f"@@T{time.monotonic_ns()}@@"
    return head + "x" * max(0, size - len(head))


class LoadClient:
    def __init__(
        self,
        server: Server,
        conns: int,
        channels: int = 1,
        subs_per_conn: int = 1,
        connect_batch: int | None = None,
        connect_timeout: float | None = None,
    ):
        if not WSLOAD.exists():
            raise SystemExit("bench/client/wsload is missing: run bash bench/setup.sh")
        # Niced: when the publisher (this harness, same CPU) wakes for an acknowledgement, it
        # runs at once instead of waiting for the client to finish reading a broadcast.
        cmd = [
            "taskset",
            "-c",
            CLIENT_CPU,
            "nice",
            "-n",
            os.environ.get("WSLOAD_NICE", "10"),
            str(WSLOAD),
            "--host",
            "127.0.0.1",
            "--port",
            str(server.port),
            "--conns",
            str(conns),
            "--channels",
            str(channels),
            "--subs-per-conn",
            str(subs_per_conn),
            "--prefix",
            "ch",
            *server.subscribe_args(),
        ]
        if server.tls:
            cmd += ["--tls", "--sni", "localhost"]
        if connect_batch is not None:
            cmd += ["--connect-batch", str(connect_batch)]
        if connect_timeout is not None:
            cmd += ["--connect-timeout", str(connect_timeout)]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def read(self, timeout: float = 300) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("wsload exited")
        return json.loads(line)

    def ready(self) -> dict[str, Any]:
        report = self.read()
        if report.get("event") != "ready":
            raise RuntimeError(f"wsload: {report}")
        return report

    def command(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.read()

    def stats(self) -> dict[str, Any]:
        return self.command("stats")

    def reset(self) -> None:
        self.command("reset")

    def wait_deliveries(self, expected: int, stall: float = 10.0) -> dict[str, Any]:
        """Poll until `expected` deliveries arrived or nothing new came for `stall` seconds."""
        last, last_change = -1, time.monotonic()
        while True:
            stats = self.stats()
            if stats["deliveries"] >= expected:
                return stats
            if stats["deliveries"] != last:
                last, last_change = stats["deliveries"], time.monotonic()
            elif time.monotonic() - last_change > stall:
                return stats
            time.sleep(0.02)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_latency(
    client: LoadClient,
    server: Server,
    publishers: list[Publisher],
    conns: int,
    events: int,
    rate: float,
    size: int,
) -> dict[str, float]:
    """Events at `rate`, each published on an idle one of `publishers` from a thread of its own.

    A server that acknowledges only once it has fanned an event out (nchan) holds its publisher
    for that long: with one publisher, publishing one at a time, its offered rate fell to what
    it could take (4.6 events/s at 10,000 TLS subscribers, where the acknowledgement takes
    217 ms), while a server acknowledging at once got the full rate. `rate_achieved` says what
    was offered."""
    client.reset()
    before_client = client.stats()
    pids = server.pids()
    user0, system0 = cpu_times(pids)
    acks: list[float] = []
    idle: queue.SimpleQueue[Publisher] = queue.SimpleQueue()
    for publisher in publishers:
        idle.put(publisher)

    def publish(data: str) -> None:
        publisher = idle.get()
        t0 = time.perf_counter()
        publisher.publish("ch0", data)
        acks.append(time.perf_counter() - t0)
        idle.put(publisher)

    started = time.perf_counter()
    with ThreadPoolExecutor(len(publishers)) as pool:
        # Stamped at its slot: a wait for an idle publisher counts in the latency.
        futures = [pool.submit(publish, marked(size)) for _ in paced(events, rate)]
        offered = time.perf_counter() - started
        for future in futures:
            future.result()
    stats = client.wait_deliveries(events * conns)
    user, system = cpu_times(pids)
    user, system = user - user0, system - system0
    lat = stats["lat_us"]
    client_cpu = (stats["cpu_user_s"] + stats["cpu_sys_s"]) - (
        before_client["cpu_user_s"] + before_client["cpu_sys_s"]
    )
    return {
        "slow_server_us_per_delivery": (user + system) / max(stats["deliveries"], 1) * 1e6,
        # Its kernel part (system calls, the loopback): the rest is user space.
        "slow_server_sys_us_per_delivery": system / max(stats["deliveries"], 1) * 1e6,
        "slow_client_us_per_delivery": client_cpu / max(stats["deliveries"], 1) * 1e6,
        "lat_p50_ms": lat["p50"] / 1000,
        "lat_p95_ms": lat["p95"] / 1000,
        "lat_p99_ms": lat["p99"] / 1000,
        "lat_max_ms": lat["max"] / 1000,
        "ack_p50_us": percentile(acks, 0.5) * 1e6,
        "ack_p99_us": percentile(acks, 0.99) * 1e6,
        "rate_achieved": (events - 1) / offered if events > 1 else 0.0,
        "lost_latency": events * conns - stats["deliveries"],
    }


def measure_throughput(
    client: LoadClient,
    server: Server,
    publishers: list[Publisher],
    conns: int,
    deliveries: int,
    size: int,
    channels: int = 1,
    subs_per_conn: int = 1,
    batch: int = 1,
    delivery_rate: float = 0,
) -> dict[str, float]:
    """With `delivery_rate` (deliveries/s), publishes are paced to offer that rate instead of
    as fast as the server acknowledges: the cost of a delivery at the same load whatever the
    shape (one channel of 10,000 at 10 events/s, or 10,000 channels of 10 at 10,000/s)."""
    per_event = conns * subs_per_conn // channels  # subscribers of each channel
    events = max(4 * batch, deliveries // per_event // batch * batch)
    # Each publisher's publishes per second when paced (0: as fast as it goes).
    publisher_rate = delivery_rate / per_event / batch / len(publishers)
    client.reset()
    before_client = client.stats()
    pids = server.pids()
    sampler = PeakRss(pids, interval=0.05).__enter__()
    cpu0 = cpu_seconds(pids)
    t0 = time.perf_counter()

    def run(index: int) -> None:
        publisher = publishers[index]
        firsts = range(index * batch, events, len(publishers) * batch)
        if publisher_rate:  # staggered: the publishers take turns, not bursts of four
            time.sleep(index / publisher_rate / len(publishers))
        for i in paced(len(firsts), publisher_rate):
            first = firsts[i]
            if batch == 1:
                publisher.publish(f"ch{first % channels}", marked(size))
            else:
                items = [(f"ch{i % channels}", marked(size)) for i in range(first, first + batch)]
                publisher.publish_batch(items)

    with ThreadPoolExecutor(len(publishers)) as pool:
        list(pool.map(run, range(len(publishers))))
    expected = events * per_event
    stats = client.wait_deliveries(expected)
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(pids) - cpu0
    sampler.__exit__()
    got = stats["deliveries"]
    client_cpu = (stats["cpu_user_s"] + stats["cpu_sys_s"]) - (
        before_client["cpu_user_s"] + before_client["cpu_sys_s"]
    )
    return {
        "deliveries_per_s": got / elapsed,
        "server_us_per_delivery": cpu / max(got, 1) * 1e6,
        "client_us_per_delivery": client_cpu / max(got, 1) * 1e6,
        "peak_rss_mb": sampler.peak / 2**20,
        "lost_throughput": expected - got,
        "closed": stats["closed"],
    }


class Profiler:
    """py-spy on the server's processes for one phase (--profile DIR): a flame graph (SVG) and
    the collapsed stacks (.txt), for bench/profile_top.py. Nothing when DIR is not given."""

    def __init__(self, out: str | None, server: Server, label: str) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        if not out or not server.name.startswith("sidecar"):
            return
        Path(out).mkdir(parents=True, exist_ok=True)
        for pid in server.pids()[-1:]:  # the process that serves (a worker, with workers)
            for fmt, ext in (("flamegraph", "svg"), ("raw", "txt")):
                cmd = ["py-spy", "record", "--native", "-r", "100"]
                cmd += ["-f", fmt, "-o", f"{out}/{label}.{ext}", "--pid", str(pid)]
                exe = Path(sys.executable).parent / "py-spy"
                cmd[0] = str(exe) if exe.exists() else "py-spy"
                self.procs.append(
                    subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(2)  # SIGINT: py-spy writes its output and ends
        for proc in self.procs:
            proc.wait(30)


def one(args: argparse.Namespace, kind: str, conns: int, tls: bool, workdir: Path) -> dict:
    pair = ensure_self_signed(workdir / "certs")
    server_cls = KINDS[kind]
    # --workers: Sidecar's worker processes and nchan's (nginx worker_processes).
    extra = {"workers": args.workers} if kind.startswith("sidecar") or kind == "nchan" else {}
    server = server_cls(
        name=kind,
        workdir=workdir / kind,
        tls=tls,
        cert=pair.cert,
        key=pair.key,
        cpus=args.server_cpus,
        **extra,
    )
    server.start()
    result: dict[str, float] = {}
    client = None
    publishers: list[Publisher] = []
    try:
        time.sleep(0.5)
        rss_idle = rss_bytes(server.pids())
        client = LoadClient(server, conns, args.channels, args.subs_per_conn)
        ready = client.ready()
        time.sleep(1.0)
        rss_connected = rss_bytes(server.pids())
        result["connect_s"] = ready["connect_s"]
        result["connects_per_s"] = conns / max(ready["connect_s"], 1e-3)
        result["rss_after_connect_mb"] = rss_connected / 2**20
        result["kb_per_conn"] = (rss_connected - rss_idle) / conns / 1024
        publishers = [server.publisher() for _ in range(4)]
        label = f"{kind}-{conns}-{'tls' if tls else 'plain'}-{workdir.name.rsplit('-', 1)[1]}"
        if args.latency_events and args.channels == 1:
            profiler = Profiler(args.profile, server, f"{label}-latency")
            result.update(
                measure_latency(
                    client,
                    server,
                    publishers[: args.latency_publishers],
                    conns,
                    args.latency_events,
                    args.rate,
                    args.size,
                )
            )
            profiler.stop()
        if args.deliveries:
            profiler = Profiler(args.profile, server, f"{label}-saturated")
            result.update(
                measure_throughput(
                    client,
                    server,
                    publishers,
                    conns,
                    args.deliveries,
                    args.size,
                    args.channels,
                    args.subs_per_conn,
                    args.batch,
                    args.delivery_rate,
                )
            )
            profiler.stop()
    finally:
        for publisher in publishers:
            publisher.close()
        if client is not None:
            client.close()
        server.stop()
    return result


def _head(columns: list[str]) -> list[str]:
    return [
        "| server | N | TLS | " + " | ".join(columns) + " |",
        "|" + " --- |" * (3 + len(columns)),
    ]


def _row(kind: str, conns: int, tls: bool, values_per_column: list[list[float]]) -> str:
    """One table row: each column's median with its min-max, or "-" where there is none."""
    cells = []
    for values in values_per_column:
        if not values:
            cells.append("-")
            continue
        med = statistics.median(values)
        fmt = ".0f" if abs(med) >= 100 else ".2f"
        cell = f"{med:{fmt}}"
        if len(values) > 1:
            cell += f" ({min(values):{fmt}}-{max(values):{fmt}})"
        cells.append(cell)
    return f"| {kind} | {conns} | {'yes' if tls else 'no'} | " + " | ".join(cells) + " |"


def table(results: dict[tuple[str, int, bool], list[dict]], metrics: list[str]) -> str:
    lines = _head(metrics)
    for (kind, conns, tls), runs in results.items():
        columns = [[r[metric] for r in runs if metric in r] for metric in metrics]
        lines.append(_row(kind, conns, tls, columns))
    return "\n".join(lines)


def paired(
    results: dict[tuple[str, int, bool], list[dict]], reference: str, metrics: list[str]
) -> str:
    """Each server's metric over `reference`'s, run by run, then the median of those ratios.

    The servers of one run share its moment of the machine; whole runs drift (+10-15% CPU for
    every server at once here), so the ratio within a run moves less than medians taken apart.
    """
    lines = _head([f"{m} / {reference}" for m in metrics])
    for (kind, conns, tls), runs in results.items():
        peer = results.get((reference, conns, tls))
        if kind == reference or peer is None:
            continue
        columns = [
            [
                mine[metric] / theirs[metric]
                for mine, theirs in zip(runs, peer, strict=False)
                if mine.get(metric) and theirs.get(metric)
            ]
            for metric in metrics
        ]
        lines.append(_row(kind, conns, tls, columns))
    return "\n".join(lines)


PAIRED_METRICS = [
    "server_us_per_delivery",
    "slow_server_us_per_delivery",
    "slow_server_sys_us_per_delivery",
    "lat_p99_ms",
]

METRICS = [
    "connects_per_s",
    "server_us_per_delivery",
    "slow_server_us_per_delivery",
    "slow_server_sys_us_per_delivery",
    "deliveries_per_s",
    "lat_p50_ms",
    "lat_p99_ms",
    "lat_max_ms",
    "ack_p50_us",
    "ack_p99_us",
    "rate_achieved",
    "rss_after_connect_mb",
    "kb_per_conn",
    "peak_rss_mb",
    "client_us_per_delivery",
    "slow_client_us_per_delivery",
    "lost_latency",
    "lost_throughput",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", default="sidecar,naive,nchan,soketi")
    parser.add_argument("--subscribers", default="1000,5000")
    parser.add_argument("--tls", default="off", help="off, on, or off,on")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=100, help="event data bytes")
    parser.add_argument("--rate", type=float, default=10, help="latency phase events/s")
    parser.add_argument("--latency-events", type=int, default=100)
    parser.add_argument(
        "--latency-publishers",
        type=int,
        default=4,
        help="publishers of the latency phase, each event on an idle one (1: one at a time)",
    )
    parser.add_argument("--deliveries", type=int, default=500_000)
    parser.add_argument(
        "--delivery-rate",
        type=float,
        default=0,
        help="deliveries/s offered in the throughput phase (0: saturated)",
    )
    parser.add_argument("--workers", type=int, default=1, help="sidecar worker processes")
    parser.add_argument("--channels", type=int, default=1, help="channels ch0..chK-1")
    parser.add_argument("--subs-per-conn", type=int, default=1, help="channels per connection")
    parser.add_argument("--batch", type=int, default=1, help="events per publish (batch_events)")
    parser.add_argument("--server-cpus", default=SERVER_CPU)
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument(
        "--reference", default="nchan", help="the server others are divided by, run by run"
    )
    parser.add_argument("--profile", help="py-spy each Sidecar phase into this directory")
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(CLIENT_CPU)})

    kinds = [require(k) for k in args.servers.split(",") if k]
    tls_modes = [{"off": False, "on": True}[t] for t in args.tls.split(",")]
    sizes = [int(n) for n in args.subscribers.split(",")]
    results: dict[tuple[str, int, bool], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="sidecar-fanout-") as tmp:
        for run in range(args.runs):
            # Interleave servers within each run, so drift on the machine hits all alike.
            for conns in sizes:
                for tls in tls_modes:
                    for kind in kinds:
                        workdir = Path(tmp) / f"{kind}-{conns}-{tls}-{run}"
                        result = one(args, kind, conns, tls, workdir)
                        results.setdefault((kind, conns, tls), []).append(result)
                        print(
                            f"run {run + 1}: {kind} N={conns} tls={tls}: {json.dumps(result)}",
                            file=sys.stderr,
                            flush=True,
                        )
    print(
        f"\nFan-out, {args.size}-byte events, {args.channels} channel(s), {args.subs_per_conn} "
        f"per connection, {args.batch} event(s) per publish; medians of {args.runs} runs (min-max)."
        f"\nServer pinned to CPU {args.server_cpus}, client and harness to CPU {CLIENT_CPU}; "
        f"latency at {args.rate:g} events/s; throughput with 4 publishes in flight.\n"
    )
    print(table(results, METRICS))
    if args.reference in kinds and len(kinds) > 1:
        print(
            f"\nPer run, against {args.reference} in the same run: "
            "median of the ratios (min-max).\n"
        )
        print(paired(results, args.reference, PAIRED_METRICS))
    print(f"\ncommand: python bench/fanout.py {' '.join(sys.argv[1:])}")
    if args.json:
        serial = {f"{k}|{n}|{t}": v for (k, n, t), v in results.items()}
        Path(args.json).write_text(json.dumps(serial, indent=1))


if __name__ == "__main__":
    main()
