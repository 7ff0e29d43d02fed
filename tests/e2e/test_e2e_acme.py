"""tls.mode acme end to end: the real `sidecar run` against pebble, Let's Encrypt's test CA.

Pebble validates HTTP-01 for real: it resolves every name to 127.0.0.1 and fetches the
challenge from the sidecar's plain-HTTP port. Default workers (2 here): the supervisor orders,
the workers serve and reload.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from sidecar.api.client import SidecarClient
from tests.support.certs import served_certificate
from tests.support.pebble import Pebble
from tests.support.process import PusherJs, SidecarProcess, free_port, sidecar_command

pytestmark = [pytest.mark.e2e, pytest.mark.pebble]

DOMAINS = ["localhost", "sidecar.test"]


@pytest.fixture
def pebbles(tmp_path: Path) -> Iterator[Callable[..., Pebble]]:
    made: list[Pebble] = []

    def make(http_port: int, start: bool = True, **options: Any) -> Pebble:
        pebble = Pebble(tmp_path / f"pebble{len(made)}", http_port, **options)
        pebble.workdir.mkdir(parents=True, exist_ok=True)
        made.append(pebble)
        return pebble.start() if start else pebble

    yield make
    for pebble in made:
        pebble.stop()


def acme_config(pebble: Pebble, **acme: Any) -> dict[str, Any]:
    return {
        "http": {"port": pebble.http_port},
        "tls": {
            "mode": "acme",
            "acme": {
                "directory": pebble.directory,
                "ca_bundle": str(pebble.ca_bundle),
                "email": "ops@sidecar.test",
                "domains": DOMAINS,
                "retry_min": 0.3,
                "retry_max": 1.0,
                **acme,
            },
        },
    }


def verified_handshake(port: int, root_pem: str, server_name: str) -> str | None:
    """The TLS version when the chain verifies to `root_pem` for `server_name`."""
    context = ssl.create_default_context(cadata=root_pem)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname=server_name) as tls,
    ):
        return tls.version()


def logs(sidecar: SidecarProcess, message: str) -> list[dict[str, Any]]:
    return [line for line in sidecar.log_lines() if line.get("msg") == message]


async def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (OSError, AssertionError):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.1)


def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """A plain-HTTP GET that does not follow redirects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


# Issuance ------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["auto", 1])  # the supervisor orders, or the one process
async def test_a_certificate_is_issued_at_start_and_served(
    start_sidecar: Callable[..., SidecarProcess], pebbles: Callable[..., Pebble], workers: Any
) -> None:
    pebble = pebbles(free_port())
    started = time.monotonic()
    sidecar = start_sidecar(workers=workers, **acme_config(pebble))
    root = pebble.root()
    await eventually(lambda: verified_handshake(sidecar.port, root, "localhost"), what="TLS")
    elapsed = time.monotonic() - started
    print(f"\nsidecar run -> certificate served (pebble, workers {workers}): {elapsed:.2f} s")

    for name in DOMAINS:  # one certificate, both names, chained to pebble's root
        assert verified_handshake(sidecar.port, root, name) in ("TLSv1.2", "TLSv1.3")
    cert = served_certificate(sidecar.port)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(DOMAINS)

    folder = sidecar.workdir / "certs" / "acme"
    for secret in ("account.key", "localhost.key", "account.json"):
        assert stat.S_IMODE((folder / secret).stat().st_mode) == 0o600
    (issued,) = logs(sidecar, "certificate issued")
    assert issued["names"] == DOMAINS

    # Challenges are answered, never redirected; anything else on the plain port is.
    status, _, body = http_get(pebble.http_port, "/.well-known/acme-challenge/unknown-token")
    assert status == 404 and b"ACME" in body
    status, headers, _ = http_get(pebble.http_port, "/app/key?protocol=7")
    assert status == 308
    assert headers["Location"] == f"https://127.0.0.1:{sidecar.port}/app/key?protocol=7"

    certs = subprocess.run(
        [*sidecar_command(), "certs", "--config", str(sidecar.config_path)],
        cwd=sidecar.workdir,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert certs.returncode == 0, certs.stderr
    assert "names     localhost, sidecar.test" in certs.stdout
    assert "issuer    Pebble Intermediate CA" in certs.stdout
    assert "by sidecar over ACME" in certs.stdout


async def test_a_restart_reuses_the_certificate_without_asking_the_ca(
    start_sidecar: Callable[..., SidecarProcess], pebbles: Callable[..., Pebble]
) -> None:
    pebble = pebbles(free_port())
    first = start_sidecar(**acme_config(pebble))
    serial = served_certificate(first.port).serial_number
    first.stop()
    pebble.stop()  # the CA is gone: the certificate on disk must do
    again = start_sidecar(first.workdir, **acme_config(pebble))
    assert served_certificate(again.port).serial_number == serial
    assert logs(again, "certificate issued") == []


# Renewal --------------------------------------------------------------------------------------


@pytest.mark.node
async def test_renewal_swaps_the_certificate_under_a_connected_pusher_js_client(
    start_sidecar: Callable[..., SidecarProcess], pebbles: Callable[..., Pebble]
) -> None:
    # 12 s certificates are renewed at half their life (certbot's rule for short ones).
    pebble = pebbles(free_port(), validity=12)
    sidecar = start_sidecar(**acme_config(pebble))
    root_file = sidecar.workdir / "pebble-root.pem"
    root_file.write_text(pebble.root())
    first = served_certificate(sidecar.port).serial_number

    client = await PusherJs.start(root_file)
    try:
        client.send(cmd="connect", id="a", key=sidecar.app["key"], options=sidecar.pusher_options())
        await client.expect(lambda r: r["type"] == "connected" and r["id"] == "a")
        client.send(cmd="subscribe", id="a", channel="ticks")
        await client.expect(lambda r: r["type"] == "subscribed")

        sent = 0
        with SidecarClient(sidecar.socket, app_id=sidecar.app["id"]) as publisher:
            deadline = time.monotonic() + 40
            while served_certificate(sidecar.port).serial_number == first:
                assert time.monotonic() < deadline, "the certificate was never renewed"
                publisher.trigger("ticks", "tick", f"tick {sent}")
                sent += 1
                await asyncio.sleep(0.3)
            publisher.trigger("ticks", "tick", f"tick {sent}")  # after the swap, same connection
            sent += 1
            ticks = await client.expect(lambda r: r["type"] == "event", count=sent)
        assert [t["data"] for t in ticks] == [f"tick {i}" for i in range(sent)]
        states = [r["current"] for r in client.reports if r["type"] == "state" and r["id"] == "a"]
        assert states[states.index("connected") :] == ["connected"]  # never dropped since

        # A new client handshakes with the new certificate, which chains to the same root.
        client.send(cmd="connect", id="b", key=sidecar.app["key"], options=sidecar.pusher_options())
        await client.expect(lambda r: r["type"] == "connected" and r["id"] == "b")
    finally:
        await client.close()
    assert len(logs(sidecar, "certificate issued")) >= 2
    assert logs(sidecar, "certificate reloaded")  # by the workers, in place


# A CA that refuses -------------------------------------------------------------------------


async def test_a_start_without_a_certificate_waits_for_the_ca_and_says_why(
    start_sidecar: Callable[..., SidecarProcess], pebbles: Callable[..., Pebble]
) -> None:
    pebble = pebbles(free_port(), start=False)
    sidecar = start_sidecar(wait=False, **acme_config(pebble))
    (waiting,) = await eventually(
        lambda: logs(sidecar, "no usable certificate; requesting one (the TLS port waits for it)"),
        what="the waiting line",
    )
    assert "does not exist" in waiting["reason"]
    assert waiting["domains"] == DOMAINS
    failures = await eventually(
        lambda: logs(sidecar, "certificate request failed"), what="a failure"
    )
    assert failures[0]["reason"].startswith(f"cannot reach {pebble.directory}: ")
    assert "refused" in failures[0]["reason"].lower()
    pebble.start()
    sidecar.wait_ready(timeout=20)
    assert verified_handshake(sidecar.port, pebble.root(), "sidecar.test")


async def test_bad_nonces_at_a_high_rate_are_retried_until_issued(
    start_sidecar: Callable[..., SidecarProcess], pebbles: Callable[..., Pebble]
) -> None:
    pebble = pebbles(free_port(), nonce_reject_percent=60)
    sidecar = start_sidecar(**acme_config(pebble))
    (issued,) = logs(sidecar, "certificate issued")
    # Some of the ~12 requests of an order must have met a refused nonce at this rate (the
    # chance that none did is under 0.01%); each was retried, and the order went through.
    assert issued["bad_nonces_retried"] > 0
    assert verified_handshake(sidecar.port, pebble.root(), "localhost")


async def test_a_ca_that_is_down_then_forgot_the_account_is_recovered_from(
    start_sidecar: Callable[..., SidecarProcess], pebbles: Callable[..., Pebble]
) -> None:
    pebble = pebbles(free_port(), validity=10)
    sidecar = start_sidecar(**acme_config(pebble))
    first = served_certificate(sidecar.port).serial_number
    pebble.stop()
    await eventually(lambda: logs(sidecar, "certificate request failed"), what="a failed renewal")
    assert served_certificate(sidecar.port).serial_number == first  # still serving
    (failure, *_) = logs(sidecar, "certificate request failed")
    assert "refused" in failure["reason"].lower() and "current_expires" in failure

    pebble.start()  # a new CA state: our saved account is unknown there
    root = pebble.root()
    await eventually(lambda: verified_handshake(sidecar.port, root, "localhost"), what="renewal")
    assert served_certificate(sidecar.port).serial_number != first
    assert any(
        line.get("msg") == "the CA does not know our account; registering again"
        for line in sidecar.log_lines()
    )


async def test_external_account_binding(
    start_sidecar: Callable[..., SidecarProcess], pebbles: Callable[..., Pebble]
) -> None:
    hmac_key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
    pebble = pebbles(free_port(), eab={"kid-1": hmac_key})
    refused = start_sidecar(wait=False, **acme_config(pebble))
    (failure, *_) = await eventually(
        lambda: logs(refused, "certificate request failed"), what="a refusal"
    )
    assert "external account binding" in failure["reason"]
    assert hmac_key not in refused.stderr()
    refused.stop()

    bound = start_sidecar(**acme_config(pebble, eab={"kid": "kid-1", "hmac_key": hmac_key}))
    assert verified_handshake(bound.port, pebble.root(), "localhost")
    assert hmac_key not in bound.stderr()
    account = json.loads((bound.workdir / "certs" / "acme" / "account.json").read_text())
    assert account["directory"] == pebble.directory
    assert os.path.exists(bound.workdir / "certs" / "acme" / "localhost.crt")
