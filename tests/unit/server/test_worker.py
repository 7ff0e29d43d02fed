"""sidecar.server.worker: the configuration a worker runs with, from the texts its supervisor hands
it."""

from __future__ import annotations

from pathlib import Path

import yaml

from sidecar.config.model import Config
from sidecar.server.worker import worker_config

STARTED = {"cors": {"allowed_origins": ["https://a.example"]}, "limits": {"cache_ttl": 60}}
RELOADED = {
    "cors": {"allowed_origins": ["https://a.example", "https://b.example"]},
    "limits": {"cache_ttl": 5, "activity_timeout": 30},
    "listen": {"port": 9443},
}


def test_without_a_file_the_defaults() -> None:
    assert worker_config(None, None, None) == (Config(), None)


def test_the_started_text_is_used_not_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text("this: [is not valid")  # an edit in progress: never read
    text = yaml.safe_dump(STARTED)
    config, used = worker_config(str(path), text, None)
    assert config.allowed_origins == ("https://a.example",)
    assert used == text


def test_a_worker_started_after_a_reload_runs_as_the_others_do() -> None:
    started, reloaded = yaml.safe_dump(STARTED), yaml.safe_dump(RELOADED)
    config, used = worker_config("sidecar.yaml", started, reloaded)
    assert config.allowed_origins == ("https://a.example", "https://b.example")
    assert config.limits.activity_timeout == 30
    # Needing a restart: as the cluster started, like every other worker.
    assert config.limits.cache_ttl == 60
    assert config.listen.port == 8443
    assert used == reloaded
