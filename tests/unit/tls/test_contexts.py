"""sidecar.tls.contexts: the development certificate and the server's TLS context."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar.config.secrets import write_private
from sidecar.tls.contexts import CertificatePair, ensure_self_signed, server_context


def load(pair: CertificatePair) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pair.cert.read_bytes())


def write_cert(path: Path, not_after: datetime.datetime) -> bytes:
    """A localhost certificate that ends at `not_after`, written over `path`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - datetime.timedelta(days=30))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    data = cert.public_bytes(serialization.Encoding.PEM)
    path.write_bytes(data)
    return data


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str = "localhost"
) -> tuple[str | None, BaseException | None]:
    """Run a TLS handshake over a socketpair; the client's negotiated version, or the error."""
    left, right = socket.socketpair()
    left.settimeout(5)
    right.settimeout(5)
    server_error: list[BaseException] = []

    def serve() -> None:
        try:
            with server.wrap_socket(left, server_side=True) as tls:
                tls.sendall(tls.recv(5))  # echo one message
        except (ssl.SSLError, OSError) as exc:
            server_error.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with client.wrap_socket(right, server_hostname=server_hostname) as tls:
            tls.sendall(b"hello")
            assert tls.recv(5) == b"hello"
            return tls.version(), None
    except (ssl.SSLError, OSError) as exc:
        right.close()
        return None, exc
    finally:
        thread.join(timeout=5)
        left.close()


# ensure_self_signed -------------------------------------------------------------------------


def test_first_call_creates_and_second_reuses_the_same_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    first = ensure_self_signed(folder)
    assert first.created is True
    assert first.cert == folder / "localhost.crt"
    assert first.key == folder / "localhost.key"
    cert_bytes, key_bytes = first.cert.read_bytes(), first.key.read_bytes()
    second = ensure_self_signed(folder)
    assert second.created is False
    assert second.cert.read_bytes() == cert_bytes
    assert second.key.read_bytes() == key_bytes


def test_the_key_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    pair = ensure_self_signed(tmp_path)
    assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in pair.key.read_bytes()


def test_sans_cover_localhost_and_both_loopback_addresses(tmp_path: Path) -> None:
    cert = load(ensure_self_signed(tmp_path))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }


def test_the_certificate_is_valid_now_for_about_a_year(tmp_path: Path) -> None:
    cert = load(ensure_self_signed(tmp_path))
    now = datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_before_utc <= now
    assert datetime.timedelta(days=360) < cert.not_valid_after_utc - now
    assert cert.not_valid_after_utc - now <= datetime.timedelta(days=366)
    assert cert.issuer == cert.subject  # self-signed: one file to trust


def test_an_expired_certificate_is_regenerated(tmp_path: Path) -> None:
    first = ensure_self_signed(tmp_path)
    old = write_cert(first.cert, datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1))
    again = ensure_self_signed(tmp_path)
    assert again.created is True
    assert again.cert.read_bytes() != old
    assert load(again).not_valid_after_utc > datetime.datetime.now(datetime.UTC)


def test_a_certificate_about_to_expire_is_regenerated(tmp_path: Path) -> None:
    first = ensure_self_signed(tmp_path)
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=12)
    old = write_cert(first.cert, soon)
    again = ensure_self_signed(tmp_path)
    assert again.created is True
    assert again.cert.read_bytes() != old


def test_a_corrupt_certificate_is_regenerated(tmp_path: Path) -> None:
    first = ensure_self_signed(tmp_path)
    first.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    again = ensure_self_signed(tmp_path)
    assert again.created is True
    load(again)  # parses


def test_a_missing_key_regenerates_the_pair(tmp_path: Path) -> None:
    first = ensure_self_signed(tmp_path)
    old_cert = first.cert.read_bytes()
    first.key.unlink()
    again = ensure_self_signed(tmp_path)
    assert again.created is True
    assert again.key.exists()
    assert again.cert.read_bytes() != old_cert


def test_write_private_tightens_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# server_context -----------------------------------------------------------------------------


def test_server_context_loads_and_refuses_tls_below_1_2(tmp_path: Path) -> None:
    pair = ensure_self_signed(tmp_path)
    context = server_context(pair.cert, pair.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert all(c["protocol"] in ("TLSv1.2", "TLSv1.3") for c in context.get_ciphers())


def test_server_context_with_a_key_that_does_not_match_fails(tmp_path: Path) -> None:
    pair = ensure_self_signed(tmp_path / "a")
    other = ensure_self_signed(tmp_path / "b")
    with pytest.raises(ssl.SSLError):
        server_context(pair.cert, other.key)


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_a_client_trusting_the_certificate_file_completes_a_handshake(
    tmp_path: Path, hostname: str
) -> None:
    pair = ensure_self_signed(tmp_path)
    client = ssl.create_default_context(cafile=str(pair.cert))
    version, error = handshake(server_context(pair.cert, pair.key), client, hostname)
    assert error is None
    assert version in ("TLSv1.2", "TLSv1.3")


def test_a_client_that_does_not_trust_the_certificate_fails(tmp_path: Path) -> None:
    pair = ensure_self_signed(tmp_path / "server")
    stranger = ensure_self_signed(tmp_path / "other")
    client = ssl.create_default_context(cafile=str(stranger.cert))
    version, error = handshake(server_context(pair.cert, pair.key), client)
    assert version is None
    assert isinstance(error, ssl.SSLCertVerificationError)


def test_a_wrong_hostname_fails_verification(tmp_path: Path) -> None:
    pair = ensure_self_signed(tmp_path)
    client = ssl.create_default_context(cafile=str(pair.cert))
    version, error = handshake(server_context(pair.cert, pair.key), client, "example.com")
    assert version is None
    assert isinstance(error, ssl.SSLCertVerificationError)


def tls_1_1_context(cafile: Path | None = None, server: bool = False) -> ssl.SSLContext:
    """A context that speaks TLS 1.0-1.1 only (OpenSSL's security level lowered to allow it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.minimum_version = ssl.TLSVersion.TLSv1
        if not server:
            context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot speak TLS 1.1 at all")
    if cafile is not None:
        context.load_verify_locations(cafile=str(cafile))
    return context


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_tls_1_1_client_is_refused_by_the_server(tmp_path: Path) -> None:
    pair = ensure_self_signed(tmp_path)
    client = tls_1_1_context(pair.cert)
    # Control: this client does complete a TLS 1.1 handshake with a permissive server, so the
    # refusal below is the server context's doing.
    permissive = tls_1_1_context(server=True)
    permissive.load_cert_chain(pair.cert, pair.key)
    version, error = handshake(permissive, client)
    if error is not None:
        pytest.skip(f"this OpenSSL refuses TLS 1.1 on both sides: {error}")
    assert version == "TLSv1.1"

    version, error = handshake(server_context(pair.cert, pair.key), client)
    assert version is None
    assert isinstance(error, ssl.SSLError)
    assert "PROTOCOL_VERSION" in str(error).upper()


def test_a_tls_1_2_only_client_is_accepted(tmp_path: Path) -> None:
    pair = ensure_self_signed(tmp_path)
    client = ssl.create_default_context(cafile=str(pair.cert))
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    version, error = handshake(server_context(pair.cert, pair.key), client)
    assert error is None
    assert version == "TLSv1.2"
