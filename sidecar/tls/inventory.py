"""`sidecar certs`: what each certificate of a configuration is, and when it will be renewed.

Reads the files only: it never makes, orders or changes a certificate, and works whether or
not the sidecar is running.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from sidecar.config.model import CertFiles, Config
from sidecar.tls.acme import AcmeFiles, usable_certificate
from sidecar.tls.certificates import read_pair
from sidecar.tls.certinfo import CertificateError, CertificateInfo, utcnow


@dataclass(frozen=True)
class Entry:
    files: CertFiles
    info: CertificateInfo | None
    renewal: str  # when and by whom, as a sentence
    problem: str | None = None  # why it cannot be served as it is


def _when(moment: datetime.datetime, now: datetime.datetime) -> str:
    seconds = (moment - now).total_seconds()
    if abs(seconds) < 2 * 86400:
        span = f"{abs(seconds) / 3600:.1f} hours"
    else:
        span = f"{round(abs(seconds) / 86400)} days"
    relative = f"in {span}" if seconds >= 0 else f"{span} ago"
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({relative})"


def _read(files: CertFiles) -> tuple[CertificateInfo | None, str | None]:
    try:
        return read_pair(files)[2], None
    except CertificateError as exc:
        return None, str(exc)


def inventory(config: Config, now: datetime.datetime | None = None) -> list[Entry]:
    now = now or utcnow()
    tls = config.tls
    if tls.mode == "off":
        return []
    if tls.mode == "acme":
        assert tls.acme is not None
        acme = AcmeFiles.for_config(tls)
        info, problem = _read(acme.cert_files())
        usable, why = usable_certificate(acme, tls.acme)
        if usable is None:
            renewal = f"sidecar run orders one from {tls.acme.directory} at start"
            return [Entry(acme.cert_files(), info, renewal, why)]
        due = usable.renewal_time(tls.acme.renew_at)
        renewal = f"{_when(max(due, now), now)}, by sidecar over ACME"
        return [Entry(acme.cert_files(), usable, renewal)]
    if tls.mode == "files":
        entries = []
        for files in tls.files():
            info, problem = _read(files)
            renewal = "not by sidecar (tls.mode files); reloaded when the files change"
            entries.append(Entry(files, info, renewal, problem))
        return entries
    folder = Path(tls.dir)
    files = CertFiles(str(folder / "localhost.crt"), str(folder / "localhost.key"))
    info, problem = _read(files)
    if info is None:
        return [Entry(files, None, "sidecar run makes it", problem)]
    remade = info.not_after - datetime.timedelta(days=1)
    return [Entry(files, info, f"{_when(max(remade, now), now)}, remade by sidecar run")]


def report(config: Config, now: datetime.datetime | None = None) -> tuple[str, bool]:
    """The text `sidecar certs` prints, and whether every certificate can be served."""
    now = now or utcnow()
    if config.tls.mode == "off":
        return "tls.mode is off: no certificates (TLS ends in front of sidecar)", True
    lines: list[str] = []
    ok = True
    for entry in inventory(config, now):
        lines.append(entry.files.cert)
        info = entry.info
        if info is not None:
            lines.append(f"  names     {', '.join(info.names)}")
            lines.append(f"  issuer    {info.issuer}")
            lines.append(f"  expires   {_when(info.not_after, now)}")
        if entry.problem is not None:
            ok = False
            lines.append(f"  problem   {entry.problem}")
        lines.append(f"  renewal   {entry.renewal}")
    return "\n".join(lines), ok
