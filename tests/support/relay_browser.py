"""A relay with real Connections over fake sinks, and browsers that sign like pusher-js's auth
endpoints do (with the `pusher` library): shared by the relay feature tests. No sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pusher

from sidecar.config.apps import AppRegistry
from sidecar.config.model import AppConfig, LimitsConfig
from sidecar.engine.broker.base import Publication
from sidecar.engine.connection import Connection
from sidecar.engine.heartbeat import Heartbeat
from sidecar.engine.relay import Relay
from sidecar.protocol.signatures import hmac_sha256_hex
from tests.support.local_relay import local_relay, start_local
from tests.support.relay_clients import Client, Sink

APP = AppConfig(id="1", key="key-one", secret="secret-one-secret", client_events=True)
QUIET_APP = AppConfig(id="2", key="key-two", secret="secret-two-secret")
LIMITS = LimitsConfig(
    max_presence_members=3,
    max_presence_user_info_bytes=64,
    client_events_per_second=5,
    cache_ttl=60,
)
# The master key only matters to the library (it derives the encrypted channels' shared secret,
# which the relay never sees).
MASTER_KEY = "KZ4SYKVfVdgJ0hDOG8Bj8SRy5vN3pKlYcbmjTdRYwRQ="
SIGNER = pusher.Pusher(
    app_id=APP.id, key=APP.key, secret=APP.secret, encryption_master_key_base64=MASTER_KEY
)
QUIET_SIGNER = pusher.Pusher(
    app_id=QUIET_APP.id,
    key=QUIET_APP.key,
    secret=QUIET_APP.secret,
    encryption_master_key_base64=MASTER_KEY,
)


@contextlib.asynccontextmanager
async def started_relay() -> AsyncIterator[Relay]:
    """A started relay of APP and QUIET_APP, talking to itself through a memory broker."""
    r = local_relay(AppRegistry((APP, QUIET_APP)), LIMITS)
    start_local(r)
    try:
        yield r
    finally:
        r.stop()
        for conn in list(r.connections.values()):
            r.forget(conn)


class Browser(Client):
    """A client with pusher-js's moves: subscribe with auth from the app's signer, trigger."""

    def __init__(self, relay: Relay, conn: Connection, sink: Sink, closes: list) -> None:
        super().__init__(conn, sink, closes)
        self.relay = relay
        self.signer = SIGNER if conn.app_id == APP.id else QUIET_SIGNER

    @property
    def socket_id(self) -> str:
        return self.conn.socket_id

    def subscribe(self, channel: str, user: dict[str, Any] | None = None, **override: Any) -> None:
        data: dict[str, Any] = {"channel": channel}
        if channel.startswith(("private-", "presence-")):
            data.update(self.signer.authenticate(channel, self.socket_id, user))
            data.pop("shared_secret", None)
        data.update(override)
        self.text(self.relay, "pusher:subscribe", data)

    def trigger(self, channel: str, event: str, data: Any) -> None:
        self.text(self.relay, event, data, channel=channel)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.new_messages() if name is None or m["event"] == name]


MakeBrowser = Callable[..., Browser]


def browser_factory(relay: Relay) -> MakeBrowser:
    """Opens a browser connection on the relay, for APP unless told another app id."""

    def make(app_id: str = APP.id) -> Browser:
        sink = Sink()
        closes: list[tuple[int, str]] = []
        assert relay.scheduler is not None
        conn = Connection(
            socket_id=relay.new_socket_id(),
            app_id=app_id,
            sink=sink,
            scheduler=relay.scheduler,
            heartbeat=Heartbeat(time.monotonic(), 120, 30, 0),
            queue_limit=LIMITS.send_queue_bytes,
            close_ready=lambda code, reason: closes.append((code, reason)),
        )
        relay.open(conn)
        b = Browser(relay, conn, sink, closes)
        b.new_messages()
        return b

    return make


async def turns(n: int = 6) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def data_of(message: dict[str, Any]) -> Any:
    return json.loads(message["data"])


def publish(relay: Relay, channel: str, name: str, data: str, app_id: str = APP.id) -> None:
    relay.broker.publish(Publication.of(app_id, (channel,), name, data))


def sign(message: str) -> str:
    return hmac_sha256_hex(APP.secret, message)
