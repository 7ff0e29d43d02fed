"""sidecar.server.reloader: a reload applied to a running relay, its APIs, CORS and webhooks, or
refused."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from sidecar.api.handlers import PublishApi
from sidecar.config import model as config_module
from sidecar.config.apps import AppRegistry
from sidecar.config.origins import OriginPolicy
from sidecar.engine.broker import MemoryBroker
from sidecar.engine.channel_state import ChannelState
from sidecar.engine.relay import Relay
from sidecar.server.prepare import EDGE_API, EDGE_CORS, edge_application
from sidecar.server.reload_plan import ReloadPlan
from sidecar.server.reloader import ApiApps, EdgeOrigins, LiveWebhooks, RelayApps, Reloader
from tests.support.local_relay import local_relay, start_local
from tests.support.relay_clients import Client, MakeClient, subscribed, turns

ONE = {"id": "1", "key": "key-one", "secret": "secret-one-0123"}
TWO = {"id": "2", "key": "key-two", "secret": "secret-two-0123"}
PAGE = "https://app.example.com"
LATER = "https://later.example.com"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return tmp_path / "sidecar.yaml"


def write(path: Path, **raw: Any) -> None:
    path.write_text(yaml.safe_dump({"apps": [ONE], "cors": {"allowed_origins": [PAGE]}, **raw}))


@pytest.fixture(autouse=True)
def restore_log_level() -> Iterator[None]:
    """Every reload sets the root logger's level: put it back, or later tests see INFO lines."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


@pytest.fixture
async def relay(config_file: Path) -> AsyncIterator[Relay]:
    """The relay the `make_client` fixture of tests/unit/engine/test_relay.py connects to."""
    write(config_file)
    config = config_module.load(config_file)
    assert config.apps is not None
    r = local_relay(AppRegistry(config.apps), config.limits)
    start_local(r)
    yield r
    r.stop()
    for conn in list(r.connections.values()):
        r.forget(conn)


class Wired(Reloader):
    """A reloader with the parts a process registers, kept at hand for the tests to look at."""

    relay: Relay
    apis: list[PublishApi]
    origins: EdgeOrigins
    edge_app: web.Application


@pytest.fixture
def reloader(config_file: Path, relay: Relay) -> Wired:
    config = config_module.load(config_file)
    broker = MemoryBroker()
    app = edge_application(config, relay.apps, broker, relay.state, OriginPolicy([PAGE]))
    reloader = Wired(config, relay.apps, str(config_file), parts=[RelayApps(relay)])
    reloader.relay, reloader.apis, reloader.edge_app = relay, [app[EDGE_API]], app
    reloader.origins = EdgeOrigins(app[EDGE_CORS].policy, app[EDGE_CORS])
    reloader.register(ApiApps(reloader.apis[0]))
    reloader.register(reloader.origins)
    return reloader


async def test_origins_limits_and_log_level_apply_at_once(
    reloader: Wired, config_file: Path, restore_log_level: None
) -> None:
    assert reloader.origins is not None and reloader.relay is not None
    assert not reloader.origins.policy.allows(LATER)
    write(
        config_file,
        cors={"allowed_origins": [PAGE, LATER], "allow_credentials": True},
        limits={"activity_timeout": 33, "cache_ttl": 5},
        log={"level": "warning"},
    )
    plan = await reloader.reload()
    assert plan is not None
    assert reloader.origins.policy.allows(LATER)
    assert reloader.origins.cors is not None
    assert reloader.origins.cors.options.allow_credentials is True
    assert reloader.relay.limits.activity_timeout == 33
    assert reloader.relay.limits.cache_ttl == 1800  # needs a restart: as it ran
    assert plan.restart == ("limits.cache_ttl",)
    assert logging.getLogger().level == logging.WARNING
    assert reloader.config.limits.activity_timeout == 33


async def test_cors_answers_follow_the_reloaded_list(
    reloader: Wired, config_file: Path, aiohttp_client: AiohttpClient
) -> None:
    app: web.Application = reloader.edge_app
    client = await aiohttp_client(app)
    ask = {"Origin": LATER, "Access-Control-Request-Method": "POST"}
    async with client.options("/apps/1/events", headers=ask) as response:
        assert response.status == 403
    write(config_file, cors={"allowed_origins": [PAGE, LATER]})
    await reloader.reload()
    async with client.options("/apps/1/events", headers=ask) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == LATER


async def test_a_broken_file_is_refused_with_its_key_and_nothing_changes(
    reloader: Wired, config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = reloader.config
    write(config_file, cors={"allowed_origins": [PAGE, LATER]}, limits={"pong_timeout": 0})
    with caplog.at_level(logging.ERROR, logger="sidecar.reload"):
        assert await reloader.reload() is None
    (line,) = caplog.records
    assert line.getMessage() == "config reload refused; the running configuration stays"
    assert line.key == "limits.pong_timeout"  # type: ignore[attr-defined]
    assert reloader.config is before
    assert reloader.origins is not None and not reloader.origins.policy.allows(LATER)
    config_file.write_text("apps: [unclosed\n")
    with caplog.at_level(logging.ERROR, logger="sidecar.reload"):
        assert await reloader.reload() is None
    assert "line" in caplog.records[-1].error  # type: ignore[attr-defined]


async def test_without_a_file_there_is_nothing_to_reload(relay: Relay) -> None:
    config = config_module.Config(apps=(config_module.AppConfig("1", "k", "secret-123"),))
    assert await Reloader(config, relay.apps, None, parts=[RelayApps(relay)]).reload() is None


async def test_given_text_is_used_rather_than_the_file(reloader: Wired, config_file: Path) -> None:
    """A worker applies the text its supervisor validated, whatever the file says by then."""
    write(config_file, cors={"allowed_origins": ["this is not an origin"]})
    text = yaml.safe_dump({"apps": [ONE], "cors": {"allowed_origins": [PAGE, LATER]}})
    assert await reloader.reload(text) is not None
    assert reloader.text == text
    assert reloader.origins is not None and reloader.origins.policy.allows(LATER)


async def test_a_new_app_serves_at_once_and_a_removed_one_is_closed_with_4200(
    reloader: Wired,
    relay: Relay,
    make_client: MakeClient,
    config_file: Path,
) -> None:
    leaving: Client = make_client(app_id="1")
    await subscribed(relay, leaving, "news")
    write(config_file, apps=[TWO])
    plan = await reloader.reload()
    assert plan is not None and plan.apps.added == ("2",) and plan.apps.removed == ("1",)
    await turns()
    assert leaving.closes == [(4200, "Relay restarting: reconnect")]
    # Still closing: its app is known by id (not by key, so nobody new connects to it).
    assert relay.apps.by_id("1") is not None and relay.apps.by_key("key-one") is None
    api = reloader.apis[0]
    assert api.apps.by_id("1") is None and api.apps.by_id("2") is not None
    arriving = make_client(app_id="2")
    await subscribed(relay, arriving, "news")
    assert "news" in arriving.conn.subscriptions


async def test_webhooks_are_replaced_only_when_they_change() -> None:
    state = ChannelState()
    live = LiveWebhooks(state)
    one = config_module.from_mapping({"apps": [ONE]})
    hook = {"url": "http://127.0.0.1:9/hooks", "events": ["channel_occupied"]}
    hooked = config_module.from_mapping({"apps": [{**ONE, "webhooks": [hook]}]})
    assert one.apps is not None and hooked.apps is not None
    await live.start(one.apps, one.webhooks)
    assert live.current is None and state.on_event is None
    await live.start(hooked.apps, hooked.webhooks)
    first = live.current
    assert first is not None and state.on_event == first.emit
    assert first.counters is live.counters
    await live.start(hooked.apps, hooked.webhooks)
    assert live.current is first  # nothing changed: the same sender
    rotated = config_module.from_mapping(
        {"apps": [{**ONE, "secret": "rotated-secret-0123", "webhooks": [hook]}]}
    )
    assert rotated.apps is not None
    await live.start(rotated.apps, rotated.webhooks)
    assert live.current is not first and live.current is not None
    assert live.current.counters is live.counters  # counts carry on, never backwards
    await live.close(timeout=0)
    assert state.on_event is None


class Recording:
    """A part that says when it took a reload, and (`slow`) what it left for later."""

    def __init__(self, name: str, said: list[str], slow: bool = False) -> None:
        self.name, self.said, self.slow = name, said, slow
        self.plans: list[tuple[ReloadPlan, AppRegistry]] = []

    def apply(self, plan: ReloadPlan, apps: AppRegistry) -> Awaitable[None] | None:
        self.plans.append((plan, apps))
        self.said.append(self.name)
        if not self.slow:
            return None

        async def rest() -> None:
            self.said.append(f"{self.name} later")

        return rest()


async def test_registered_parts_take_a_reload_in_order_slow_ones_after_the_rest(
    config_file: Path,
) -> None:
    write(config_file)
    config = config_module.load(config_file)
    said: list[str] = []
    first, slow = Recording("first", said), Recording("slow", said, slow=True)
    reloader = Reloader(config, AppRegistry(()), str(config_file), parts=[first, slow])
    reloader.register(Recording("last", said))
    write(config_file, apps=[ONE, TWO])
    plan = await reloader.reload()
    assert plan is not None
    assert said == ["first", "slow", "last", "slow later"]
    ((seen, apps),) = first.plans
    assert seen is plan and [app.id for app in apps] == ["1", "2"]
    assert reloader.config is plan.effective and reloader.apps is apps


async def test_a_refused_reload_reaches_no_part(config_file: Path) -> None:
    write(config_file)
    said: list[str] = []
    reloader = Reloader(config_module.load(config_file), AppRegistry(()), str(config_file))
    reloader.register(Recording("part", said))
    config_file.write_text("apps: [unclosed\n")
    assert await reloader.reload() is None
    assert said == []


class Certificates:
    def __init__(self) -> None:
        self.forced: list[bool] = []

    def reload(self, force: bool = False) -> None:
        self.forced.append(force)


def test_registered_certificates_are_reloaded_by_force(config_file: Path) -> None:
    reloader = Reloader(config_module.Config(), AppRegistry(()))
    reloader.reload_certificates()  # none registered: nothing to do
    certificates = Certificates()
    reloader.register_certificates(None)  # no TLS port: nothing registered
    reloader.register_certificates(certificates)
    reloader.reload_certificates()
    assert certificates.forced == [True]
