"""webhooks.max_queue_bytes: read as a size, refused with its dotted key, applied by a reload."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sidecar.config.model import Config, ConfigError, WebhookSettings, from_mapping
from sidecar.server.reload_plan import plan_reload


def test_the_default_is_a_few_mib() -> None:
    assert from_mapping({}).webhooks.max_queue_bytes == 8 * 1024 * 1024


@pytest.mark.parametrize(("raw", "value"), [(1_000_000, 1_000_000), ("512KiB", 512 * 1024)])
def test_a_size_in_bytes_or_with_a_unit(raw: object, value: int) -> None:
    settings = from_mapping({"webhooks": {"max_queue_bytes": raw}}).webhooks
    assert settings.max_queue_bytes == value


@pytest.mark.parametrize("raw", [0, -1, True, "lots", 1.5])
def test_a_bad_value_names_the_key(raw: object) -> None:
    with pytest.raises(ConfigError) as caught:
        from_mapping({"webhooks": {"max_queue_bytes": raw}})
    assert caught.value.key == "webhooks.max_queue_bytes"
    assert str(caught.value).startswith("webhooks.max_queue_bytes: ")


def test_a_reload_applies_it_live() -> None:
    running = from_mapping({})
    new = replace(running, webhooks=replace(running.webhooks, max_queue_bytes=1024))
    plan = plan_reload(running, new)
    assert plan.changed == ("webhooks.max_queue_bytes",)
    assert plan.restart == ()
    assert isinstance(plan.effective, Config)
    assert plan.effective.webhooks == WebhookSettings(max_queue_bytes=1024)
