"""sidecar.tls.acme and acme_client without a CA: failure reasons, what counts as usable,
back-off, the challenge route, and the issue/renew loop over a fake order."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from acme import challenges, errors, messages
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from sidecar.config.tls import AcmeConfig, TlsConfig
from sidecar.server.prepare import redirect_application
from sidecar.tls.acme import AcmeFiles, AcmeService, in_daemon_thread, usable_certificate
from sidecar.tls.acme_client import AcmeClient, AcmeFailure, ChallengeStore, describe_failure
from tests.support.certs import make_certificate

DIRECTORY = "https://ca.test/dir"


def tls_config(folder: Path, **acme: Any) -> TlsConfig:
    settings = AcmeConfig(
        directory=DIRECTORY, domains=("a.test", "b.test"), retry_min=0.01, retry_max=0.04
    )
    return TlsConfig(mode="acme", dir=str(folder), acme=dataclasses.replace(settings, **acme))


def sign_for(key_pem: bytes, domains: tuple[str, ...], seconds: float = 3600) -> str:
    """What a CA would send back: a certificate for `domains` on the key of the CSR."""
    key = serialization.load_pem_private_key(key_pem, None)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake CA")]))
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(seconds=seconds))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False
        )
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class FakeOrders:
    """Stands in for AcmeClient.order: fails `failures` times, then signs."""

    def __init__(self, failures: int = 0, seconds: float = 3600) -> None:
        self.failures = failures
        self.seconds = seconds
        self.calls = 0

    def __call__(self, key_pem: bytes, domains: tuple[str, ...]) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise AcmeFailure(f"rateLimited: too many orders ({self.calls})")
        return sign_for(key_pem, domains, self.seconds)


# describe_failure ----------------------------------------------------------------------------


def test_a_problem_document_gives_its_code_and_detail() -> None:
    error = messages.Error.with_code("badNonce", detail="JWS has an invalid anti-replay nonce")
    assert describe_failure(error, DIRECTORY) == "badNonce: JWS has an invalid anti-replay nonce"


def test_a_failed_validation_names_each_domain_and_the_cas_reason() -> None:
    problem = messages.Error.with_code("connection", detail="Connection refused")
    chall = challenges.HTTP01(token=b"x" * 32)
    body = messages.ChallengeBody(chall=chall, uri="https://ca/c", error=problem)
    authz = messages.Authorization(
        identifier=messages.Identifier(typ=messages.IDENTIFIER_FQDN, value="a.test"),
        challenges=[body],
        status=messages.STATUS_INVALID,
    )
    failure = errors.ValidationError([messages.AuthorizationResource(body=authz, uri="u")])
    assert describe_failure(failure, DIRECTORY) == (
        "validation failed: a.test: connection: Connection refused"
    )


def test_network_failures_say_which_directory_and_why() -> None:
    cause = ConnectionRefusedError(111, "Connection refused")
    try:
        try:
            raise cause
        except OSError as exc:
            raise requests.exceptions.ConnectionError("Max retries exceeded") from exc
    except requests.exceptions.ConnectionError as exc:
        text = describe_failure(exc, DIRECTORY)
    assert text == f"cannot reach {DIRECTORY}: Connection refused"
    ssl_error = requests.exceptions.SSLError("certificate verify failed")
    assert "tls.acme.ca_bundle" in describe_failure(ssl_error, DIRECTORY)
    assert "did not finish" in describe_failure(errors.TimeoutError(), DIRECTORY)


def test_the_client_wraps_anything_in_acme_failure(tmp_path: Path) -> None:
    settings = AcmeConfig(directory="https://127.0.0.1:1/dir", domains=("a.test",))
    client = AcmeClient(settings, tmp_path, ChallengeStore())
    with pytest.raises(AcmeFailure, match=r"^cannot reach https://127.0.0.1:1/dir: "):
        client.order(b"", ("a.test",))
    key = tmp_path / "account.key"
    assert key.stat().st_mode & 0o777 == 0o600  # made before the first request


# usable_certificate --------------------------------------------------------------------------


def store(files: AcmeFiles, chain: str, key_pem: bytes, directory: str = DIRECTORY) -> None:
    files.folder.mkdir(parents=True, exist_ok=True)
    files.cert.write_text(chain)
    files.key.write_bytes(key_pem)
    files.record.write_text(json.dumps({"directory": directory}))


def test_usable_certificate_says_why_not(tmp_path: Path) -> None:
    tls = tls_config(tmp_path)
    assert tls.acme is not None
    files = AcmeFiles.for_config(tls)
    info, why = usable_certificate(files, tls.acme)
    assert info is None and "does not exist" in why

    made = make_certificate("a.test", "b.test")
    store(files, made.cert_pem.decode(), made.key_pem)
    info, why = usable_certificate(files, tls.acme)
    assert info is not None and why == "ok"

    store(files, made.cert_pem.decode(), made.key_pem, directory="https://other/dir")
    assert "was not issued by https://ca.test/dir" in usable_certificate(files, tls.acme)[1]

    narrow = make_certificate("a.test")
    store(files, narrow.cert_pem.decode(), narrow.key_pem)
    assert usable_certificate(files, tls.acme)[1].endswith("does not cover b.test")

    old_start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10)
    expired = make_certificate("a.test", "b.test", days=1, not_before=old_start)
    store(files, expired.cert_pem.decode(), expired.key_pem)
    assert " expired on " in usable_certificate(files, tls.acme)[1]

    store(files, made.cert_pem.decode(), narrow.key_pem)
    assert "is not the key of" in usable_certificate(files, tls.acme)[1]


# Back-off and the loop -----------------------------------------------------------------------


def test_backoff_doubles_from_retry_min_up_to_retry_max(tmp_path: Path) -> None:
    service = AcmeService(tls_config(tmp_path, retry_min=10.0, retry_max=60.0))
    delays = []
    for failures in range(1, 6):
        service.failures = failures
        delays.append(service.backoff(peek=True))
    assert delays == [10, 20, 40, 60, 60]
    service.failures = 3
    assert 36 <= service.backoff() <= 44  # jittered by a tenth either way


async def test_ensure_retries_until_issued_and_logs_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = AcmeService(tls_config(tmp_path))
    orders = FakeOrders(failures=2)
    service.client.order = orders  # type: ignore[method-assign]
    told: list[str] = []
    service.on_new_certificate.append(lambda: told.append("new"))
    with caplog.at_level(logging.INFO, "sidecar.acme"):
        info = await asyncio.wait_for(service.ensure(), 10)
    assert info.names == ("a.test", "b.test")
    assert orders.calls == 3 and told == ["new"]
    failed = [r for r in caplog.records if r.getMessage() == "certificate request failed"]
    assert [r.reason for r in failed] == [  # type: ignore[attr-defined]
        "rateLimited: too many orders (1)",
        "rateLimited: too many orders (2)",
    ]
    files = service.files
    assert files.key.stat().st_mode & 0o777 == 0o600
    assert json.loads(files.record.read_text())["directory"] == DIRECTORY
    # Next start: the certificate on disk is used, the CA is not asked.
    again = AcmeService(tls_config(tmp_path))
    again.client.order = FakeOrders(failures=99)  # type: ignore[method-assign]
    assert (await again.ensure()).fingerprint == info.fingerprint


async def test_renewal_keeps_the_key_and_replaces_the_certificate(tmp_path: Path) -> None:
    service = AcmeService(tls_config(tmp_path))
    service.client.order = FakeOrders(seconds=2)  # type: ignore[method-assign]
    first = await service.ensure()
    key_before = service.files.key.read_bytes()
    renewed = asyncio.Event()
    service.on_new_certificate.append(renewed.set)
    service.start()  # renewal due after one second (half of two)
    try:
        await asyncio.wait_for(renewed.wait(), 10)
    finally:
        await service.stop()
    assert service.current is not None and service.current.serial != first.serial
    assert service.files.key.read_bytes() == key_before


# The challenge route and the thread ----------------------------------------------------------


async def test_challenges_are_answered_and_never_redirected() -> None:
    store = ChallengeStore()
    store.add("tok", "tok.thumbprint")
    async with TestClient(TestServer(redirect_application(8443, store))) as client:
        answered = await client.get("/.well-known/acme-challenge/tok", allow_redirects=False)
        assert (answered.status, await answered.text()) == (200, "tok.thumbprint")
        unknown = await client.get("/.well-known/acme-challenge/other", allow_redirects=False)
        assert unknown.status == 404
        assert await unknown.json() == {"error": "no such ACME challenge"}
        elsewhere = await client.get("/page?x=1", allow_redirects=False)
        assert elsewhere.status == 308
        assert elsewhere.headers["Location"].endswith(":8443/page?x=1")
    store.remove("tok")
    assert store.get("tok") is None


async def test_without_acme_the_challenge_path_redirects_too() -> None:
    async with TestClient(TestServer(redirect_application(443))) as client:
        response = await client.get("/.well-known/acme-challenge/tok", allow_redirects=False)
        assert response.status == 308


async def test_in_daemon_thread_returns_and_raises() -> None:
    names: list[str] = []

    def work() -> int:
        names.append(threading.current_thread().name)
        assert threading.current_thread().daemon
        return 42

    assert await in_daemon_thread(work) == 42
    assert names == ["sidecar-acme"]

    def fail() -> None:
        raise AcmeFailure("no")

    with pytest.raises(AcmeFailure, match="no"):
        await in_daemon_thread(fail)
