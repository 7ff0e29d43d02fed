"""App secrets: outside development, long enough and not one of the examples; secret files
written readable by their owner only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from sidecar.config.values import ConfigError


class HasSecret(Protocol):
    @property
    def secret(self) -> str: ...


# An app secret signs the API, channel auth and user sign-in: outside development it must be
# long enough not to be guessed (32 characters: 16 random bytes in hex) and not one of the
# examples people copy from README and configs/.
MIN_SECRET = 32
PLACEHOLDER_SECRETS = frozenset(
    {
        "...",
        "secret",
        "app-secret",
        "change-me",
        "changeme",
        "change-me-please",
        "replace-me",
        "replace-with-40-random-hex-characters",
        "your-secret",
        "your-app-secret",
        "password",
    }
)


def is_placeholder(secret: str) -> bool:
    lowered = secret.strip().lower()
    return (
        lowered in PLACEHOLDER_SECRETS
        or set(lowered) <= {".", "x", "*"}
        or any(word in lowered for word in ("change-me", "changeme", "replace-with", "example"))
    )


def check_secrets(apps: Sequence[HasSecret] | None, *, development: bool) -> None:
    """Outside development, a placeholder or short secret is refused (never echoed).

    Development is tls.mode self-signed: the certificate for localhost, which only a machine
    that trusted it by hand accepts. tls.mode files, acme or off (a terminator in front) is
    production, whatever the host.
    """
    if development or apps is None:
        return
    make = "python3 -c 'import secrets; print(secrets.token_hex(20))'"
    for i, app in enumerate(apps):
        if is_placeholder(app.secret):
            raise ConfigError(
                f"apps[{i}].secret", f"is a placeholder from the examples; make one with {make}"
            )
        if len(app.secret) < MIN_SECRET:
            raise ConfigError(
                f"apps[{i}].secret",
                f"must be at least {MIN_SECRET} characters outside development (tls.mode "
                f"self-signed); make one with {make}",
            )


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (0600), never briefly wider."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
