"""Instructions per TLS delivery and per TLS connect, counted under callgrind, side by side.

    .venv/bin/python bench/instructions.py --servers sidecar,sidecar-baseline,nchan

Seconds of CPU on a shared machine move by 10-20% from run to run (bench/RESULTS.md); the
instructions a server executes for the same work do not (the same count within 0.3% here, run
after run). So a change of a few percent, invisible in fanout.py's medians, shows here. What
it leaves out: the kernel (system calls, the loopback, waking the client), caches and branch
misses; and under valgrind everything runs ~50x slower, so only light loads make sense. Use it
to compare code, fanout.py to compare seconds.

Each server runs under `valgrind --tool=callgrind` with instrumentation off until the counted
phase, then:
  deliveries  `--subscribers` TLS subscribers (wsload) get `--events` events at `--rate` per
              second (slow enough that each fan-out ends before the next publish: one write per
              delivery); instructions / (events x subscribers)
  connects    `--connects` TLS clients connect and subscribe at once (a small reconnect storm);
              instructions / connects
Counts are of user space only: the server's own code, Python's, OpenSSL's, libc's. nginx runs
with `master_process off` (one process, as `workers: 1`). `--keep DIR` keeps the callgrind files
for `callgrind_annotate` (per C function; Python's own frames show as the interpreter's).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench.servers as servers
from bench.fanout import LoadClient, measure_latency
from bench.servers import KINDS, Server
from sidecar.tls.contexts import ensure_self_signed

VALGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--dump-instr=no"]
# Python's start-up under valgrind takes tens of seconds: the port waits longer than fanout.py's.
START_TIMEOUT = 300.0


def callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True)


def counted(server: Server, work: Callable[[], None]) -> int:
    """Instructions the server executes during `work()`."""
    pid = str(server.proc.pid)  # type: ignore[union-attr]
    callgrind_control("-i", "on", pid)
    time.sleep(3)  # instrumenting the code already loaded takes a while: none of it counted
    callgrind_control("-z", pid)
    work()
    callgrind_control("-d", "counted", pid)
    callgrind_control("-i", "off", pid)
    dumps = sorted(server.workdir.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
    for line in dumps[-1].read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary in {dumps[-1]}")


def start(kind: str, workdir: Path) -> Server:
    pair = ensure_self_signed(workdir / "certs")
    server = KINDS[kind](
        name=kind, workdir=workdir / kind, tls=True, cert=pair.cert, key=pair.key, cpus="0"
    )
    if hasattr(server, "workers"):
        server.workers = 1
    command = server.command
    out = f"--callgrind-out-file={server.workdir}/callgrind.out.%p"
    extra = ["-g", "master_process off;"] if kind == "nchan" else []
    server.command = lambda: [*VALGRIND, out, *command(), *extra]  # type: ignore[method-assign]
    wait_port = servers.wait_port
    servers.wait_port = lambda port, timeout=30: wait_port(port, START_TIMEOUT)  # type: ignore[assignment]
    try:
        server.start()
    finally:
        servers.wait_port = wait_port  # type: ignore[assignment]
    return server


def deliveries(args: argparse.Namespace, server: Server) -> float:
    client = LoadClient(server, args.subscribers)
    client.ready()
    time.sleep(2)
    publishers = [server.publisher()]
    try:
        # Warm: the first events take paths (and fill caches) that later ones do not.
        measure_latency(client, server, publishers, args.subscribers, 5, args.rate, args.size)
        time.sleep(1)
        total = counted(
            server,
            lambda: measure_latency(
                client, server, publishers, args.subscribers, args.events, args.rate, args.size
            ),
        )
    finally:
        publishers[0].close()
        client.close()
    return total / (args.events * args.subscribers)


def connects(args: argparse.Namespace, server: Server) -> float:
    clients: list[LoadClient] = []

    def storm() -> None:
        clients.append(LoadClient(server, args.connects, connect_batch=args.connects))
        clients[0].ready()

    try:
        total = counted(server, storm)
    finally:
        for client in clients:
            client.close()
    return total / args.connects


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", default="sidecar,nchan")
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--rate", type=float, default=2.0, help="events/s while counting")
    parser.add_argument("--size", type=int, default=130, help="event data bytes")
    parser.add_argument("--connects", type=int, default=300)
    parser.add_argument("--phases", default="deliveries,connects")
    parser.add_argument("--keep", help="a directory to keep each server's callgrind files in")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install valgrind")
    kinds = [servers.require(kind) for kind in args.servers.split(",")]
    phases = {"deliveries": deliveries, "connects": connects}
    rows = []
    for kind in kinds:
        row = [kind]
        for phase in args.phases.split(","):
            workdir = Path(tempfile.mkdtemp(prefix=f"instructions-{kind}-"))
            server = start(kind, workdir)
            try:
                row.append(f"{phases[phase](args, server):,.0f}")
            finally:
                server.stop()
                if args.keep:
                    Path(args.keep).mkdir(parents=True, exist_ok=True)
                    for dump in (workdir / kind).glob("callgrind.out.*"):
                        shutil.copy(dump, Path(args.keep) / f"{kind}-{phase}-{dump.name}")
                shutil.rmtree(workdir, ignore_errors=True)
        rows.append(row)
        print(" ".join(row), flush=True)
    units = {"deliveries": "instructions/delivery", "connects": "instructions/connect"}
    columns = [units[p] for p in args.phases.split(",")]
    print(
        f"\nUser-space instructions under callgrind, TLS; {args.subscribers} subscribers, "
        f"{args.events} events of {args.size} bytes at {args.rate}/s; "
        f"{args.connects} connects at once.\n"
    )
    print("| server | " + " | ".join(columns) + " |")
    print("|" + " --- |" * (1 + len(columns)))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\ncommand: python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
