"""What a certificate says, without any I/O: names, issuer, lifetime, renewal time, SNI match.

A certificate and its key are checked here before they go near a live `ssl.SSLContext`: loading
a mismatched pair into the listener's context would leave it without a usable key.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import NameOID

# certbot's rule, which the issue adopts: renew once two thirds of the lifetime have passed,
# half for short-lived certificates (under 10 days), so a failed renewal still has time to retry.
RENEW_AT = 2 / 3
RENEW_AT_SHORT = 1 / 2
SHORT_LIVED = datetime.timedelta(days=10)


class CertificateError(ValueError):
    """A certificate or key that cannot be served; the message says plainly why."""


@dataclass(frozen=True)
class CertificateInfo:
    names: tuple[str, ...]  # DNS names and IP addresses of the subjectAltName (or the CN)
    issuer: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: int
    fingerprint: str  # SHA-256 of the DER, hex

    @property
    def lifetime(self) -> datetime.timedelta:
        return self.not_after - self.not_before

    def expired(self, now: datetime.datetime | None = None) -> bool:
        return (now or utcnow()) >= self.not_after

    def renewal_time(self, renew_at: float | None = None) -> datetime.datetime:
        """When to renew: `renew_at` of the lifetime, or certbot's default for its length."""
        if renew_at is None:
            renew_at = RENEW_AT_SHORT if self.lifetime < SHORT_LIVED else RENEW_AT
        return self.not_before + self.lifetime * renew_at

    def covers(self, hostname: str) -> bool:
        return any(name_matches(pattern, hostname) for pattern in self.names)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def name_matches(pattern: str, hostname: str) -> bool:
    """RFC 6125: exact, case-insensitive; `*.example.com` stands for exactly one more label."""
    pattern, hostname = pattern.lower().rstrip("."), hostname.lower().rstrip(".")
    if pattern == hostname:
        return True
    if pattern.startswith("*."):
        head, _, tail = hostname.partition(".")
        return bool(head) and tail == pattern[2:]
    return False


def parse_chain(pem: bytes, source: str) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise CertificateError(f"{source}: not a PEM certificate") from None
    return chain


def describe(cert: x509.Certificate) -> CertificateInfo:
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += san.get_values_for_type(x509.DNSName)
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    if not names:
        names += [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    common = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    issuer = str(common[0].value) if common else cert.issuer.rfc4514_string()
    der = cert.public_bytes(serialization.Encoding.DER)
    return CertificateInfo(
        names=tuple(names),
        issuer=issuer,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
        fingerprint=hashlib.sha256(der).hexdigest(),
    )


def certificate_info(pem: bytes, source: str = "certificate") -> CertificateInfo:
    """The first (leaf) certificate of a PEM chain."""
    return describe(parse_chain(pem, source)[0])


def check_pair(
    cert_pem: bytes, key_pem: bytes, cert_source: str, key_source: str
) -> CertificateInfo:
    """The leaf's info if `key_pem` is its private key; if not, CertificateError naming the file."""
    leaf = parse_chain(cert_pem, cert_source)[0]
    key = load_private_key(key_pem, key_source)
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise CertificateError(f"{key_source} is not the key of {cert_source}")
    return describe(leaf)


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(key_pem: bytes, source: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CertificateError(f"{source}: the key is encrypted; give an unencrypted key") from None
    except ValueError:
        raise CertificateError(f"{source}: not a PEM private key") from None
