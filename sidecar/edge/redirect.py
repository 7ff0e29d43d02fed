"""The plain-HTTP port's redirect to https: only ever to one of the sidecar's own names.

A redirect built from whatever Host a request carries sends a browser wherever that Host says
(and poisons any cache in between). The Location is built only for a name the TLS port serves:
the ACME domains, the names of the certificates (wildcards included), and the loopback names
(a development machine's, harmless: they lead nowhere else). Any other Host gets 421 in JSON,
and the name it gave is never written back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sidecar.http_glue import LOOPBACK_NAMES, host_name
from sidecar.tls.certinfo import name_matches

# What a name may look like to be written into a Location: DNS labels, or a bracketed IPv6.
PLAIN_NAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]")
UNKNOWN_HOST = "unknown host: this port redirects to https for the sidecar's own names only"


def as_host(name: str) -> str:
    """A certificate's name as a Host header writes it (an IPv6 address in brackets)."""
    name = name.lower().rstrip(".")
    return f"[{name}]" if ":" in name and not name.startswith("[") else name


class RedirectNames:
    """The names the redirect may lead to; `https_port` is the TLS port's."""

    def __init__(self, names: Iterable[str], https_port: int) -> None:
        self.patterns = tuple(dict.fromkeys((*LOOPBACK_NAMES, *(as_host(n) for n in names))))
        self.port = "" if https_port == 443 else f":{https_port}"

    def location(self, host: str | None, path_qs: str) -> str | None:
        """Where to send a request for `host`, or None when it is not one of ours."""
        name = host_name(host or "")
        if PLAIN_NAME.fullmatch(name) is None:
            return None
        if not any(name_matches(pattern, name) for pattern in self.patterns):
            return None
        return f"https://{name}{self.port}{path_qs if path_qs.startswith('/') else '/'}"
