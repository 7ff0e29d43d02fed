"""The soak benchmark's chart and verdict (bench/soak.py), from its JSON lines.

    .venv/bin/python bench/soak_chart.py bench/results/soak-.../soak.jsonl   # draw it again

Needs matplotlib (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def rss_slope(samples: list[dict[str, Any]], warmup_s: float) -> float | None:
    """Least-squares slope of RSS after the warm-up, in MiB per hour (None: under 3 samples)."""
    points = [(s["t"], s["rss_mib"]) for s in samples if s["t"] >= warmup_s]
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_r = sum(r for _, r in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (r - mean_r) for t, r in points)
    return cov / var * 3600


def draw_chart(samples: list[dict[str, Any]], path: Path, warmup_s: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    panels = [
        ("RSS of the process tree (MiB)", [("rss_mib", "RSS")]),
        ("open file descriptors", [("fds", "server"), ("idle_held", "idle HTTP held")]),
        ("event-loop lag, outside (ms)", [("ping_ms", "pusher:ping"), ("healthz_ms", "/healthz")]),
        (
            "delivery latency (ms)",
            [("delivery_ms", "probe subscriber"), ("wsload_p50_ms", "load p50"),
             ("wsload_p99_ms", "load p99")],
        ),
    ]  # fmt: skip
    for axis, (label, series) in zip(axes, panels, strict=True):
        for key, name in series:
            axis.plot(minutes, [s.get(key, float("nan")) for s in samples], label=name)
        axis.set_ylabel(label, fontsize=9)
        axis.axvline(warmup_s / 60, color="grey", linestyle=":", linewidth=1)
        axis.grid(alpha=0.3)
        if len(series) > 1:
            axis.legend(fontsize=8, loc="upper left")
    axes[0].set_ylim(bottom=0)
    axes[1].set_ylim(bottom=0)
    axes[-1].set_xlabel("minutes (dotted: end of warm-up)")
    fig.suptitle(f"Sidecar soak: {title}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    source = Path(sys.argv[1])
    samples = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    warmup = samples[-1]["t"] * 0.2 if samples else 0
    slope = rss_slope(samples, warmup)
    text = "n/a" if slope is None else f"{slope:+.1f} MiB/h after warm-up"
    draw_chart(samples, source.with_suffix(".png"), warmup, text)
    print(f"{source.with_suffix('.png')}: RSS slope {text}")


if __name__ == "__main__":
    main()
