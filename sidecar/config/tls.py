"""The `tls` section of the configuration: how the browser-facing port gets its certificates.

```yaml
tls:
  mode: acme                 # self-signed | files | acme | off
  dir: ./certs               # generated and issued certificates, keys 0600
  handshake_timeout: 10      # seconds a client has to finish the TLS handshake
  reload_interval: 5         # seconds between checks of the certificate files for changes
  hsts: {max_age: 31536000}  # Strict-Transport-Security on HTTPS responses; off by default
  # mode files: cert + key, and/or certificates: [{cert, key}], chosen by SNI
  acme:
    directory: https://acme-v02.api.letsencrypt.org/directory
    email: ops@example.com
    domains: [example.com, www.example.com]
    ca_bundle: null          # a PEM file to trust a private or test CA's directory with
    eab: {kid: ..., hmac_key: ...}   # external account binding, when the CA asks for one
    renew_at: null           # fraction of the lifetime; default 2/3 (1/2 under 10 days)
    retry_min: 10            # seconds: back-off after a failed issuance, doubling ...
    retry_max: 3600          # ... up to this
```
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

from sidecar.config.values import (
    ConfigError,
    boolean,
    choice,
    existing_file,
    integer,
    mapping,
    number,
    only,
    string,
    string_list,
)

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
# A client that opens a connection and sends nothing holds a socket and a file descriptor;
# asyncio's own default is 60 s. Ten seconds is plenty for a real handshake across the world.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
# Certificate files are checked this often (seconds); SIGHUP reloads at once.
DEFAULT_RELOAD_INTERVAL = 5.0
HSTS_DEFAULT_MAX_AGE = 365 * 86400

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_EMAIL = re.compile(r"[^@\s:]+@[^@\s.]+(\.[^@\s.]+)*")


@dataclass(frozen=True)
class CertFiles:
    cert: str
    key: str


@dataclass(frozen=True)
class EabConfig:
    """External account binding: the CA's key id and its base64url MAC key."""

    kid: str
    hmac_key: str = field(repr=False)


@dataclass(frozen=True)
class AcmeConfig:
    directory: str = LETS_ENCRYPT
    email: str | None = None
    domains: tuple[str, ...] = ()
    ca_bundle: str | None = None
    eab: EabConfig | None = None
    renew_at: float | None = None  # None: 2/3 of the lifetime, 1/2 under 10 days (as certbot)
    retry_min: float = 10.0
    retry_max: float = 3600.0


@dataclass(frozen=True)
class HstsConfig:
    max_age: int = HSTS_DEFAULT_MAX_AGE
    include_subdomains: bool = False
    preload: bool = False

    def header(self) -> str:
        value = f"max-age={self.max_age}"
        if self.include_subdomains:
            value += "; includeSubDomains"
        if self.preload:
            value += "; preload"
        return value


@dataclass(frozen=True)
class TlsConfig:
    mode: str = "self-signed"  # self-signed | files | acme | off
    dir: str = "./certs"  # generated certificates and the generated app secret live here
    cert: str | None = None
    key: str | None = None
    certificates: tuple[CertFiles, ...] = ()  # files mode: more certificates, chosen by SNI
    acme: AcmeConfig | None = None
    hsts: HstsConfig | None = None
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    reload_interval: float = DEFAULT_RELOAD_INTERVAL

    def files(self) -> tuple[CertFiles, ...]:
        """files mode: every certificate, the default one (for clients without SNI) first."""
        single = (CertFiles(self.cert, self.key),) if self.cert and self.key else ()
        return single + self.certificates


def parse_tls(raw: Any) -> TlsConfig:
    raw = mapping(raw, "tls")
    only(
        raw,
        "tls",
        {
            "mode",
            "dir",
            "cert",
            "key",
            "certificates",
            "acme",
            "hsts",
            "handshake_timeout",
            "reload_interval",
        },
    )
    if raw.get("mode") is False:
        raw = {**raw, "mode": "off"}  # YAML 1.1 reads an unquoted `off` as false
    mode = choice(raw, "tls", "mode", "self-signed", ("self-signed", "files", "acme", "off"))
    cert = existing_file(raw, "tls", "cert")
    key = existing_file(raw, "tls", "key")
    certificates = _certificates(raw.get("certificates"))
    if mode == "files":
        if (cert is None) != (key is None):
            missing = "key" if key is None else "cert"
            raise ConfigError(f"tls.{missing}", "is required with the other of tls.cert/tls.key")
        if cert is None and not certificates:
            raise ConfigError("tls.cert", "is required when tls.mode is files (with tls.key)")
    else:
        for name, value in (("cert", cert), ("key", key), ("certificates", certificates)):
            if value:
                raise ConfigError(f"tls.{name}", f"is only used when tls.mode is files, not {mode}")
    acme = None
    if mode == "acme":
        if raw.get("acme") is None:
            raise ConfigError("tls.acme", "is required when tls.mode is acme (at least domains)")
        acme = _acme(raw["acme"])
    elif raw.get("acme") is not None:
        raise ConfigError("tls.acme", f"is only used when tls.mode is acme, not {mode}")
    return TlsConfig(
        mode=mode,
        dir=string(raw, "tls", "dir", "./certs") or "./certs",
        cert=cert,
        key=key,
        certificates=certificates,
        acme=acme,
        hsts=_hsts(raw.get("hsts")),
        handshake_timeout=number(
            raw, "tls", "handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT, 0.1, 300
        ),
        reload_interval=number(raw, "tls", "reload_interval", DEFAULT_RELOAD_INTERVAL, 0.1, 3600),
    )


def _certificates(raw: Any) -> tuple[CertFiles, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("tls.certificates", "must be a list of {cert, key}")
    pairs = []
    for i, entry in enumerate(raw):
        where = f"tls.certificates[{i}]"
        entry = mapping(entry, where)
        only(entry, where, {"cert", "key"})
        cert, key = existing_file(entry, where, "cert"), existing_file(entry, where, "key")
        if cert is None or key is None:
            raise ConfigError(f"{where}.{'key' if cert else 'cert'}", "is required")
        pairs.append(CertFiles(cert, key))
    return tuple(pairs)


def domain_name(value: Any, key: str) -> str:
    """A DNS name an HTTP-01 challenge can prove, lower-cased."""
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"must be a domain name, got {value!r}")
    name = value.strip().lower().rstrip(".")
    if name.startswith("*."):
        raise ConfigError(key, f"{value}: wildcards need DNS-01 challenges; list each name")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ConfigError(key, f"{value!r} is not a domain name")
    return name


def _acme(raw: Any) -> AcmeConfig:
    raw = mapping(raw, "tls.acme")
    d = AcmeConfig()
    only(raw, "tls.acme", set(d.__dataclass_fields__))
    directory = string(raw, "tls.acme", "directory", d.directory) or d.directory
    if not directory.startswith("https://"):
        raise ConfigError("tls.acme.directory", f"must be an https:// URL, got {directory!r}")
    email = string(raw, "tls.acme", "email", None)
    if email is not None and not re.fullmatch(
        r"[^@\s:]+@[^@\s]+\.[^@\s]+|[^@\s:]+@localhost", email
    ):
        raise ConfigError("tls.acme.email", f"is not an email address: {email!r}")
    listed = string_list(raw, "tls.acme", "domains")
    if not listed:
        raise ConfigError("tls.acme.domains", "must list at least one domain name")
    domains: list[str] = []
    for i, value in enumerate(listed):
        name = domain_name(value, f"tls.acme.domains[{i}]")
        if name not in domains:
            domains.append(name)
    renew_at = None
    if raw.get("renew_at") is not None:
        renew_at = number(raw, "tls.acme", "renew_at", 0.0, 0.1, 0.95)
    retry_min = number(raw, "tls.acme", "retry_min", d.retry_min, 0.1, 86400)
    retry_max = number(raw, "tls.acme", "retry_max", d.retry_max, 0.1, 7 * 86400)
    if retry_max < retry_min:
        raise ConfigError("tls.acme.retry_max", f"must be at least retry_min ({retry_min:g})")
    return AcmeConfig(
        directory=directory,
        email=email,
        domains=tuple(domains),
        ca_bundle=existing_file(raw, "tls.acme", "ca_bundle"),
        eab=_eab(raw.get("eab")),
        renew_at=renew_at,
        retry_min=retry_min,
        retry_max=retry_max,
    )


def _eab(raw: Any) -> EabConfig | None:
    if raw is None:
        return None
    raw = mapping(raw, "tls.acme.eab")
    only(raw, "tls.acme.eab", {"kid", "hmac_key"})
    kid = string(raw, "tls.acme.eab", "kid", None)
    hmac_key = string(raw, "tls.acme.eab", "hmac_key", None)
    if kid is None:
        raise ConfigError("tls.acme.eab.kid", "is required (the key id the CA gave you)")
    if hmac_key is None:
        raise ConfigError("tls.acme.eab.hmac_key", "is required (the MAC key the CA gave you)")
    try:
        padded = hmac_key.rstrip("=") + "=" * (-len(hmac_key.rstrip("=")) % 4)
        base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        # The value itself is a secret: never echo it.
        raise ConfigError(
            "tls.acme.eab.hmac_key", "must be base64url, as the CA gives it"
        ) from None
    return EabConfig(kid=kid, hmac_key=hmac_key)


def _hsts(raw: Any) -> HstsConfig | None:
    if raw is None or raw is False:
        return None
    if raw is True:
        return HstsConfig()
    raw = mapping(raw, "tls.hsts")
    only(raw, "tls.hsts", {"max_age", "include_subdomains", "preload"})
    return HstsConfig(
        max_age=integer(raw, "tls.hsts", "max_age", HSTS_DEFAULT_MAX_AGE, 0, 2 * 365 * 86400),
        include_subdomains=boolean(raw, "tls.hsts", "include_subdomains", False),
        preload=boolean(raw, "tls.hsts", "preload", False),
    )
