"""An 8 MiB event to 100 subscribers: how much the server's memory grows, side by side.

    .venv/bin/python bench/big_payload.py --subscribers 100 --size 8MiB --runs 3

A relay that copies the event per subscriber grows by 100 payloads (800 MiB); one that shares
a single encoded buffer grows by a few. Peak RSS of the server's process tree is sampled every
2 ms from the publish call until every subscriber has the event; reported as growth over the
RSS before publishing, in payloads. Each server also gets time to deliver (seconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fanout import LoadClient, marked
from bench.servers import KINDS, PeakRss, require
from sidecar.tls.contexts import ensure_self_signed

MiB = 1024 * 1024


def one(kind: str, workers: int, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    pair = ensure_self_signed(workdir / "certs")
    extra = {"workers": workers} if kind == "sidecar" else {}
    server = KINDS[kind](
        name=kind,
        workdir=workdir / f"{kind}{workers}",
        tls=args.tls,
        cert=pair.cert,
        key=pair.key,
        cpus="0",
        **extra,
    )
    server.start()
    client = None
    try:
        client = LoadClient(server, args.subscribers)
        client.ready()
        publisher = server.publisher()
        payload = marked(args.size)
        publisher.publish("ch0", marked(1000))  # warm every path with a small event first
        client.wait_deliveries(args.subscribers)
        client.reset()
        time.sleep(0.5)
        with PeakRss(server.pids()) as rss:
            t0 = time.perf_counter()
            publisher.publish("ch0", payload)
            stats = client.wait_deliveries(args.subscribers, stall=20)
            elapsed = time.perf_counter() - t0
        publisher.close()
        growth = rss.peak - rss.before
        return {
            "growth_payloads": growth / args.size,
            "growth_mib": growth / MiB,
            "seconds": elapsed,
            "delivered": stats["deliveries"],
        }
    finally:
        if client is not None:
            client.close()
        server.stop()


def parse_size(text: str) -> int:
    text = text.strip()
    for suffix, factor in (("MiB", MiB), ("KiB", 1024)):
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", default="sidecar,sidecar:2,naive,nchan")
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--size", type=parse_size, default=8 * MiB)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    entries = []
    for entry in args.servers.split(","):
        kind, _, workers = entry.partition(":")
        entries.append((entry, require(kind), int(workers or 1)))
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="sidecar-big-") as tmp:
        for run in range(args.runs):
            for entry, kind, workers in entries:
                result = one(kind, workers, args, Path(tmp) / f"{run}")
                results.setdefault(entry, []).append(result)
                print(f"run {run + 1}: {entry}: {result}", file=sys.stderr, flush=True)
    print(
        f"\nOne {args.size / MiB:g} MiB event to {args.subscribers} subscribers"
        f" ({'TLS' if args.tls else 'plaintext'}); peak RSS growth of the server's process tree;"
        f" medians of {args.runs} runs (min-max).\n"
    )
    print("| server | growth (payloads) | growth MiB | seconds to deliver | delivered |")
    print("| --- | --- | --- | --- | --- |")
    for entry, runs in results.items():
        cells = []
        for metric, fmt in (("growth_payloads", ".2f"), ("growth_mib", ".0f"), ("seconds", ".2f")):
            values = [r[metric] for r in runs]
            cells.append(
                f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"
            )
        delivered = min(r["delivered"] for r in runs)
        name = entry.replace(":2", ", 2 workers")
        print(f"| {name} | {' | '.join(cells)} | {delivered:.0f}/{args.subscribers} |")
    print(f"\ncommand: python bench/big_payload.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
