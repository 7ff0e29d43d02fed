"""What a webhook endpoint that never answers costs the relay in memory.

Starts a real `sidecar run` (TLS, self-signed) whose app sends every webhook kind to an endpoint
that accepts connections and never answers, then has CLIENTS connections each send 60 KiB
client events at the allowed 10 per second for SECONDS, sampling the resident memory of the
sidecar and its workers. Prints one JSON line per sample and a summary.

    .venv/bin/python bench/webhook_memory.py --clients 4 --seconds 120
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import pusher

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.process import SidecarProcess, base_config
from tests.support.process_tree import rss_bytes

APP = {"id": "7", "key": "bench-key", "secret": "bench-secret-0123", "client_events": True}
SIGNER = pusher.Pusher(app_id=APP["id"], key=APP["key"], secret=APP["secret"])
KINDS = ["channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event"]


def silent_endpoint() -> tuple[socket.socket, int]:
    """A listening socket nobody reads: connections complete (the backlog) and hang."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1024)
    return server, server.getsockname()[1]


async def sender(
    session: aiohttp.ClientSession, url: str, ctx: ssl.SSLContext, n: int, until: float
) -> int:
    ws = await session.ws_connect(url, ssl=ctx, max_msg_size=0)
    established = json.loads((await ws.receive()).data)
    socket_id = json.loads(established["data"])["socket_id"]
    channel = f"private-bench-{n}"
    auth = SIGNER.authenticate(channel, socket_id)
    await ws.send_json({"event": "pusher:subscribe", "data": {"channel": channel, **auth}})
    await ws.receive()
    data = json.dumps({"n": n, "blob": "x" * (60 * 1024 - 32)})
    sent = 0
    next_at = time.monotonic()
    while time.monotonic() < until:
        await ws.send_str(json.dumps({"event": "client-big", "channel": channel, "data": data}))
        sent += 1
        next_at += 0.1  # 10 per second, the default limits.client_events_per_second
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await ws.close()
    return sent


async def main(clients: int, seconds: float, workers: int) -> None:
    server, port = silent_endpoint()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        app: dict[str, Any] = {
            **APP,
            "webhooks": [{"url": f"http://127.0.0.1:{port}/hooks", "events": KINDS}],
        }
        sidecar = SidecarProcess(folder, base_config(folder, apps=[app], workers=workers))
        sidecar.start()
        assert sidecar.proc is not None
        pid = sidecar.proc.pid
        try:
            await asyncio.sleep(1.0)
            start = rss_bytes(pid)
            peak = start
            ctx = ssl.create_default_context(cafile=str(sidecar.cert))
            until = time.monotonic() + seconds
            async with aiohttp.ClientSession() as session:
                tasks = [
                    asyncio.create_task(sender(session, sidecar.ws_url(), ctx, n, until))
                    for n in range(clients)
                ]
                began = time.monotonic()
                while not all(t.done() for t in tasks):
                    await asyncio.sleep(5.0)
                    rss = rss_bytes(pid)
                    peak = max(peak, rss)
                    print(json.dumps({"t": round(time.monotonic() - began), "rss_mib": rss >> 20}))
                sent = sum(await asyncio.gather(*tasks))
            end = rss_bytes(pid)
            metrics = [
                line
                for line in sidecar.stderr().splitlines()
                if "webhook queue full" in line or "dropping" in line
            ]
            summary = {
                "clients": clients,
                "seconds": seconds,
                "client_events_sent": sent,
                "rss_start_mib": start >> 20,
                "rss_peak_mib": peak >> 20,
                "rss_end_mib": end >> 20,
                "growth_peak_mib": (peak - start) >> 20,
                "overflow_log_lines": len(metrics),
            }
            print(json.dumps(summary))
        finally:
            sidecar.stop()
            server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args.clients, args.seconds, args.workers))
