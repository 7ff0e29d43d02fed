"""The certificate in use, as the admin listener reports it: read from its file when it changes.

Read again whenever the file's modification time or size changes, so a renewed certificate
(ACME, or files replaced by hand) is what /metrics and /readyz report, not the one at start.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509


@dataclass(frozen=True)
class CertificateStatus:
    path: str
    not_after: datetime.datetime | None  # None: unreadable
    subject: str = ""
    error: str = ""

    def expires_in(self, now: datetime.datetime | None = None) -> float | None:
        if self.not_after is None:
            return None
        now = now or datetime.datetime.now(datetime.UTC)
        return (self.not_after - now).total_seconds()

    def valid(self, now: datetime.datetime | None = None) -> bool:
        remaining = self.expires_in(now)
        return remaining is not None and remaining > 0

    def as_dict(self) -> dict[str, object]:
        remaining = self.expires_in()
        return {
            "path": self.path,
            "subject": self.subject,
            "not_after": self.not_after.isoformat() if self.not_after else None,
            "expires_in_s": None if remaining is None else round(remaining),
            "valid": self.valid(),
            **({"error": self.error} if self.error else {}),
        }


class CertificateWatch:
    """`current()`: the certificate at `path` now (None path: TLS is off)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = None if path is None else Path(path)
        self._stamp: tuple[int, int] | None = None
        self._info: CertificateStatus | None = None

    def current(self) -> CertificateStatus | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError as exc:
            self._stamp = None
            return CertificateStatus(str(self.path), None, error=exc.strerror or str(exc))
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp or self._info is None:
            self._info = read_certificate(self.path)
            self._stamp = stamp
        return self._info


def read_certificate(path: Path) -> CertificateStatus:
    """The first certificate of a PEM file (the server's own, before its chain)."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        return CertificateStatus(str(path), None, error=f"unreadable: {str(exc)[:100]}")
    return CertificateStatus(str(path), cert.not_valid_after_utc, cert.subject.rfc4514_string())
