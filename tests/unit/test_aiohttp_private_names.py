"""aiohttp's private names that sidecar drives, still there in the aiohttp installed.

The listeners' sites (accept.py `AcceptingSite`, edge/listener.py `EdgeSite`, api/fastpath.py
`FastPublishSite`) put an `Acceptor` where aiohttp's sites keep the loop's server, and
edge/http_errors.py makes aiohttp's server answer with `QuietRequestHandler`: both through
names aiohttp does not promise to keep. pyproject.toml pins aiohttp to the range tried; when the
pin moves, these tests name the attribute that went (or a new one the code started to use).
"""

from __future__ import annotations

import inspect
import re
import socket
from pathlib import Path

import aiohttp
from aiohttp import web

from sidecar.accept import AcceptingSite
from sidecar.api.fastpath import FastPublishSite
from sidecar.edge.http_errors import QuietAppRunner, QuietServer
from sidecar.edge.listener import EdgeSite

# Each class of ours, and the private aiohttp names it uses, with the aiohttp class that has them.
USED: dict[type, dict[str, type]] = {
    AcceptingSite: {"_runner": web.SockSite, "_server": web.SockSite, "_sock": web.SockSite},
    EdgeSite: {
        "_runner": web.SockSite,
        "_server": web.SockSite,
        "_sock": web.SockSite,
        "_ssl_context": web.SockSite,
    },
    FastPublishSite: {
        "_runner": web.UnixSite,
        "_server": web.UnixSite,
        "_path": web.UnixSite,
        "_backlog": web.UnixSite,
    },
    QuietServer: {"_loop": web.Server, "_kwargs": web.Server},
    QuietAppRunner: {"_make_server": web.AppRunner, "_loop": web.Server, "_kwargs": web.Server},
}

# `self._x` / `server._x` / `super()._x` read or written, and `def _x` overridden.
PRIVATE_USE = re.compile(r"(?:\bself|\bserver|super\(\))\._([a-z]\w*)|\bdef (_[a-z]\w*)")


def private_names_used(cls: type) -> set[str]:
    """The underscore names a class of ours uses that it does not set up itself in __init__."""
    source = inspect.getsource(cls)
    used = {"_" + (m[0] or m[1][1:]) for m in PRIVATE_USE.findall(source)}
    own_init = cls.__dict__.get("__init__")
    own = set()
    if own_init is not None:
        own = set(re.findall(r"self\.(_[a-z]\w*)\s*[:=]", inspect.getsource(own_init)))
    defined_here = {name for name in cls.__dict__ if name.startswith("_") and name not in USED[cls]}
    return used - own - defined_here - {"__init__"}


def test_the_list_holds_every_private_name_the_classes_use() -> None:
    for cls, names in USED.items():
        unlisted = private_names_used(cls) - set(names)
        assert not unlisted, (
            f"{cls.__name__} uses {sorted(unlisted)}: aiohttp's? list them in USED above "
            f"(and check them against the aiohttp versions pyproject.toml allows)"
        )


async def test_aiohttp_still_has_the_private_names(tmp_path: Path) -> None:
    runner = web.AppRunner(web.Application())
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Instances, not classes: the sites' names are slots filled in __init__.
        instances: dict[type, object] = {
            web.SockSite: web.SockSite(runner, sock),
            web.UnixSite: web.UnixSite(runner, str(tmp_path / "s.sock")),
            web.Server: runner.server,
            web.AppRunner: runner,
        }
        for cls, names in USED.items():
            for name, owner in names.items():
                assert hasattr(instances[owner], name), (
                    f"aiohttp {aiohttp.__version__} has no {owner.__name__}.{name}, which "
                    f"sidecar's {cls.__name__} ({cls.__module__}) drives: fix it there, or keep "
                    f"aiohttp below this version in pyproject.toml"
                )
    finally:
        sock.close()
        await runner.cleanup()


async def test_the_runner_stops_the_acceptor_a_site_put_in_its_server_slot() -> None:
    """aiohttp's BaseSite.stop closes `_server`: the Acceptor our sites put there."""
    sock = socket.create_server(("127.0.0.1", 0))
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = AcceptingSite(runner, sock, "http")
    await site.start()
    acceptor = site._server
    assert acceptor is not None and acceptor.is_serving()
    await runner.cleanup()
    assert not acceptor.is_serving()
    assert sock.fileno() == -1  # the listening socket closed


async def test_the_quiet_runner_serves_with_the_quiet_server() -> None:
    runner = QuietAppRunner(web.Application(), keepalive_timeout=7.0)
    await runner.setup()
    try:
        assert isinstance(runner.server, QuietServer)
        assert runner.server._kwargs.get("keepalive_timeout") == 7.0  # aiohttp's kwargs kept
    finally:
        await runner.cleanup()
