"""The app's server library (the official `pusher` package) pointed at a running sidecar's TLS
port, and the app the signed-API tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pusher
from pusher.requests import RequestsBackend

from tests.support.process import SidecarProcess

APP = {"id": "42", "key": "e2e-key", "secret": "e2e-secret-0123456789"}


def trusting_backend(cert: Path) -> type[RequestsBackend]:
    """The library pins its own CA bundle; point it at the sidecar's development certificate."""

    class Backend(RequestsBackend):
        def __init__(self, client, **options):
            super().__init__(client, **options)
            self.options["verify"] = str(cert)

    return Backend


def server_library(sidecar: SidecarProcess, app: dict[str, Any], **options: Any) -> pusher.Pusher:
    """The app's server library pointed at the sidecar's TLS port: host, port and TLS only."""
    return pusher.Pusher(
        app_id=app["id"],
        key=app["key"],
        secret=app["secret"],
        host="localhost",
        port=sidecar.port,
        ssl=True,
        backend=trusting_backend(sidecar.cert),
        **options,
    )


def client_for(sidecar: SidecarProcess, secret: str = APP["secret"]) -> pusher.Pusher:
    return server_library(sidecar, {**APP, "secret": secret})
