"""sidecar.admin.endpoints and observer: the admin listener's answers, over aiohttp's test
client."""

from __future__ import annotations

import datetime
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.admin.endpoints import admin_app, admin_names
from sidecar.engine.broker.base import Publication
from sidecar.observe import observer as observer_module
from sidecar.observe.observer import Observer
from sidecar.observe.snapshot import ChannelCount, Snapshot, key
from sidecar.tls.contexts import ensure_self_signed

TOKEN = "a-token-of-some-length"


class FakeProbe:
    def __init__(self) -> None:
        self.delivered = 0

    def snapshot(self, full: bool = True) -> Snapshot:
        snap = Snapshot(
            counters={key("messages_delivered"): self.delivered, key("connections_opened"): 3},
            gauges={key("connections"): 3},
        )
        if full:
            snap.gauges[key("channels", kind="public")] = 1
            snap.gauges[key("subscriptions", kind="public")] = 3
            snap.channels = [ChannelCount("1", "<b>news</b>", 3)]
        return snap


class NullBroker:
    def publish(self, publication: Publication) -> None:
        pass


def expired_certificate(folder: Path) -> Path:
    key_ = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key_.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=10))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(key_, hashes.SHA256())
    )
    path = folder / "old.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


async def client_for(observer: Observer, token: str | None = None) -> TestClient:
    client = TestClient(TestServer(admin_app(observer, token)))
    await client.start_server()
    return client


@pytest.fixture
async def observed(tmp_path: Path) -> AsyncIterator[tuple[Observer, FakeProbe]]:
    cert = ensure_self_signed(tmp_path).cert
    observer = Observer(cert, workers=1, broker="memory")
    probe = FakeProbe()
    observer.add_local(probe)  # type: ignore[arg-type]
    yield observer, probe
    await observer.stop()


async def test_health_is_open_everything_else_wants_the_token(
    observed: tuple[Observer, FakeProbe],
) -> None:
    observer, _ = observed
    client = await client_for(observer, TOKEN)
    try:
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 200
        for path in ("/metrics", "/status", "/dashboard", "/dashboard/events"):
            response = await client.get(path)
            assert response.status == 401, path
            assert "admin.token" in (await response.json())["error"]
        assert (await client.get("/dashboard/dashboard.js")).status == 200  # no data in it
        assert (
            await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        ).status == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/metrics", headers=good)).status == 200
        assert (await client.get(f"/dashboard?token={TOKEN}")).status == 200
    finally:
        await client.close()


async def test_readyz_reports_each_check(observed: tuple[Observer, FakeProbe]) -> None:
    observer, _ = observed
    client = await client_for(observer)
    try:
        response = await client.get("/readyz")
        body = await response.json()
        assert response.status == 200 and body["ready"] is True
        assert set(body["checks"]) == {"listening", "certificate", "broker"}
        assert body["checks"]["certificate"]["expires_in_s"] > 300 * 86400
        observer.broker_ok = lambda: False
        response = await client.get("/readyz")
        assert response.status == 503
        assert (await response.json())["checks"]["broker"]["ok"] is False
    finally:
        await client.close()


async def test_readiness_follows_the_health_the_observer_was_given_and_the_stop(
    tmp_path: Path,
) -> None:
    attached = [True]
    observer = Observer(
        ensure_self_signed(tmp_path).cert,
        workers=1,
        broker="pipe",
        workers_alive=lambda: 7,
        broker_ok=lambda: attached[0],
    )
    observer.add_local(FakeProbe())  # type: ignore[arg-type]
    client = await client_for(observer)
    try:
        response = await client.get("/readyz")
        body = await response.json()
        assert response.status == 200
        assert body["checks"]["listening"]["workers_alive"] == 7
        attached[0] = False
        assert (await client.get("/readyz")).status == 503
        attached[0] = True
        observer.mark_stopping()
        response = await client.get("/readyz")
        assert response.status == 503
        assert (await response.json())["checks"]["listening"]["stopping"] is True
    finally:
        await client.close()
        await observer.stop()


async def test_an_expired_certificate_is_not_ready(tmp_path: Path) -> None:
    observer = Observer(expired_certificate(tmp_path), workers=1, broker="memory")
    observer.add_local(FakeProbe())  # type: ignore[arg-type]
    client = await client_for(observer)
    try:
        response = await client.get("/readyz")
        body = await response.json()
        assert response.status == 503
        assert body["checks"]["certificate"]["ok"] is False
        assert body["checks"]["certificate"]["expires_in_s"] < 0
        assert body["checks"]["listening"]["ok"] is True
    finally:
        await client.close()
        await observer.stop()


async def test_a_worker_that_does_not_answer_is_not_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(observer_module, "READY_TIMEOUT", 0.05)
    observer = Observer(None, workers=1, broker="pipe")
    ours, theirs = socket.socketpair()
    await observer.attach_worker(0, ours, pid=0)
    client = await client_for(observer)
    try:
        response = await client.get("/readyz")
        body = await response.json()
        assert response.status == 503
        assert body["checks"]["listening"]["workers_answering"] == 0
        assert body["checks"]["certificate"] == {"ok": True, "tls": "off"}
    finally:
        await client.close()
        await observer.stop()
        theirs.close()


async def test_status_and_metrics_include_this_processs_publishes(
    observed: tuple[Observer, FakeProbe],
) -> None:
    observer, probe = observed
    probe.delivered = 6
    broker = observer.count_publishes(NullBroker())
    broker.publish(Publication.of("1", ("news",), "created", "hello"))
    client = await client_for(observer)
    try:
        status = await (await client.get("/status")).json()
        assert status["totals"]["published"] == 1
        assert status["totals"]["delivered"] == 6
        assert status["connections"] == 3
        assert status["busiest"] == [{"app": "1", "channel": "<b>news</b>", "subscribers": 3}]
        assert status["recent"][0]["name"] == "created" and status["recent"][0]["size"] == 5
        assert "hello" not in json.dumps(status)  # never the payload
        text = await (await client.get("/metrics")).text()
        assert "sidecar_messages_published_total 1.0" in text
        assert "sidecar_messages_delivered_total 6.0" in text
        assert "news" not in text  # a channel name is never a label
    finally:
        await client.close()


async def test_dashboard_page_and_its_files_only(observed: tuple[Observer, FakeProbe]) -> None:
    observer, _ = observed
    client = await client_for(observer)
    try:
        page = await client.get("/dashboard")
        assert page.status == 200 and "<canvas" in await page.text()
        script = await client.get("/dashboard/dashboard.js")
        assert script.status == 200 and "EventSource" in await script.text()
        assert (await client.get("/dashboard/dashboard.css")).status == 200
        assert (await client.get("/dashboard/sidecar.yaml")).status == 404
        assert (await client.get("/dashboard/..%2Fadmin.py")).status == 404
    finally:
        await client.close()


async def read_event(response, name: str) -> dict:  # type: ignore[no-untyped-def]
    event = None
    while True:
        line = (await response.content.readline()).decode().strip()
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == name:
            return json.loads(line[6:])


async def test_dashboard_events_say_hello_then_tick(observed: tuple[Observer, FakeProbe]) -> None:
    observer, probe = observed
    client = await client_for(observer)
    try:
        response = await client.get("/dashboard/events")
        assert response.headers["Content-Type"] == "text/event-stream"
        hello = await read_event(response, "hello")
        assert hello["state"]["connections"] == 3 and hello["history"] == []
        assert observer.watchers == 1
        await observer.sample()  # the first sample only sets the base
        probe.delivered = 50
        await observer.sample()
        tick = await read_event(response, "tick")
        if tick["point"] is None:  # the first sample's own tick: no interval yet
            tick = await read_event(response, "tick")
        assert tick["point"]["delivered_per_s"] > 0
        assert tick["state"]["totals"]["delivered"] == 50
        response.close()
    finally:
        await client.close()


async def test_dashboard_events_end_when_the_observer_stops(
    observed: tuple[Observer, FakeProbe],
) -> None:
    observer, _ = observed
    client = await client_for(observer)
    try:
        response = await client.get("/dashboard/events")
        await read_event(response, "hello")
        await observer.stop()
        assert (await response.content.read()).strip() == b""  # ended, no more events
        assert observer.watchers == 0
    finally:
        await client.close()


# DNS rebinding: without a token, only the listener's own names (issue 13) ------------------


def test_admin_names_include_the_configured_host() -> None:
    assert admin_names("10.0.0.5") == {"localhost", "127.0.0.1", "[::1]", "10.0.0.5"}
    assert "[fd00::5]" in admin_names("fd00::5")


async def test_without_a_token_another_host_is_421(
    observed: tuple[Observer, FakeProbe],
) -> None:
    observer, _ = observed
    client = await client_for(observer)
    try:
        for host in ("localhost:9601", "127.0.0.1", "[::1]:9601"):
            assert (await client.get("/status", headers={"Host": host})).status == 200, host
        for path in ("/status", "/metrics", "/healthz", "/dashboard/events"):
            response = await client.get(path, headers={"Host": "rebound.evil.test:9601"})
            assert response.status == 421, path
            error = (await response.json())["error"]
            assert "admin listener" in error and "evil" not in error
    finally:
        await client.close()


async def test_with_a_token_any_host_is_answered(observed: tuple[Observer, FakeProbe]) -> None:
    observer, _ = observed
    client = await client_for(observer, TOKEN)
    try:
        headers = {"Host": "sidecar.internal:9601", "Authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/status", headers=headers)).status == 200
    finally:
        await client.close()


async def test_an_unknown_path_is_404_json(observed: tuple[Observer, FakeProbe]) -> None:
    observer, _ = observed
    client = await client_for(observer)
    try:
        response = await client.get("/nothing-here")
        assert response.status == 404
        assert response.content_type == "application/json"
        response = await client.post("/status")
        assert response.status == 405
        assert response.content_type == "application/json"
    finally:
        await client.close()
