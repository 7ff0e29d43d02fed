"""The Origin allow-list: which pages may open a WebSocket or call the API from a browser.

Entries are exact origins (`https://app.example.com`, port included when not the default), or
patterns: `*.example.com` (any subdomain, either scheme), `https://*.example.com`,
`http://localhost:*` (any port), or `*` (anyone).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}

# Development defaults: pages served from this machine only.
LOCAL_ORIGINS = (
    "http://localhost:*",
    "https://localhost:*",
    "http://127.0.0.1:*",
    "https://127.0.0.1:*",
    "http://[::1]:*",
    "https://[::1]:*",
)


@dataclass(frozen=True, slots=True)
class OriginPattern:
    scheme: str | None  # None: http or https
    host: str  # lower case; a leading "*." matches any subdomain (not the bare domain)
    port: int | None  # None: any port (written ":*"); else the exact port

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if self.scheme is not None and scheme != self.scheme:
            return False
        if self.host.startswith("*."):
            if not host.endswith(self.host[1:]) or len(host) <= len(self.host) - 1:
                return False
        elif host != self.host:
            return False
        if self.port is None:
            return True
        return port == self.port


def parse_origin_pattern(entry: str) -> OriginPattern:
    """Parse one allow-list entry; ValueError says what is wrong with it."""
    text = entry.strip().lower()
    if not text:
        raise ValueError("empty origin")
    if "://" not in text:
        if not text.startswith("*."):
            raise ValueError(f"{entry!r} needs a scheme (https://...) or a *. prefix")
        if ":" in text or "*" in text[1:]:
            raise ValueError(f"{entry!r}: a pattern without a scheme takes no port or inner *")
        return OriginPattern(None, text, None)
    scheme, _, rest = text.partition("://")
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"{entry!r}: scheme must be http or https")
    if "/" in rest:
        raise ValueError(f"{entry!r}: an origin has no path")
    port: int | None
    if rest.endswith(":*"):
        host, port = rest[:-2], None
    else:
        split = urlsplit(f"{scheme}://{rest}")
        try:
            port = split.port or DEFAULT_PORTS[scheme]
        except ValueError:
            raise ValueError(f"{entry!r}: bad port") from None
        host = rest.rsplit(":", 1)[0] if split.port else rest
    if not host:
        raise ValueError(f"{entry!r}: no host")
    if "*" in (host[2:] if host.startswith("*.") else host):
        raise ValueError(
            f"{entry!r}: * may only stand for a whole leading label, as in *.example.com"
        )
    return OriginPattern(scheme, host, port)


class OriginPolicy:
    """One allow-list, shared by the WebSocket upgrade check and CORS on the API."""

    def __init__(self, entries: list[str] | tuple[str, ...]) -> None:
        self.allow_all = False
        self.patterns: tuple[OriginPattern, ...] = ()
        self.update(entries)

    def update(self, entries: list[str] | tuple[str, ...]) -> None:
        """Take a new list (SIGHUP), in place: whoever holds this policy sees it at once.

        Parsed whole before anything changes, so a bad entry (ValueError) leaves the old list.
        """
        patterns = tuple(parse_origin_pattern(e) for e in entries if e != "*")
        self.allow_all, self.patterns = "*" in entries, patterns

    def allows(self, origin: str | None) -> bool:
        """True for an allowed Origin. No Origin header means a non-browser client: allowed."""
        if origin is None or self.allow_all:
            return True
        try:
            split = urlsplit(origin.strip().lower())
            port = split.port
        except ValueError:
            return False
        scheme = split.scheme
        if scheme not in DEFAULT_PORTS or not split.hostname:
            return False
        host = split.hostname
        if ":" in host:  # IPv6 literals are written in brackets in origins and patterns
            host = f"[{host}]"
        port = port or DEFAULT_PORTS[scheme]
        return any(p.matches(scheme, host, port) for p in self.patterns)
