"""sidecar.server.reload_plan: what a reload may change now, what waits for a restart, and what the
log says."""

from __future__ import annotations

from typing import Any

from sidecar.config.model import AppConfig, from_mapping
from sidecar.server.reload_plan import compare_apps, differing, plan_reload

APPS = [{"id": "1", "key": "key-one", "secret": "secret-one-0123456789abcdef01234"}]


def config(**raw: Any):
    return from_mapping({"apps": APPS, **raw})


def test_the_same_file_changes_nothing() -> None:
    plan = plan_reload(config(), config())
    assert plan.empty
    assert plan.describe() == {"changed": []}
    assert plan.effective == config()


def test_live_settings_are_applied_and_named() -> None:
    running = config()
    new = config(
        cors={"allowed_origins": ["https://app.example.com"], "allow_credentials": True},
        limits={
            "activity_timeout": 30,
            "client_events_per_second": 5,
            "max_connections_per_ip": 10,
            "request_head_timeout": 3,
            "subscriptions_per_second": 20,
            "presence_joins_per_second": 2,
        },
        log={"level": "debug"},
        webhooks={"batch_window": 1},
        shutdown={"deadline": 3},
    )
    plan = plan_reload(running, new)
    assert plan.changed == (
        "cors.allowed_origins",
        "cors.allow_credentials",
        "limits.activity_timeout",
        "limits.client_events_per_second",
        "limits.max_connections_per_ip",
        "limits.request_head_timeout",
        "limits.subscriptions_per_second",
        "limits.presence_joins_per_second",
        "webhooks.batch_window",
        "log.level",
        "shutdown.deadline",
    )
    assert plan.restart == ()
    assert plan.effective == new


def test_settings_bound_at_start_are_kept_as_they_run_and_named_for_a_restart() -> None:
    running = config()
    new = config(
        listen={"port": 9443},
        tls={"mode": "off"},
        publish={"socket": "/tmp/other.sock"},
        admin={"port": 9700, "token": "a-token-of-sixteen-chars"},
        workers=3,
        limits={
            "cache_ttl": 60,
            "max_presence_members": 5,
            "pong_timeout": 5,
            "keepalive_timeout": 3,
            "publish_request_timeout": 2,
        },
        cors={"allowed_origins": ["*"]},
    )
    plan = plan_reload(running, new)
    assert set(plan.restart) == {
        "listen.port",
        "tls.mode",
        "publish.socket",
        "admin.port",
        "admin.token",
        "workers",
        "limits.cache_ttl",
        "limits.max_presence_members",
        "limits.keepalive_timeout",
        "limits.publish_request_timeout",
    }
    assert plan.changed == ("cors.allowed_origins", "limits.pong_timeout")
    effective = plan.effective
    assert (effective.listen, effective.tls, effective.publish) == (
        running.listen,
        running.tls,
        running.publish,
    )
    assert (effective.admin, effective.workers) == (running.admin, running.workers)
    assert effective.limits.cache_ttl == running.limits.cache_ttl
    assert effective.limits.max_presence_members == running.limits.max_presence_members
    assert effective.limits.keepalive_timeout == running.limits.keepalive_timeout
    assert effective.limits.pong_timeout == 5
    assert effective.allowed_origins == ("*",)


def test_a_pending_restart_is_named_again_at_the_next_reload() -> None:
    running = config()
    new = config(listen={"port": 9443})
    first = plan_reload(running, new)
    second = plan_reload(first.effective, new)
    assert first.restart == second.restart == ("listen.port",)
    assert second.empty


def test_apps_added_removed_and_changed_by_id_with_field_names_only() -> None:
    old = (
        AppConfig(id="1", key="k1", secret="old-secret-1"),
        AppConfig(id="2", key="k2", secret="secret-2222"),
    )
    new = (
        AppConfig(id="1", key="k1", secret="new-secret-1", client_events=True),
        AppConfig(id="10", key="k10", secret="secret-1010"),
        AppConfig(id="3", key="k3", secret="secret-3333"),
    )
    change = compare_apps(old, new)
    assert change.added == ("3", "10")
    assert change.removed == ("2",)
    assert change.changed == {"1": ("secret", "client_events")}
    described = repr(plan_reload(config(), config(), old, new).describe())
    assert "new-secret-1" not in described and "old-secret-1" not in described
    assert "secret" in described  # the name of what changed, for the operator


def test_a_changed_admin_token_is_named_never_shown() -> None:
    running = config(admin={"token": "first-token-0123456789"})
    new = config(admin={"token": "second-token-0123456789"})
    plan = plan_reload(running, new)
    assert plan.restart == ("admin.token",)
    assert "token-0123456789" not in repr(plan.describe())


def test_differing_goes_as_deep_as_both_sides_are_dataclasses() -> None:
    a, b = config(), config(listen={"port": 1, "trusted_proxies": ["10.0.0.0/8"]})
    assert differing(a.listen, b.listen, "listen") == ["listen.port", "listen.trusted_proxies"]
    assert differing(1, 2, "x") == ["x"]
    assert differing(a, a, "") == []
