"""A picture of the dashboard under load: Sidecar with two workers, TLS, thousands of clients.

    bash bench/setup.sh          # once: builds bench/client/wsload
    .venv/bin/python bench/dashboard_shot.py --seconds 90 --out docs/dashboard.png

Starts `sidecar run` (two workers on both CPUs, TLS, admin listener on), holds connections
with bench/client/wsload on a few channels of different sizes, publishes events of varied
sizes at a rate that rises and falls, then opens /dashboard in headless Chromium and saves a
screenshot. Needs Debian's chromium.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import SidecarServer, paced
from sidecar.tls.contexts import ensure_self_signed
from tests.support.chromium import Chromium

BENCH = Path(__file__).resolve().parent
WSLOAD = BENCH / "client" / "wsload"
# (channel prefix, channels, connections): the busiest-channels table gets a spread.
AUDIENCES = (("live-scores", 1, 1500), ("orders-", 3, 600), ("cache-ticker", 1, 300))


def hold(server: SidecarServer, prefix: str, channels: int, conns: int) -> subprocess.Popen:
    command = [
        str(WSLOAD),
        "--port",
        str(server.port),
        "--conns",
        str(conns),
        "--channels",
        str(channels),
        "--prefix",
        prefix,
        "--tls",
        "--sni",
        "localhost",
        *server.subscribe_args(),
    ]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready = proc.stdout.readline()
    if '"ready"' not in ready:
        raise RuntimeError(f"wsload: {ready}")
    return proc


def publish_for(server: SidecarServer, seconds: float) -> int:
    """Events at a rate between 20 and 140 a second, rising and falling; how many."""
    publisher = server.publisher()
    channels = ["live-scores0"] * 5 + [f"orders-{i}" for i in range(3)] + ["cache-ticker0"]
    start = time.monotonic()
    sent = 0
    rng = random.Random(7)
    try:
        while (elapsed := time.monotonic() - start) < seconds:
            rate = 80 + 60 * math.sin(elapsed / 15)
            for _ in paced(max(1, int(rate / 10)), rate):
                data = "x" * rng.choice((60, 200, 800, 3000))
                publisher.publish(rng.choice(channels), data)
                sent += 1
    finally:
        publisher.close()
    return sent


async def screenshot(url: str, out: Path, profile: Path) -> None:
    browser = await Chromium.start(profile)
    try:
        await browser.navigate(url)
        await browser.wait_for("document.getElementById('live').textContent === 'live'")
        await asyncio.sleep(2.5)
        await browser.screenshot(out)
    finally:
        await browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--out", default="docs/dashboard.png")
    args = parser.parse_args()
    if not WSLOAD.exists():
        raise SystemExit("bench/client/wsload is missing: run bash bench/setup.sh")
    with tempfile.TemporaryDirectory(prefix="sidecar-dashboard-") as tmp:
        pair = ensure_self_signed(Path(tmp) / "certs")
        server = SidecarServer(
            name="sidecar",
            workdir=Path(tmp) / "sidecar",
            tls=True,
            cert=pair.cert,
            key=pair.key,
            cpus="0,1",
            workers=2,
            metrics=True,
            scrape_interval=15,
        )
        server.start()
        clients = []
        try:
            clients = [hold(server, *audience) for audience in AUDIENCES]
            sent = publish_for(server, args.seconds)
            url = f"http://127.0.0.1:{server.admin_port}/dashboard"
            asyncio.run(screenshot(url, Path(args.out), Path(tmp) / "chromium"))
            print(f"{sent} events published; screenshot in {args.out}")
        finally:
            for proc in clients:
                proc.kill()
                proc.wait()
            server.stop()


if __name__ == "__main__":
    main()
