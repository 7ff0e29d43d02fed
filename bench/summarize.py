"""Condense a fanout.py --json file into the table quoted in RESULTS.md and the ratios to peers.

python bench/summarize.py bench/results/main.json
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

COLUMNS = [
    ("server_us_per_delivery", "CPU µs/delivery, saturated", ".2f"),
    ("slow_server_us_per_delivery", "CPU µs/delivery at 10/s", ".1f"),
    ("deliveries_per_s", "deliveries/s", ",.0f"),
    ("lat_p99_ms", "p99 ms at 10/s", ".1f"),
    ("kb_per_conn", "KB/conn", ".1f"),
    ("client_us_per_delivery", "client µs/delivery", ".2f"),
    ("lost_throughput", "lost", ".0f"),
]


def med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    data = json.loads(Path(sys.argv[1]).read_text())
    print("| server | N | TLS | " + " | ".join(c[1] for c in COLUMNS) + " |")
    print("|" + " --- |" * (3 + len(COLUMNS)))
    for key, runs in data.items():
        kind, n, tls = key.split("|")
        cells = []
        for metric, _, fmt in COLUMNS:
            values = [r[metric] for r in runs if metric in r]
            cells.append(format(statistics.median(values), fmt) if values else "-")
        print(f"| {kind} | {int(n):,} | {'yes' if tls == 'True' else 'no'} | {' | '.join(cells)} |")
    print("\nRatios, Sidecar / peer (medians of the same run):\n")
    print("| N | TLS | metric | / nchan | / soketi | / naive |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key, runs in data.items():
        kind, n, tls = key.split("|")
        if kind != "sidecar":
            continue
        for metric in ("server_us_per_delivery", "lat_p99_ms", "kb_per_conn"):
            cells = []
            for peer in ("nchan", "soketi", "naive"):
                other = data.get(f"{peer}|{n}|{tls}")
                cells.append(f"{med(runs, metric) / med(other, metric):.2f}" if other else "-")
            tls_cell = "yes" if tls == "True" else "no"
            print(f"| {int(n):,} | {tls_cell} | {metric} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
