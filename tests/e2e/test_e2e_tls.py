"""The TLS port of the real process: file reloads under a connected client, SNI, the handshake
deadline, the protocol versions, HSTS, and X-Forwarded-* from trusted proxies (tls off)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from sidecar.api.client import SidecarClient
from tests.support.certs import Made, make_certificate, served_certificate
from tests.support.process import SidecarProcess, base_config, free_port

pytestmark = pytest.mark.e2e


def trusting(*made: Made) -> ssl.SSLContext:
    return ssl.create_default_context(cadata="".join(m.cert_pem.decode() for m in made))


def served_serial(port: int, server_name: str = "localhost") -> int:
    return served_certificate(port, server_name).serial_number


def install(made: Made, cert: Path, key: Path) -> None:
    """Replace both files the way a renewal tool does: write aside, rename over."""
    for data, path in ((made.key_pem, key), (made.cert_pem, cert)):
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)


async def every_worker_serves(port: int, serial: int, timeout: float = 20) -> None:
    """New handshakes (spread over the workers by the kernel) all get `serial`."""
    deadline = time.monotonic() + timeout
    while True:
        serials = [served_serial(port) for _ in range(12)]
        if set(serials) == {serial}:
            return
        assert time.monotonic() < deadline, f"still served: {set(serials)}"
        await asyncio.sleep(0.1)


async def subscribed_socket(
    session: aiohttp.ClientSession, sidecar: SidecarProcess, context: ssl.SSLContext
) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(sidecar.ws_url(), ssl=context)
    assert json.loads(await ws.receive_str(timeout=5))["event"] == "pusher:connection_established"
    await ws.send_json({"event": "pusher:subscribe", "data": {"channel": "news"}})
    assert "subscription_succeeded" in (await ws.receive_str(timeout=5))
    return ws


async def workers_loaded(sidecar: SidecarProcess, workers: int = 2) -> None:
    """Wait until every worker has loaded its certificate (they start after `ready`)."""
    deadline = time.monotonic() + 15
    while sum(line.get("msg") == "certificate loaded" for line in sidecar.log_lines()) < workers:
        assert time.monotonic() < deadline, sidecar.stderr()
        await asyncio.sleep(0.05)


def publish(sidecar: SidecarProcess, data: str) -> None:
    with SidecarClient(sidecar.socket, app_id=sidecar.app["id"]) as client:
        client.trigger("news", "item", data)


async def received(ws: aiohttp.ClientWebSocketResponse) -> str:
    return json.loads(await ws.receive_str(timeout=5))["data"]


def files_config(cert: Path, key: Path, **tls: Any) -> dict[str, Any]:
    return {"tls": {"mode": "files", "cert": str(cert), "key": str(key), **tls}}


# Files mode ----------------------------------------------------------------------------------


async def test_changed_files_are_served_to_new_handshakes_and_old_connections_stay(
    start_sidecar: Callable[..., SidecarProcess], tmp_path: Path
) -> None:
    first, second = make_certificate("localhost"), make_certificate("localhost")
    cert, key = first.write(tmp_path / "tls", "site")
    sidecar = start_sidecar(**files_config(cert, key, reload_interval=0.2))
    await workers_loaded(sidecar)
    assert served_serial(sidecar.port) == first.serial
    async with aiohttp.ClientSession() as session:
        ws = await subscribed_socket(session, sidecar, trusting(first))
        install(second, cert, key)  # noticed by each worker's file check
        await every_worker_serves(sidecar.port, second.serial)
        publish(sidecar, "after the file change")
        assert await received(ws) == "after the file change"
        # The first connection still runs on its first handshake; a new one trusts the new.
        peer = ws.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert x509.load_der_x509_certificate(peer).serial_number == first.serial
        fresh = await subscribed_socket(session, sidecar, trusting(second))
        await fresh.close()
        await ws.close()
    serial = f"{second.serial:x}"
    reloads = [line for line in sidecar.log_lines() if line.get("serial") == serial]
    assert [line["msg"] for line in reloads] == ["certificate reloaded"] * 2  # each worker


async def test_sighup_reloads_every_worker_at_once(
    start_sidecar: Callable[..., SidecarProcess], tmp_path: Path
) -> None:
    first, second = make_certificate("localhost"), make_certificate("localhost")
    cert, key = first.write(tmp_path / "tls", "site")
    sidecar = start_sidecar(**files_config(cert, key, reload_interval=3600))
    await workers_loaded(sidecar)
    async with aiohttp.ClientSession() as session:
        ws = await subscribed_socket(session, sidecar, trusting(first))
        install(second, cert, key)
        await asyncio.sleep(0.5)
        assert served_serial(sidecar.port) == first.serial  # not checked again for an hour
        assert sidecar.proc is not None
        os.kill(sidecar.proc.pid, signal.SIGHUP)  # the supervisor passes it to every worker
        await every_worker_serves(sidecar.port, second.serial)
        publish(sidecar, "after SIGHUP")
        assert await received(ws) == "after SIGHUP"
        await ws.close()
    assert sidecar.proc.poll() is None


async def test_a_broken_pair_keeps_the_current_certificate(
    start_sidecar: Callable[..., SidecarProcess], tmp_path: Path
) -> None:
    first, other = make_certificate("localhost"), make_certificate("localhost")
    cert, key = first.write(tmp_path / "tls", "site")
    sidecar = start_sidecar(workers=1, **files_config(cert, key, reload_interval=0.1))
    install(Made(other.cert_pem, first.key_pem, other.serial), cert, key)  # a key left behind

    def complaints() -> list[dict[str, Any]]:
        return [line for line in sidecar.log_lines() if line.get("level") == "error"]

    deadline = time.monotonic() + 10
    while not complaints():
        assert time.monotonic() < deadline, sidecar.stderr()
        await asyncio.sleep(0.1)
    assert "is not the key of" in complaints()[0]["reason"]
    assert served_serial(sidecar.port) == first.serial


async def test_sni_chooses_among_several_certificates(
    start_sidecar: Callable[..., SidecarProcess], tmp_path: Path
) -> None:
    default, other = make_certificate("localhost"), make_certificate("other.test", "*.apps.test")
    cert, key = default.write(tmp_path / "tls", "default")
    other_cert, other_key = other.write(tmp_path / "tls", "other")
    extra = [{"cert": str(other_cert), "key": str(other_key)}]
    sidecar = start_sidecar(**files_config(cert, key, certificates=extra))
    assert served_serial(sidecar.port, "localhost") == default.serial
    assert served_serial(sidecar.port, "other.test") == other.serial
    assert served_serial(sidecar.port, "chat.apps.test") == other.serial
    assert served_serial(sidecar.port, "unknown.test") == default.serial


async def test_a_start_with_a_mismatched_pair_says_which_files(
    start_sidecar: Callable[..., SidecarProcess], tmp_path: Path
) -> None:
    cert, _ = make_certificate("localhost").write(tmp_path / "tls", "a")
    _, key = make_certificate("localhost").write(tmp_path / "tls", "b")
    with pytest.raises(RuntimeError, match=r"cannot start: .*b.key is not the key of .*a.crt"):
        start_sidecar(**files_config(cert, key))


# Policy: one sidecar for all of these -----------------------------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    folder = tmp_path_factory.mktemp("strict")
    tls = {
        "mode": "self-signed",
        "dir": str(folder / "certs"),
        "handshake_timeout": 0.5,
        "hsts": {"max_age": 600, "include_subdomains": True},
    }
    process = SidecarProcess(folder, base_config(folder, tls=tls)).start()
    yield process
    process.stop()


async def test_a_stalled_handshake_is_cut_after_the_timeout(strict: SidecarProcess) -> None:
    with socket.create_connection(("127.0.0.1", strict.port), timeout=15) as silent:
        # A ClientHello that never finishes, then nothing: the server must hang up.
        silent.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        try:
            data = silent.recv(100)
        except ConnectionResetError:
            data = b""
        assert data == b""
    # Meanwhile and afterwards, real clients are served.
    assert served_serial(strict.port) > 0


def versioned(version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = version
    context.maximum_version = version
    return context


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tls_1_2_and_1_3_are_accepted_with_aead_ciphers(
    strict: SidecarProcess, version: ssl.TLSVersion
) -> None:
    with (
        socket.create_connection(("127.0.0.1", strict.port), timeout=5) as sock,
        versioned(version).wrap_socket(sock, server_hostname="localhost") as tls,
    ):
        name, protocol, _ = tls.cipher()  # type: ignore[misc]
    assert protocol == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
    assert "GCM" in name or "CHACHA20" in name
    if version == ssl.TLSVersion.TLSv1_2:
        assert name.startswith("ECDHE-")  # forward secrecy


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_tls_1_1_is_refused(strict: SidecarProcess) -> None:
    context = versioned(ssl.TLSVersion.TLSv1_1)
    try:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    except ssl.SSLError:
        pytest.skip("this OpenSSL cannot speak TLS 1.1 at all")
    # (test_tls.py shows this client completing TLS 1.1 with a permissive server.)
    with (
        socket.create_connection(("127.0.0.1", strict.port), timeout=5) as sock,
        pytest.raises(ssl.SSLError),  # an alert, or the server hanging up on the hello
    ):
        context.wrap_socket(sock, server_hostname="localhost")
    assert served_serial(strict.port) > 0


async def test_hsts_is_sent_on_https_responses_when_configured(strict: SidecarProcess) -> None:
    context = ssl.create_default_context(cafile=str(strict.cert))
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"https://localhost:{strict.port}/nowhere", ssl=context) as response,
    ):
        assert response.status == 404
        assert response.headers["Strict-Transport-Security"] == "max-age=600; includeSubDomains"


# tls off behind a terminator -----------------------------------------------------------------


async def test_tls_off_believes_forwarded_proto_from_a_trusted_proxy(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    sidecar = start_sidecar(
        tls={"mode": "off", "hsts": True},
        listen={"host": "127.0.0.1", "port": free_port(), "trusted_proxies": ["127.0.0.1"]},
    )
    url = f"http://127.0.0.1:{sidecar.port}/nowhere"
    async with aiohttp.ClientSession() as session:
        # The proxy in front says the client used https: an HTTPS response, so HSTS.
        headers = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
        async with session.get(url, headers=headers) as response:
            assert response.status == 404
            assert "Strict-Transport-Security" in response.headers
        # It says nothing: plain http. (An untrusted peer: tests/unit/protocol/test_forwarded.py.)
        async with session.get(url, headers={"X-Forwarded-For": "203.0.113.9"}) as response:
            assert response.status == 404
            assert "Strict-Transport-Security" not in response.headers
        # No certificates to reload: SIGHUP is harmless, as everywhere.
        assert sidecar.proc is not None
        os.kill(sidecar.proc.pid, signal.SIGHUP)
        await asyncio.sleep(0.3)
        async with session.get(url) as response:
            assert response.status == 404
        assert sidecar.proc.poll() is None


@pytest.mark.parametrize("mode", ["off", "self-signed"])
async def test_sighup_is_harmless_to_a_single_process(
    start_sidecar: Callable[..., SidecarProcess], mode: str
) -> None:
    sidecar = start_sidecar(workers=1, tls={"mode": mode})
    assert sidecar.proc is not None
    os.kill(sidecar.proc.pid, signal.SIGHUP)
    await asyncio.sleep(0.3)
    assert sidecar.proc.poll() is None
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5):
        pass
