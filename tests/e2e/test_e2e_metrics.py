"""The admin listener of a real `sidecar run`: metrics after a known workload, health, status.

Run with the default workers (two here: the counts are gathered from both) and with one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pusher
import pytest

from sidecar.api.client import PublishError, SidecarClient
from tests.support.observe import (
    Subscribers,
    admin_block,
    get_json,
    sample,
    scrape,
    total,
    wait_ready,
    wait_until,
)
from tests.support.process import SidecarProcess, sidecar_command
from tests.support.pusher_server import server_library

pytestmark = pytest.mark.e2e

APP = {"id": "7", "key": "metrics-key", "secret": "metrics-secret-0123456789"}
SUBSCRIBERS = 6
PUBLISHES = 5
DATA = "x" * 40
EVENTS = "/apps/{app_id}/events"


def signed_client(sidecar: SidecarProcess) -> pusher.Pusher:
    return server_library(sidecar, APP)


@pytest.mark.parametrize("workers", ["auto", 1])
async def test_counts_after_a_known_workload_are_exact(
    start_sidecar: Callable[..., SidecarProcess], workers: object
) -> None:
    sidecar = start_sidecar(apps=[APP], admin=admin_block(), workers=workers)
    ready = await wait_ready(sidecar)
    configured = ready["checks"]["listening"]["workers_configured"]
    assert configured == (len(os.sched_getaffinity(0)) if workers == "auto" else 1)
    clients = Subscribers(sidecar)
    try:
        await clients.open(SUBSCRIBERS, "news")
        with SidecarClient(sidecar.socket, app_id=APP["id"]) as publisher:
            for _ in range(PUBLISHES):
                publisher.trigger("news", "tick", DATA)
        with (
            SidecarClient(sidecar.socket, app_id="999") as stranger,
            pytest.raises(PublishError),
        ):
            stranger.trigger("news", "tick", DATA)  # a 404 is counted, nothing published
        await asyncio.to_thread(signed_client(sidecar).trigger, "news", "signed", DATA)
        await clients.receive_all(PUBLISHES + 1)
        samples = await scrape(sidecar)
        published = PUBLISHES + 1
        assert sample(samples, "sidecar_connections") == SUBSCRIBERS
        assert sample(samples, "sidecar_connections_opened_total") == SUBSCRIBERS
        assert sample(samples, "sidecar_messages_published_total") == published
        assert sample(samples, "sidecar_published_bytes_total") == published * len(DATA)
        assert sample(samples, "sidecar_messages_delivered_total") == SUBSCRIBERS * published
        assert sample(samples, "sidecar_delivered_bytes_total") > SUBSCRIBERS * published * 40
        assert sample(samples, "sidecar_subscriptions", kind="public") == SUBSCRIBERS
        assert sample(samples, "sidecar_channels", kind="public") == 1
        assert sample(samples, "sidecar_channels", kind="presence") == 0
        unix = {"listener": "unix", "endpoint": EVENTS, "status": "200"}
        tls = {"listener": "tls", "endpoint": EVENTS, "status": "200"}
        assert sample(samples, "sidecar_http_requests_total", **unix) == PUBLISHES
        assert sample(samples, "sidecar_http_requests_total", **tls) == 1
        unknown_app = {**unix, "status": "404"}
        assert sample(samples, "sidecar_http_requests_total", **unknown_app) == 1
        assert sample(samples, "sidecar_delivery_latency_seconds_count") >= 1
        assert sample(samples, "sidecar_workers_alive") == configured
        assert sample(samples, "sidecar_broker_up", kind="memory" if configured == 1 else "pipe")
        assert sample(samples, "sidecar_certificate_valid") == 1
        assert sample(samples, "sidecar_certificate_expiry_seconds") > 300 * 86400
        assert sample(samples, "sidecar_client_events_total") == 0
        assert total(samples, "sidecar_connections_closed_total") == 0
        assert sample(samples, "process_cpu_seconds_total") > 0
        for (name, labels), _ in samples.items():
            assert all("news" not in value for _, value in labels), (name, labels)
        await clients.close()

        async def all_closed() -> bool:
            s = await scrape(sidecar)
            closed = total(s, "sidecar_connections_closed_total")
            return sample(s, "sidecar_connections") == 0 and closed == SUBSCRIBERS

        await wait_until(all_closed)
        samples = await scrape(sidecar)
        # The clients closed with 1000.
        assert sample(samples, "sidecar_connections_closed_total", code="1000") == SUBSCRIBERS
        assert sample(samples, "sidecar_subscriptions", kind="public") == 0
        assert sample(samples, "sidecar_messages_delivered_total") == SUBSCRIBERS * published
    finally:
        await clients.close()


async def test_health_readiness_and_the_status_command(
    start_sidecar: Callable[..., SidecarProcess], tmp_path: Path
) -> None:
    token = "status-token-0123456789"
    sidecar = start_sidecar(admin=admin_block(token=token))
    await wait_ready(sidecar)
    status, body = await get_json(sidecar, "/healthz")
    assert status == 200 and body["status"] == "ok"
    status, body = await get_json(sidecar, "/readyz")
    assert status == 200 and body["ready"] is True
    assert {name for name, check in body["checks"].items() if check["ok"]} == {
        "listening",
        "certificate",
        "broker",
    }
    status, _ = await get_json(sidecar, "/status")
    assert status == 401  # the token is set: wanted even on loopback
    clients = Subscribers(sidecar)
    try:
        await clients.open(3, "orders")
        with SidecarClient(sidecar.socket, app_id=sidecar.app["id"]) as publisher:
            publisher.trigger("orders", "created", "{}")
        await clients.receive_all(1)
        result = await asyncio.to_thread(
            subprocess.run,
            [*sidecar_command(), "status", "--config", str(sidecar.config_path)],
            cwd=sidecar.workdir,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].endswith(": ready")
        rows = {line.split()[0]: line for line in lines[1:]}
        assert "3 (opened 3, closed 0)" in rows["connections"]
        assert "1: public 1" in rows["channels"]
        assert "(published 1)" in result.stdout and "(delivered 3)" in result.stdout
        assert "valid, expires" in rows["certificate"]
        wrong = await asyncio.to_thread(
            subprocess.run,
            [*sidecar_command(), "status", "--config", str(sidecar.config_path), "--token", "no"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert wrong.returncode == 1
        assert wrong.stderr.count("\n") == 1 and "token" in wrong.stderr
    finally:
        await clients.close()


def worker_pids(sidecar: SidecarProcess) -> list[int]:
    assert sidecar.proc is not None
    children = Path(f"/proc/{sidecar.proc.pid}/task/{sidecar.proc.pid}/children")
    return [int(pid) for pid in children.read_text().split()]


async def test_a_dead_workers_counts_stay_in_the_totals(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    sidecar = start_sidecar(admin=admin_block(), workers=2)
    await wait_ready(sidecar)
    clients = Subscribers(sidecar)
    try:
        await clients.open(4, "news")
        with SidecarClient(sidecar.socket, app_id=sidecar.app["id"]) as publisher:
            for _ in range(3):
                publisher.trigger("news", "tick", "x")
        await clients.receive_all(3)
        before = await scrape(sidecar)
        assert sample(before, "sidecar_messages_delivered_total") == 12
        os.kill(worker_pids(sidecar)[0], signal.SIGKILL)

        async def restarted() -> bool:
            s = await scrape(sidecar)
            return sample(s, "sidecar_worker_restarts_total") == 1 and s

        await wait_until(restarted)
        body = await wait_ready(sidecar)
        assert body["checks"]["listening"]["workers_answering"] == 2
        after = await scrape(sidecar)
        assert sample(after, "sidecar_messages_delivered_total") == 12
        assert sample(after, "sidecar_connections_opened_total") == 4
    finally:
        await clients.close()
