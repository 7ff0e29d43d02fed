"""TLS for the browser-facing listener: the development certificate and the server context."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sidecar.config.secrets import write_private

SELF_SIGNED_NAMES = ("localhost",)
SELF_SIGNED_IPS = ("127.0.0.1", "::1")
# Browsers cap publicly trusted certificates at about a year; a local one can live longer, but
# a short life keeps a leaked development key from being useful for long.
SELF_SIGNED_DAYS = 365


@dataclass(frozen=True)
class CertificatePair:
    cert: Path
    key: Path
    created: bool = False


def ensure_self_signed(directory: str | os.PathLike[str]) -> CertificatePair:
    """The development certificate for localhost, made on first run and reused after.

    It is its own issuer and carries no key-usage restriction, so a client can trust the one
    file (NODE_EXTRA_CA_CERTS, Python's cafile, a browser's authority list) directly.
    """
    folder = Path(directory)
    cert_path = folder / "localhost.crt"
    key_path = folder / "localhost.key"
    if cert_path.exists() and key_path.exists() and _still_valid(cert_path):
        return CertificatePair(cert_path, key_path)
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sidecar development certificate"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in SELF_SIGNED_NAMES]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SELF_SIGNED_IPS]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CertificatePair(cert_path, key_path, created=True)


def _still_valid(cert_path: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        return False
    remaining = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return remaining > datetime.timedelta(days=1)


# TLS 1.2 with forward secrecy and AEAD ciphers only (TLS 1.3 suites are all of that already);
# what Mozilla's "intermediate" profile leaves once CBC and finite-field DHE are dropped.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def policy_context() -> ssl.SSLContext:
    """A server context with the policy and no certificate yet."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_ciphers(TLS12_CIPHERS)
    return context


def server_context(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> ssl.SSLContext:
    """TLS 1.2 and 1.3 only, ECDHE with AEAD ciphers, no compression, one certificate."""
    context = policy_context()
    context.load_cert_chain(cert, key, password=_no_password)
    return context


def load_pem_pair(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """Put a certificate chain and key held in memory into `context` (in place).

    `load_cert_chain` reads files only; handing it the very bytes already checked (rather than
    the paths again) means a file replaced in between cannot slip an unchecked pair in. On Linux
    the bytes go through anonymous memory files, so the key never touches a disk.
    """
    with _memory_file(cert_pem) as cert_path, _memory_file(key_pem) as key_path:
        context.load_cert_chain(cert_path, key_path, password=_no_password)


def _no_password() -> bytes:
    # An encrypted key would otherwise make OpenSSL prompt on the terminal.
    return b""


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("sidecar-pem", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="sidecar-", suffix=".pem")  # 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        os.unlink(path)
