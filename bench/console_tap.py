"""What the debug console's taps cost, closed and open.

    .venv/bin/python bench/console_tap.py                 # both parts
    .venv/bin/python bench/console_tap.py --part micro    # the publish path in-process
    .venv/bin/python bench/console_tap.py --part process --workers 2 --runs 3

micro: one publication through the publish API's PublishCounter (where the Unix socket's tap
sits), ns per call: without the tap at all (the code before it), with the tap unset (no console
open), and with one console page open (an item made, with its 1 KiB preview, and queued).

process: a real `sidecar run` (workers as given, TLS on) with subscribers on one channel;
events published one after another over the Unix socket; the CPU seconds of the sidecar's
process tree per publication and the publisher's wall time, with no console and with one
console page reading the stream, runs alternated. Medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import cpu_seconds, free_port, process_tree, wait_unix
from sidecar.api.client import SidecarClient
from sidecar.engine.broker.base import Publication
from sidecar.observe.console import ConsoleFeed
from sidecar.observe.probe import PublishCounter
from sidecar.observe.snapshot import RecentEvent


class NullBroker:
    def publish(self, publication: Publication) -> None:
        pass


class Untapped(PublishCounter):
    """PublishCounter.publish as it was before the console's tap."""

    def publish(self, publication: Publication) -> None:
        self.published += 1
        size = len(publication.data_json) - 2
        self.published_bytes += size
        channels = publication.channels
        self.recent.append(
            RecentEvent(
                self._wall(),
                publication.app_id,
                channels[0] if channels else "",
                publication.name,
                size,
                len(channels) - 1,
            )
        )
        self._broker.publish(publication)


def per_call_ns(counter: PublishCounter, pub: Publication, n: int, drain: Any = None) -> float:
    start = time.perf_counter_ns()
    for i in range(n):
        counter.publish(pub)
        if drain is not None and i % 50 == 0:
            drain()  # the page takes its items at most ten times a second; here, often
    return (time.perf_counter_ns() - start) / n


def micro(runs: int, n: int = 200_000) -> None:
    pub = Publication.of("1", ("orders",), "created", json.dumps({"id": 42, "pad": "x" * 200}))
    big = Publication.of("1", ("orders",), "created", "x" * 100_000)
    results: dict[str, list[float]] = {}
    for _ in range(runs):
        results.setdefault("before the tap", []).append(per_call_ns(Untapped(NullBroker()), pub, n))
        results.setdefault("tap unset (no console)", []).append(
            per_call_ns(PublishCounter(NullBroker()), pub, n)
        )
        for label, event in (("console open, 250 B event", pub), ("console open, 100 KB", big)):
            feed = ConsoleFeed(rate=10**9)  # no cap: every item is made and queued
            viewer = feed.open()
            counter = PublishCounter(NullBroker())
            counter.tap = feed.publication
            results.setdefault(label, []).append(
                per_call_ns(counter, event, n // 10, drain=viewer.queue.take)
            )
    base = statistics.median(results["before the tap"])
    print(f"micro: PublishCounter.publish, median of {runs} runs")
    for label, values in results.items():
        median = statistics.median(values)
        print(f"  {label:28} {median:8.1f} ns/publish  ({median / base:.3f}x)")


async def subscribers(port: int, cert: Path, key: str, count: int) -> list[Any]:
    import aiohttp

    session = aiohttp.ClientSession()
    ctx = ssl.create_default_context(cafile=str(cert))
    sockets = []
    for _ in range(count):
        ws = await session.ws_connect(f"wss://localhost:{port}/app/{key}?protocol=7", ssl=ctx)
        await ws.receive_str()
        await ws.send_json({"event": "pusher:subscribe", "data": {"channel": "bench"}})
        await ws.receive_str()
        sockets.append(ws)
    return [session, *sockets]


def drain_forever(sockets: list[Any], loop: asyncio.AbstractEventLoop) -> None:
    async def read(ws: Any) -> None:
        while not ws.closed:
            await ws.receive()

    for ws in sockets[1:]:
        loop.create_task(read(ws))


class ConsolePage:
    """One console page: reads the stream until closed."""

    def __init__(self, admin: int, token: str) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{admin}/dashboard/console/events",
            headers={"Authorization": f"Bearer {token}"},
        )
        self.response = urllib.request.urlopen(request)
        self.bytes = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while chunk := self.response.read1(65536):
                self.bytes += len(chunk)
        except (OSError, ValueError, AttributeError):  # closed from the other thread
            pass

    def close(self) -> None:
        self.response.close()


def process(workers: int, runs: int, events: int, count: int) -> None:
    token = "bench-console-token-0123456789"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port, admin = free_port(), free_port()
        (folder / "sidecar.yaml").write_text(
            json.dumps(
                {
                    "listen": {"host": "127.0.0.1", "port": port},
                    "http": {"port": None},
                    "admin": {"host": "127.0.0.1", "port": admin, "token": token},
                    "tls": {"mode": "self-signed", "dir": str(folder / "certs")},
                    "publish": {"socket": str(folder / "s.sock")},
                    "workers": workers,
                }
            )
        )
        exe = Path(sys.executable).parent / "sidecar"
        proc = subprocess.Popen(
            [str(exe), "run", "--config", str(folder / "sidecar.yaml")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_unix(str(folder / "s.sock"))
            time.sleep(1)
            app = json.loads((folder / "certs" / "app.json").read_text())
            loop = asyncio.new_event_loop()
            held = loop.run_until_complete(
                subscribers(port, folder / "certs" / "localhost.crt", app["key"], count)
            )
            drain_forever(held, loop)
            threading.Thread(target=loop.run_forever, daemon=True).start()
            results: dict[str, list[tuple[float, float]]] = {"no console": [], "console open": []}
            payload = {"id": 42, "pad": "x" * 200}
            with SidecarClient(str(folder / "s.sock"), app_id=app["id"]) as client:
                for _ in range(runs):
                    for label in results:
                        page = ConsolePage(admin, token) if label == "console open" else None
                        time.sleep(0.5)
                        pids = process_tree(proc.pid)
                        cpu, wall = cpu_seconds(pids), time.perf_counter()
                        for _ in range(events):
                            client.trigger("bench", "tick", payload)
                        time.sleep(0.5)  # the deliveries (and the console's items) settle
                        cpu = cpu_seconds(pids) - cpu
                        wall = time.perf_counter() - wall - 0.5
                        results[label].append((cpu / events * 1e6, wall / events * 1e6))
                        if page is not None:
                            page.close()
            asyncio.run_coroutine_threadsafe(held[0].close(), loop).result(5)
        finally:
            proc.terminate()
            proc.wait(15)
    print(f"process: workers {workers}, {count} subscribers, {events} publishes, {runs} runs")
    base = statistics.median(c for c, _ in results["no console"])
    for label, values in results.items():
        cpu = statistics.median(c for c, _ in values)
        wall = statistics.median(w for _, w in values)
        print(
            f"  {label:14} {cpu:7.1f} us CPU/publish ({cpu / base:.2f}x), "
            f"{wall:6.1f} us publisher wall/publish"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("micro", "process", "both"), default="both")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--subscribers", type=int, default=100)
    args = parser.parse_args()
    if args.part in ("micro", "both"):
        micro(args.runs)
    if args.part in ("process", "both"):
        process(args.workers, args.runs, args.events, args.subscribers)


if __name__ == "__main__":
    main()
