"""A reload (SIGHUP) applied to a running process, without dropping a connection.

`Reloader` holds the configuration a process runs with and the parts a reload reaches in it,
each registered with it as a `Reloadable`: the relay (apps, limits), the publish APIs (apps),
the Origin allow-list shared by the WebSocket check and CORS, the webhook sender; and the log
level, which is the process's. It re-reads the file; a file that does not
validate is refused with one line naming the key, and nothing changes. Otherwise
sidecar/server/reload_plan.py says what can change now, and it is applied; the rest is named as
waiting for a restart. An app removed by the reload has its connections closed with 4200: pusher-js
reconnects at once and, its key gone, is refused with 4001 and stops.

The one process (workers: 1) does all of it. With workers, the supervisor (apps of the Unix
socket's API, webhooks) reads and validates the file first, then hands the workers the text it
validated (they never read the file themselves, so they cannot disagree with it) and they
apply their part (relay, signed API, origins); they log at debug, the supervisor's line is the
one at info.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Protocol

from sidecar.api.handlers import PublishApi, client_max_size
from sidecar.config import model as config_module
from sidecar.config.apps import AppRegistry
from sidecar.config.model import AppConfig, Config, ConfigError, WebhookSettings
from sidecar.config.origins import OriginPolicy
from sidecar.edge.cors import PolicyOrigins, resource_options
from sidecar.engine.presence import PresenceStore
from sidecar.engine.relay import Relay
from sidecar.observe.observer import Observer
from sidecar.protocol.pusher import CloseCode
from sidecar.server.lifecycle import WEBHOOKS_CLOSE_TIMEOUT
from sidecar.server.prepare import resolve_apps as resolve_apps_of
from sidecar.server.reload_plan import ReloadPlan, plan_reload
from sidecar.server.serving import locally_reported_kinds
from sidecar.webhooks import WebhookCounters, Webhooks

log = logging.getLogger("sidecar.reload")


class LiveWebhooks:
    """The webhook sender of the process that sends them (fed by `state`), replaced whole
    when a reload changes an app's webhooks, key or secret, or the webhook settings. The old
    sender gets a few seconds to send what it holds; the counters carry on."""

    def __init__(self, state: PresenceStore, observer: Observer | None = None) -> None:
        self.state = state
        self.observer = observer
        self.counters = WebhookCounters()
        self.current: Webhooks | None = None
        self._made_from: object = None

    @staticmethod
    def _what(apps: Iterable[AppConfig], settings: WebhookSettings) -> object:
        return ([(a.id, a.key, a.secret, a.webhooks) for a in apps], settings)

    async def start(self, apps: Iterable[AppConfig], settings: WebhookSettings) -> None:
        """Start or replace the sender for `apps`; nothing when nothing about it changed."""
        apps = tuple(apps)
        made_from = self._what(apps, settings)
        if made_from == self._made_from:
            return
        self._made_from = made_from
        new: Webhooks | None = Webhooks(apps, settings, counters=self.counters)
        assert new is not None
        if new.enabled:
            await new.start()
            if self.observer is not None:
                self.observer.bind_webhooks(self.counters)
        else:
            new = None
        old, self.current = self.current, new
        self.state.on_event = new.emit if new is not None else None
        if old is not None:
            await old.close(timeout=WEBHOOKS_CLOSE_TIMEOUT)

    def mute(self) -> None:
        """Stopping: a restart's clients come straight back, so their leaving is not news."""
        self.state.on_event = None

    def apply(self, plan: ReloadPlan, apps: AppRegistry) -> Awaitable[None]:
        """A reload: the sender replaced once the other parts have taken theirs."""
        return self.start(apps, plan.effective.webhooks)

    async def close(self, timeout: float) -> None:
        self.mute()
        if self.current is not None:
            await self.current.close(timeout=timeout)
            self.current = None


class Reloadable(Protocol):
    """A part of a process that a reload reaches; it registers itself with `Reloader.register`."""

    def apply(self, plan: ReloadPlan, apps: AppRegistry) -> Awaitable[None] | None:
        """Take what `plan` changes now (`plan.effective` is the configuration from now on,
        `apps` the apps it serves). What takes time (a sender given seconds to send what it
        holds) is returned instead, and awaited once every part has taken the rest: a slow
        part never holds the others back."""
        ...


@dataclass
class EdgeOrigins:
    """The TLS port's Origin allow-list (WebSocket upgrades and CORS) and CORS options."""

    policy: OriginPolicy
    cors: PolicyOrigins | None = None

    def apply(self, plan: ReloadPlan, apps: AppRegistry) -> None:
        config = plan.effective
        self.policy.update(config.allowed_origins)
        if self.cors is not None:
            self.cors.options = resource_options(config.cors_allow_credentials)


@dataclass
class ApiApps:
    """A publish API (the Unix socket's or the TLS port's signed one): the apps it serves."""

    api: PublishApi

    def apply(self, plan: ReloadPlan, apps: AppRegistry) -> None:
        self.api.apps = apps
        self.api.max_body = client_max_size(apps)


@dataclass
class RelayApps:
    """A relay: its apps and limits; connections of an app the reload removed get 4200."""

    relay: Relay

    def apply(self, plan: ReloadPlan, apps: AppRegistry) -> None:
        relay = self.relay
        live = {app.id for app in apps}
        # Apps gone with connections still closing stay known by id until those are gone.
        retired = {
            conn.app_id: relay.apps.by_id(conn.app_id)
            for conn in relay.connections.values()
            if conn.app_id not in live
        }
        relay.reconfigure(
            AppRegistry(apps.apps, retired=tuple(a for a in retired.values() if a is not None)),
            plan.effective.limits,
        )
        relay.report_events = locally_reported_kinds(apps)
        if plan.apps.removed:
            for conn in list(relay.connections.values()):
                if conn.app_id in plan.apps.removed:
                    conn.close(CloseCode.RECONNECT)


class Certificates(Protocol):
    """Certificates a SIGHUP re-reads (sidecar/tls/certificates.py: CertificateManager)."""

    def reload(self, force: bool = False) -> object: ...


class Reloader:
    """What one process runs with, and the parts of it a reload reaches, in the order they
    registered (`register`; certificates: `register_certificates`)."""

    def __init__(
        self,
        config: Config,
        apps: AppRegistry,
        path: str | None = None,  # the file to re-read; None: started without one
        text: str | None = None,  # the file's text that `config` was made from
        quiet: bool = False,  # a worker: its supervisor writes the line at info
        parts: Iterable[Reloadable] = (),
    ) -> None:
        self.config = config
        self.apps = apps
        self.path = path
        self.text = text
        self.quiet = quiet
        self._parts: list[Reloadable] = list(parts)
        self._certificates: list[Certificates] = []
        self._lock = asyncio.Lock()

    def register(self, part: Reloadable) -> None:
        """`part` takes every later reload, after the parts registered before it."""
        self._parts.append(part)

    def register_certificates(self, certificates: Certificates | None) -> None:
        """`certificates` are re-read on every SIGHUP (None: no TLS port here)."""
        if certificates is not None:
            self._certificates.append(certificates)

    def read(self, text: str | None = None) -> tuple[Config, AppRegistry, str] | None:
        """The file as it is now (or `text`, as the supervisor read it), validated, with the
        apps it serves; None (logged): refused."""
        if self.path is None:
            log.info("SIGHUP: started without --config; no configuration to reload")
            return None
        try:
            if text is None:
                text = config_module.read_text(self.path)
            new = config_module.parse(text, self.path)
            apps = resolve_apps(new)
        except ConfigError as exc:
            log.error(
                "config reload refused; the running configuration stays",
                extra={"config": self.path, "error": str(exc), "key": exc.key},
            )
            return None
        except (OSError, ValueError, KeyError) as exc:
            log.error(
                "config reload refused; the running configuration stays",
                extra={"config": self.path, "error": f"apps: {exc}"},
            )
            return None
        return new, apps, text

    async def reload(self, text: str | None = None) -> ReloadPlan | None:
        """Re-read the file (or take `text`) and apply what can change now; None: refused."""
        async with self._lock:  # two SIGHUPs in a row: one reload after the other
            try:
                return await self._reload(text)
            except Exception:  # a bug: said, and the process carries on
                log.exception("config reload failed")
                return None

    async def _reload(self, text: str | None) -> ReloadPlan | None:
        read = self.read(text)
        if read is None:
            return None
        new, apps, self.text = read
        plan = plan_reload(self.config, new, self.apps, apps)
        await self.apply(plan, apps)
        level = logging.DEBUG if self.quiet else logging.INFO
        log.log(level, "config reloaded", extra={"config": self.path, **plan.describe()})
        return plan

    async def apply(self, plan: ReloadPlan, apps: AppRegistry) -> None:
        logging.getLogger().setLevel(plan.effective.log.level.upper())
        later = [part.apply(plan, apps) for part in self._parts]
        for rest in later:
            if rest is not None:
                await rest
        self.config, self.apps = plan.effective, apps

    def reload_certificates(self) -> None:
        if self._certificates:
            log.log(logging.DEBUG if self.quiet else logging.INFO, "reloading certificates")
        for certificates in self._certificates:
            certificates.reload(force=True)


def resolve_apps(config: Config) -> AppRegistry:
    return resolve_apps_of(config)[0]
