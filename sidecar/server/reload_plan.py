"""What a reload (SIGHUP) changes: the running configuration against the file as it is now.

Sans-IO: two validated `Config`s in, a `ReloadPlan` out. Some settings can change under a
running process (the apps, the Origin allow-list, limits that a new connection or subscription
reads, webhooks, the log level, the shutdown deadline); others are bound into sockets, processes
or structures made at start (the ports, TLS, the publish socket, the broker, the workers...).
The plan's `effective` configuration is the new file with those kept as they run, and `restart`
names them, so the log can say they wait for a restart (and says so again at each reload until
then). Names of keys and app ids only: never a value, so never a secret.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sidecar.config.model import AppConfig, Config

# Bound at start: a socket, a process, a TLS listener, or the structures sized by them.
RESTART_SECTIONS = ("listen", "http", "tls", "publish", "upstream", "broker", "admin", "workers")
# Limits that size what is shared by every connection (each process's presence bookkeeping and
# cache of last events): changing them under way would leave the processes disagreeing. And
# limits handed to a listener's servers when they are made: aiohttp's keep-alive, and the
# publish socket's timeout (in the supervisor, which has no relay to read limits from).
# The other limits are read at each accept, connection, subscription or event: live.
RESTART_LIMITS = (
    "max_presence_members",
    "cache_ttl",
    "cache_max_bytes",
    "keepalive_timeout",
    "publish_request_timeout",
)
# Config fields named as the file names them.
KEY_NAMES = {
    "allowed_origins": "cors.allowed_origins",
    "cors_allow_credentials": "cors.allow_credentials",
}
NOT_COMPARED = frozenset({"source", "apps"})


@dataclass(frozen=True)
class AppsChange:
    """App ids added, removed, and changed (with the names of the fields that changed)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.added:
            out["added"] = list(self.added)
        if self.removed:
            out["removed"] = list(self.removed)
        if self.changed:
            out["changed"] = {app_id: list(names) for app_id, names in self.changed.items()}
        return out


def compare_apps(old: Iterable[AppConfig], new: Iterable[AppConfig]) -> AppsChange:
    before = {app.id: app for app in old}
    after = {app.id: app for app in new}
    changed = {}
    for app_id in before.keys() & after.keys():
        names = differing(before[app_id], after[app_id], "")
        if names:
            changed[app_id] = tuple(names)
    return AppsChange(
        added=tuple(sorted(after.keys() - before.keys(), key=_id_order)),
        removed=tuple(sorted(before.keys() - after.keys(), key=_id_order)),
        changed=dict(sorted(changed.items(), key=lambda item: _id_order(item[0]))),
    )


def _id_order(app_id: str) -> tuple[int, str]:
    return (len(app_id), app_id)  # numeric ids in numeric order


def differing(old: Any, new: Any, prefix: str) -> list[str]:
    """The dotted names of what differs between two values, as deep as both are dataclasses
    of one type; the names only (a secret's name may be logged, never its value)."""
    if old == new:
        return []
    if dataclasses.is_dataclass(old) and type(old) is type(new) and not isinstance(old, type):
        names = []
        for f in dataclasses.fields(old):
            if f.name in NOT_COMPARED:
                continue
            name = KEY_NAMES.get(f.name, f"{prefix}.{f.name}" if prefix else f.name)
            names += differing(getattr(old, f.name), getattr(new, f.name), name)
        return names
    return [prefix]


@dataclass(frozen=True)
class ReloadPlan:
    effective: Config  # what runs from now on
    changed: tuple[str, ...]  # keys applied now
    restart: tuple[str, ...]  # keys that changed in the file and wait for a restart
    apps: AppsChange

    @property
    def empty(self) -> bool:
        return not self.changed and not self.apps

    def describe(self) -> dict[str, Any]:
        """The fields of the one log line a reload writes."""
        out: dict[str, Any] = {"changed": list(self.changed)}
        if self.apps:
            out["apps"] = self.apps.describe()
        if self.restart:
            out["needs_restart"] = list(self.restart)
        return out


def plan_reload(
    running: Config,
    new: Config,
    running_apps: Iterable[AppConfig] = (),
    new_apps: Iterable[AppConfig] = (),
) -> ReloadPlan:
    """`running_apps` and `new_apps` are the apps each serves (a config without `apps` serves
    the generated one); their changes are told apart from the rest."""
    kept: dict[str, Any] = {name: getattr(running, name) for name in RESTART_SECTIONS}
    kept["limits"] = dataclasses.replace(
        new.limits, **{name: getattr(running.limits, name) for name in RESTART_LIMITS}
    )
    effective = dataclasses.replace(new, **kept)
    restart = _section_names(running, new) + [
        f"limits.{name}"
        for name in RESTART_LIMITS
        if getattr(running.limits, name) != getattr(new.limits, name)
    ]
    changed = differing(running, effective, "")
    apps = compare_apps(running_apps, new_apps)
    return ReloadPlan(effective, tuple(changed), tuple(restart), apps)


def _section_names(running: Config, new: Config) -> list[str]:
    names: list[str] = []
    for name in RESTART_SECTIONS:
        names += differing(getattr(running, name), getattr(new, name), name)
    return names
