"""Pebble, Let's Encrypt's test CA (Debian package `pebble`), run by the ACME tests.

Pebble ships no listener certificate, so each instance gets a fresh CA and a leaf for
127.0.0.1/localhost (the `ca_bundle` a sidecar trusts the directory with). Its issuing root is
new at every start and only available from the management port. `pebble-challtestsrv` runs
beside it as its DNS server so every name resolves to 127.0.0.1, IPv4 only: the sidecar's
plain-HTTP listener answers the HTTP-01 challenges on `http_port`.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.process import free_port, missing_tool


def require_pebble() -> str:
    pebble = shutil.which("pebble")
    if pebble is None or shutil.which("pebble-challtestsrv") is None:
        missing_tool("pebble is not installed (apt-get install pebble)")
    return pebble


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_listener_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a leaf for 127.0.0.1 and localhost: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("pebble listener test CA"))
        .issuer_name(_name("pebble listener test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


@dataclass
class Pebble:
    """One pebble and its DNS mock, in `workdir`; validates HTTP-01 on `http_port`."""

    workdir: Path
    http_port: int
    validity: int = 3600  # seconds a certificate it issues lives
    nonce_reject_percent: int = 0
    eab: dict[str, str] | None = None  # kid -> base64url MAC key: accounts must be bound
    listen_port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    dns_port: int = field(default_factory=free_port)
    dns_management_port: int = field(default_factory=free_port)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ca_bundle, cert, key = make_listener_certificate(self.workdir / "listener")
        self.config_path = self.workdir / "pebble.json"
        self.config_path.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"127.0.0.1:{self.listen_port}",
                        "managementListenAddress": f"127.0.0.1:{self.management_port}",
                        "certificate": str(cert),
                        "privateKey": str(key),
                        "httpPort": self.http_port,
                        "tlsPort": free_port(),
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": self.eab is not None,
                        "externalAccountMACKeys": self.eab or {},
                        "certificateValidityPeriod": self.validity,
                    }
                }
            )
        )

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.listen_port}/dir"

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def start(self, timeout: float = 15.0) -> Pebble:
        require_pebble()
        log = (self.workdir / "challtestsrv.log").open("ab")
        self.procs.append(
            subprocess.Popen(
                [
                    "pebble-challtestsrv",
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                    "-dns01",
                    f"127.0.0.1:{self.dns_port}",
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-management",
                    f"127.0.0.1:{self.dns_management_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        env = {
            **os.environ,
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": str(self.nonce_reject_percent),
            "PEBBLE_AUTHZREUSE": "0",
        }
        log = (self.workdir / "pebble.log").open("ab")
        self.procs.append(
            subprocess.Popen(
                [
                    "pebble",
                    "-config",
                    str(self.config_path),
                    "-dnsserver",
                    f"127.0.0.1:{self.dns_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.directory, context=self._context(), timeout=2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pebble did not start: {self.log()}") from None
                if any(p.poll() is not None for p in self.procs):
                    raise RuntimeError(f"pebble exited: {self.log()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()

    def restart(self) -> Pebble:
        """A new CA state: every account and the issuing root are forgotten."""
        self.stop()
        return self.start()

    def root(self) -> str:
        """The PEM of the root that signs what this pebble issues (new at every start)."""
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=self._context(), timeout=5) as response:
            return response.read().decode()

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "pebble.log").read_text()[-4000:]
        return ""
