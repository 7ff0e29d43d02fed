"""sidecar.config.apps: the app registry and the development app made on first run."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

from sidecar.config.apps import DEV_APP_FILE, AppRegistry, ensure_development_app
from sidecar.config.model import AppConfig

ONE = AppConfig(id="1", key="key-one", secret="secret-one")
TWO = AppConfig(id="2", key="key-two", secret="secret-two", client_events=True)


def test_lookup_by_key_and_by_id() -> None:
    registry = AppRegistry((ONE, TWO))
    assert registry.by_key("key-one") is ONE
    assert registry.by_key("key-two") is TWO
    assert registry.by_id("1") is ONE
    assert registry.by_id("2") is TWO


def test_unknown_lookups_are_none() -> None:
    registry = AppRegistry((ONE,))
    assert registry.by_key("nope") is None
    assert registry.by_id("99") is None
    # A key is not an id and an id is not a key.
    assert registry.by_id("key-one") is None
    assert registry.by_key("1") is None


def test_iteration_yields_the_apps_in_order() -> None:
    registry = AppRegistry((TWO, ONE))
    assert list(registry) == [TWO, ONE]
    assert list(registry) == [TWO, ONE]  # iterable more than once


def test_development_app_is_created_with_id_1_and_random_credentials(tmp_path: Path) -> None:
    folder = tmp_path / "certs"  # does not exist yet
    app, created = ensure_development_app(folder)
    assert created is True
    assert app.id == "1"
    assert re.fullmatch(r"[0-9a-f]{20}", app.key)
    assert re.fullmatch(r"[0-9a-f]{32}", app.secret)
    path = folder / DEV_APP_FILE
    assert path.name == "app.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"id": "1", "key": app.key, "secret": app.secret}


def test_development_app_is_reused_on_the_next_run(tmp_path: Path) -> None:
    first, _ = ensure_development_app(tmp_path)
    again, created = ensure_development_app(tmp_path)
    assert created is False
    assert (again.id, again.key, again.secret) == (first.id, first.key, first.secret)


def test_two_directories_get_different_secrets(tmp_path: Path) -> None:
    a, _ = ensure_development_app(tmp_path / "a")
    b, _ = ensure_development_app(tmp_path / "b")
    assert a.key != b.key
    assert a.secret != b.secret


def test_an_existing_app_file_is_read_as_written(tmp_path: Path) -> None:
    (tmp_path / DEV_APP_FILE).write_text(json.dumps({"id": 5, "key": "k", "secret": "s" * 8}))
    app, created = ensure_development_app(tmp_path)
    assert created is False
    assert app == AppConfig(id="5", key="k", secret="s" * 8)


def test_retired_apps_are_found_by_id_only_and_not_served() -> None:
    registry = AppRegistry((TWO,), retired=(ONE,))
    assert registry.by_id("1") is ONE  # a connection of it, still closing
    assert registry.by_key("key-one") is None  # nobody new connects to it
    assert list(registry) == [TWO]
