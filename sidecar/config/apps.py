"""The apps a relay serves, looked up by key (browsers) and by id (publishers)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

from sidecar.config.model import AppConfig
from sidecar.config.secrets import write_private

DEV_APP_FILE = "app.json"


class AppRegistry:
    """The apps served. `retired` apps (removed by a reload) are still found by id, for their
    connections that are closing, but never by key: nobody new connects to them."""

    def __init__(self, apps: tuple[AppConfig, ...], retired: tuple[AppConfig, ...] = ()) -> None:
        self.apps = apps
        self._by_key = {app.key: app for app in apps}
        self._by_id = {app.id: app for app in (*retired, *apps)}

    def by_key(self, key: str) -> AppConfig | None:
        return self._by_key.get(key)

    def by_id(self, app_id: str) -> AppConfig | None:
        return self._by_id.get(app_id)

    def __iter__(self) -> Iterator[AppConfig]:
        return iter(self.apps)


def ensure_development_app(directory: str | Path) -> tuple[AppConfig, bool]:
    """The app used when the config names none: id 1, a random key and secret made once.

    Kept beside the certificate (0600), so restarts keep working clients and publishers; never a
    well-known secret on a network-facing API. Returns the app and whether it was just made.
    """
    path = Path(directory) / DEV_APP_FILE
    if path.exists():
        data = json.loads(path.read_text())
        return AppConfig(id=str(data["id"]), key=data["key"], secret=data["secret"]), False
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"id": "1", "key": secrets.token_hex(10), "secret": secrets.token_hex(16)}
    write_private(path, (json.dumps(data, indent=2) + "\n").encode())
    return AppConfig(id=data["id"], key=data["key"], secret=data["secret"]), True
