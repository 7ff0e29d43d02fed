"""The relay core: connections, their subscriptions, and fan-out of published events.

It knows nothing of TLS, HTTP routing or aiohttp: the WebSocket edge hands it connections and
text frames, the broker hands it publications and channel state changes.

Counts and presence members are cluster-wide (sidecar/engine/presence.py): a subscription
is announced through the broker, and a presence join is answered only once it comes back in
the order every process shares, with the members that order gives.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from sidecar.config.apps import AppRegistry
from sidecar.config.model import AppConfig, LimitsConfig
from sidecar.engine.broker.base import Broker, Publication
from sidecar.engine.broker.changes import Change, MemberJoin, MemberLeave, TerminateUser
from sidecar.engine.channel_registry import ChannelRegistry
from sidecar.engine.client_messages import accept_client_event, check_signin
from sidecar.engine.connection import Connection, ConnectionState
from sidecar.engine.fanout import FanoutQueue, FlushScheduler
from sidecar.engine.heartbeat import HeartbeatAction
from sidecar.engine.last_event_cache import LastEventCache
from sidecar.engine.outbox import ChangeOutbox
from sidecar.engine.presence import PresenceStore, make_presence_store
from sidecar.engine.session import RateLimiter, Session, SignedInUsers
from sidecar.engine.tap import RelayTap
from sidecar.engine.transitions import (
    JoinAccepted,
    JoinRefused,
    MemberAdded,
    MemberRemoved,
    Transition,
)
from sidecar.protocol.channel_rules import (
    Kind,
    SubscriptionRefused,
    authorize,
    channel_kind,
    is_cache,
    is_presence,
)
from sidecar.protocol.frame_writer import broadcast_frame, text_frame
from sidecar.protocol.pusher import (
    PING_FRAME,
    PONG_FRAME,
    ClientEvent,
    ClientMessage,
    CloseCode,
    ErrorCode,
    Ping,
    Pong,
    ProtocolError,
    Signin,
    Subscribe,
    Unsubscribe,
    encode_cache_miss,
    encode_connection_established,
    encode_error,
    encode_member_added,
    encode_member_removed,
    encode_signin_success,
    encode_subscription_error,
    encode_subscription_succeeded,
    event_prefix,
    parse_client_frame,
)

# How often liveness is checked across all connections; pings go out at most this late.
HEARTBEAT_SWEEP_INTERVAL = 1.0
SWEEP_SLICE = 500  # connections checked per loop turn
# Read per connection per sweep: a member read off an Enum class costs ~0.1 µs on Python 3.11
# (its metaclass's __getattr__ makes every such read a slow lookup), a module global ~10 ns.
_OPEN = ConnectionState.OPEN
TERMINATED_REASON = "Connections of this user terminated by the app"
# Answers pusher:ping: the same bytes every time (a reply, dropped for a client not reading).
PONG_TEXT_FRAME = text_frame(PONG_FRAME)


@dataclass(slots=True)
class RelayStats:
    connections_opened: int = 0
    connections_closed: int = 0
    publications: int = 0
    slow_client_closes: int = 0
    closed_by_code: dict[int, int] = field(default_factory=dict)  # close code -> connections
    client_events: int = 0  # accepted and published
    client_events_rate_limited: int = 0  # refused with 4301
    subscriptions_rate_limited: int = 0  # subscribe/unsubscribe frames refused with 4301


class Relay:
    def __init__(
        self,
        apps: AppRegistry,
        limits: LimitsConfig,
        broker: Broker,
        report_events: dict[str, frozenset[str]] | None = None,
    ):
        self.apps = apps
        self.limits = limits
        # Made for the process's role by sidecar/engine/broker/factory.py, started by the
        # server with deliver, on_changes and notify.
        self.broker = broker
        self.channels: dict[str, ChannelRegistry] = {app.id: ChannelRegistry() for app in apps}
        self.connections: dict[str, Connection] = {}
        # Counts and members, cluster-wide (sidecar/engine/presence.py says what stays here).
        self.state: PresenceStore = make_presence_store(limits)
        self.cache = LastEventCache(limits.cache_ttl, limits.cache_max_bytes)
        # What only some connections use (sign-in, presence, client events), made on demand.
        self.sessions: dict[str, Session] = {}
        self.users: SignedInUsers[Connection] = SignedInUsers()
        # app_id -> the local events ("client_event", "cache_miss") passed to broker.report()
        # for webhooks; empty: none are, at no cost.
        self.report_events: dict[str, frozenset[str]] = report_events or {}
        self._outbox: ChangeOutbox | None = None
        # Subscriptions whose subscription_succeeded waits for the broker (ready()): by channel,
        # the socket ids.
        self._held: dict[tuple[str, str], set[str]] = {}
        self.stats = RelayStats()
        # The debug console's (sidecar/engine/tap.py): None unless a console is open.
        self.tap: RelayTap | None = None
        self._socket_counter = itertools.count(1)
        self._socket_prefix = secrets.randbelow(10**9)
        self._sweeper: asyncio.Handle | None = None
        self._emptied: asyncio.Event | None = None
        self.scheduler: FlushScheduler | None = None
        self.fanout: FanoutQueue | None = None

    # Lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.scheduler = FlushScheduler(loop)
        self.fanout = FanoutQueue(loop)
        self._outbox = ChangeOutbox(self.broker.announce)
        self.broker.on_ready = self._on_ready
        self.broker.on_cached = self._cached
        self._schedule_sweep()

    def notify(self, app_id: str, event: dict[str, Any]) -> None:
        """A webhook-shaped event for whoever observes this process's channel state."""
        if self.state.on_event is not None:
            self.state.on_event(app_id, event)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def new_socket_id(self) -> str:
        return f"{self._socket_prefix}.{next(self._socket_counter)}"

    def open(self, conn: Connection) -> None:
        self.connections[conn.socket_id] = conn
        self.stats.connections_opened += 1
        if self.tap is not None:
            self.tap.opened(conn.app_id, conn.socket_id)
        conn.send_json(encode_connection_established(conn.socket_id, self.limits.activity_timeout))

    def forget(self, conn: Connection) -> None:
        """The socket is gone: drop every trace of the connection."""
        if self.connections.pop(conn.socket_id, None) is None:
            return
        conn.closed()
        self.stats.connections_closed += 1
        code = conn.close_code or 1006  # no close frame: as the "connection closed" log says
        self.stats.closed_by_code[code] = self.stats.closed_by_code.get(code, 0) + 1
        if self.tap is not None:
            self.tap.closed(conn.app_id, conn.socket_id, code, len(conn.subscriptions))
        registry = self.channels[conn.app_id]
        session = self.sessions.pop(conn.socket_id, None)
        for channel in conn.subscriptions:
            registry.unsubscribe(channel, conn)
            self._announce_leave(conn, channel, session)
        conn.subscriptions.clear()
        if session is not None:
            for channel in session.pending:
                self._announce(MemberLeave(conn.app_id, channel, conn.socket_id))
            if session.user_id is not None:
                self.users.discard(conn.app_id, session.user_id, conn)
        if conn.close_code == CloseCode.OVER_CAPACITY:
            self.stats.slow_client_closes += 1
        if not self.connections and self._emptied is not None:
            self._emptied.set()

    async def wait_until_empty(self) -> None:
        if self.connections:
            if self._emptied is None or self._emptied.is_set():
                self._emptied = asyncio.Event()
            await self._emptied.wait()

    # Frames from clients -------------------------------------------------------------------

    def on_text(self, conn: Connection, text: str) -> None:
        conn.heartbeat.on_activity(time.monotonic())
        try:
            message = parse_client_frame(text)
            self._handle(conn, message)
        except ProtocolError as exc:
            rate_limited = exc.code == ErrorCode.CLIENT_EVENT_RATE_LIMITED
            if rate_limited:
                self.stats.client_events_rate_limited += 1
            conn.refuse_frame(encode_error(exc.message, exc.code), bad_frame=not rate_limited)
            if exc.close is not None:
                conn.close(exc.close)

    def on_binary(self, conn: Connection) -> None:
        conn.heartbeat.on_activity(time.monotonic())
        conn.refuse_frame(
            encode_error(
                "binary frames are not supported: send JSON text", ErrorCode.INVALID_MESSAGE
            )
        )

    def _handle(self, conn: Connection, message: ClientMessage) -> None:
        match message:
            case Ping():
                conn.reply(PONG_TEXT_FRAME)
            case Pong():
                pass
            case Subscribe():
                if self._subscription_allowed(conn):
                    self._subscribe(conn, message)
            case Unsubscribe(channel=channel):
                if self._subscription_allowed(conn):
                    self._unsubscribe(conn, channel)
            case ClientEvent():
                self._client_event(conn, message)
            case Signin():
                self._signin(conn, message)

    def _app(self, conn: Connection) -> AppConfig:
        app = self.apps.by_id(conn.app_id)
        assert app is not None, "connections are only made for known apps"
        return app

    def _session(self, conn: Connection) -> Session:
        session = self.sessions.get(conn.socket_id)
        if session is None:
            session = self.sessions[conn.socket_id] = Session()
        return session

    # Subscriptions -------------------------------------------------------------------------

    def _subscription_allowed(self, conn: Connection) -> bool:
        """Within limits.subscriptions_per_second (subscribes and unsubscribes alike); else
        the frame is dropped with 4301. Churn costs every other subscriber of the channel (and
        webhooks) far more than it costs the client."""
        now = time.monotonic()
        rate = conn.subscription_rate
        if rate is None:
            rate = conn.subscription_rate = RateLimiter(self.limits.subscriptions_per_second, now)
        if rate.allow(now):
            return True
        per_second = self.limits.subscriptions_per_second
        self._rate_limited(
            conn, f"subscriptions refused: over the limit of {per_second} per second"
        )
        return False

    def _presence_join_allowed(self, conn: Connection) -> bool:
        """Within limits.presence_joins_per_second: a join (and the leave that may follow) is a
        frame to every member, so one member cannot flood the others (nor make them slow)."""
        now = time.monotonic()
        session = self._session(conn)
        if session.joins is None:
            session.joins = RateLimiter(self.limits.presence_joins_per_second, now)
        if session.joins.allow(now):
            return True
        per_second = self.limits.presence_joins_per_second
        self._rate_limited(
            conn, f"presence subscription refused: over the limit of {per_second} per second"
        )
        return False

    def _rate_limited(self, conn: Connection, message: str) -> None:
        self.stats.subscriptions_rate_limited += 1
        conn.send_json(encode_error(message, ErrorCode.RATE_LIMITED))

    def _subscribe(self, conn: Connection, subscribe: Subscribe) -> None:
        channel = subscribe.channel
        session = self.sessions.get(conn.socket_id)
        if channel in conn.subscriptions:
            conn.send_json(self._succeeded(conn.app_id, channel))
            return
        if session is not None and channel in session.pending:
            return  # answered when the join comes back
        held = len(conn.subscriptions) + (len(session.pending) if session else 0)
        if held >= self.limits.max_subscriptions:
            raise ProtocolError(
                f"over the limit of {self.limits.max_subscriptions} subscriptions per connection"
            )
        if is_presence(channel) and not self._presence_join_allowed(conn):
            return
        try:
            presence = authorize(
                self._app(conn),
                conn.socket_id,
                subscribe,
                signed_in_user=session.user_id if session else None,
                max_user_info_bytes=self.limits.max_presence_user_info_bytes,
            )
        except SubscriptionRefused as exc:
            conn.refuse_frame(
                encode_subscription_error(channel, exc.error_type, exc.message, exc.status)
            )
            return
        if presence is not None:
            self._session(conn).pending[channel] = presence.user_id
            self._announce(
                MemberJoin(
                    conn.app_id, channel, conn.socket_id, presence.user_id, presence.user_info
                )
            )
            return
        self._add(conn, channel)
        assert self._outbox is not None
        self._outbox.count(conn.app_id, channel, 1)
        if self.broker.ready(conn.app_id, channel):
            self._subscribed(conn, channel)
        else:
            # Answered once the node's Redis subscription is confirmed (on_ready): nothing
            # published after subscription_succeeded is then missed.
            self._held.setdefault((conn.app_id, channel), set()).add(conn.socket_id)

    def _cached(self, pub: Publication) -> None:
        """A cache channel's last event from before this node heard the channel (Redis)."""
        for channel in pub.channels:
            if is_cache(channel):
                self.cache.store(pub.app_id, channel, pub.name, pub.data_json, pub.accepted_at)

    def _on_ready(self, app_id: str, channel: str) -> None:
        for socket_id in self._held.pop((app_id, channel), ()):
            conn = self.connections.get(socket_id)
            if conn is not None and channel in conn.subscriptions:  # not gone meanwhile
                self._subscribed(conn, channel)

    def _subscribed(self, conn: Connection, channel: str) -> None:
        """subscription_succeeded for a channel that is not presence, then its cached event."""
        conn.send_json(encode_subscription_succeeded(channel))
        self._replay_cache(conn, channel)

    def _succeeded(self, app_id: str, channel: str) -> bytes:
        if is_presence(channel):
            data = orjson.dumps(self.state.presence_data(app_id, channel)).decode()
            return encode_subscription_succeeded(channel, data)
        return encode_subscription_succeeded(channel)

    def _add(self, conn: Connection, channel: str) -> None:
        conn.subscriptions.add(channel)
        if not conn.trusted and channel_kind(channel) is not Kind.PUBLIC:
            conn.trusted = True  # the app signed it: larger frames (client events) from now on
        self.channels[conn.app_id].subscribe(channel, conn)
        conn.heartbeat.on_subscriptions_changed(time.monotonic(), len(conn.subscriptions))
        if self.tap is not None:
            self.tap.subscribed(conn.app_id, conn.socket_id, channel)

    def _unsubscribe(self, conn: Connection, channel: str) -> None:
        session = self.sessions.get(conn.socket_id)
        if channel in conn.subscriptions:
            conn.subscriptions.discard(channel)
            self.channels[conn.app_id].unsubscribe(channel, conn)
            conn.heartbeat.on_subscriptions_changed(time.monotonic(), len(conn.subscriptions))
            self._announce_leave(conn, channel, session)
            if self.tap is not None:
                self.tap.unsubscribed(conn.app_id, conn.socket_id, channel)
        elif session is not None and session.pending.pop(channel, None) is not None:
            self._announce(MemberLeave(conn.app_id, channel, conn.socket_id))

    def _announce_leave(self, conn: Connection, channel: str, session: Session | None) -> None:
        if session is not None and session.members.pop(channel, None) is not None:
            self._announce(MemberLeave(conn.app_id, channel, conn.socket_id))
        else:
            assert self._outbox is not None
            self._outbox.count(conn.app_id, channel, -1)

    def _announce(self, change: Change) -> None:
        assert self._outbox is not None, "Relay.start() first"
        self._outbox.add(change)

    def _replay_cache(self, conn: Connection, channel: str) -> None:
        if not is_cache(channel):
            return
        cached = self.cache.get(conn.app_id, channel, time.monotonic())
        if cached is not None:
            conn.send(broadcast_frame(event_prefix(cached.name, channel), cached.data_json, b"}"))
            return
        conn.send_json(encode_cache_miss(channel))
        self._report(conn.app_id, {"name": "cache_miss", "channel": channel})

    def _report(self, app_id: str, event: dict[str, Any]) -> None:
        kinds = self.report_events.get(app_id)
        if kinds and event["name"] in kinds:
            self.broker.report(app_id, event)

    # Client events and sign-in -------------------------------------------------------------

    def _client_event(self, conn: Connection, event: ClientEvent) -> None:
        publication, report = accept_client_event(
            self._app(conn),
            conn.socket_id,
            event,
            conn.subscriptions,
            self._session(conn),
            self.limits.client_events_per_second,
            time.monotonic(),
        )
        self.broker.publish(publication)
        self.stats.client_events += 1
        if self.tap is not None:
            self.tap.client_event(publication)
        self._report(conn.app_id, report)

    def _signin(self, conn: Connection, signin: Signin) -> None:
        user_id = check_signin(self._app(conn), conn.socket_id, signin)
        session = self._session(conn)
        if session.user_id is not None:
            self.users.discard(conn.app_id, session.user_id, conn)
        session.user_id = user_id
        self.users.add(conn.app_id, user_id, conn)
        conn.send_json(encode_signin_success(signin.user_data))

    # Channel state changes, in the order every process shares ------------------------------

    def on_changes(self, origin: int, changes: list[Change]) -> None:
        for change in changes:
            if isinstance(change, TerminateUser):
                for conn in self.users.of(change.app_id, change.user_id):
                    conn.close(CloseCode.UNAUTHORIZED, TERMINATED_REASON)
                continue
            for transition in self.state.apply(origin, change):
                self._on_transition(transition)

    def _on_transition(self, transition: Transition) -> None:
        match transition:
            case MemberAdded(app_id, channel, user_id, user_info, socket_id):
                payload = encode_member_added(channel, user_id, user_info)
                self._broadcast_local(app_id, channel, payload, socket_id)
            case MemberRemoved(app_id, channel, user_id):
                self._broadcast_local(app_id, channel, encode_member_removed(channel, user_id))
            case JoinAccepted(app_id, channel, socket_id, user_id):
                conn, session = self._pending_join(socket_id, channel, user_id)
                if conn is not None and session is not None:
                    session.members[channel] = user_id
                    self._add(conn, channel)
                    conn.send_json(self._succeeded(app_id, channel))
                    self._replay_cache(conn, channel)
            case JoinRefused(app_id, channel, socket_id, reason):
                conn, _ = self._pending_join(socket_id, channel, None)
                if conn is not None:
                    conn.send_json(encode_subscription_error(channel, "LimitReached", reason, 403))

    def _pending_join(
        self, socket_id: str, channel: str, user_id: str | None
    ) -> tuple[Connection | None, Session | None]:
        """The local connection whose join this answers (and its session), taken off pending."""
        conn = self.connections.get(socket_id)
        session = self.sessions.get(socket_id)
        if conn is None or session is None or channel not in session.pending:
            return None, None
        if user_id is not None and session.pending[channel] != user_id:
            return None, None
        del session.pending[channel]
        return conn, session

    def _broadcast_local(
        self, app_id: str, channel: str, payload: bytes, excluded: str | None = None
    ) -> None:
        registry = self.channels.get(app_id)
        subscribers = registry.subscribers(channel) if registry is not None else None
        if subscribers:
            assert self.fanout is not None
            self.fanout.broadcast(channel, text_frame(payload), subscribers, excluded)

    # Fan-out -------------------------------------------------------------------------------

    def deliver(self, pub: Publication) -> None:
        """Send a publication to every local subscriber: one encoding per channel, shared bytes."""
        registry = self.channels.get(pub.app_id)
        if registry is None:
            return
        assert self.fanout is not None, "Relay.start() first"
        self.stats.publications += 1
        self.fanout.accepted_at = pub.accepted_at
        end = b"}" if pub.user_id is None else b',"user_id":' + orjson.dumps(pub.user_id) + b"}"
        for channel in pub.channels:
            if is_cache(channel) and not pub.name.startswith("client-"):
                self.cache.store(pub.app_id, channel, pub.name, pub.data_json, time.monotonic())
            subscribers = registry.subscribers(channel)
            if subscribers:
                frame = broadcast_frame(event_prefix(pub.name, channel), pub.data_json, end)
                self.fanout.broadcast(channel, frame, subscribers, pub.socket_id)

    # Liveness ------------------------------------------------------------------------------

    def _schedule_sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(HEARTBEAT_SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        self._sweep_slice(time.monotonic(), list(self.connections.values()))

    def _sweep_slice(self, now: float, pending: list[Connection]) -> None:
        # In slices, like fan-out: 10,000 connections checked at once held the loop (and every
        # publisher's acknowledgement) for several milliseconds each second.
        for conn in pending[-SWEEP_SLICE:]:
            if conn.state is not _OPEN:
                continue
            action = conn.heartbeat.poll(now)
            if action is None:  # nearly always, and then no Enum member is read (see _OPEN)
                continue
            if action is HeartbeatAction.SEND_PING:
                conn.send_json(PING_FRAME)
            else:
                conn.close(action)
        del pending[-SWEEP_SLICE:]
        if pending:
            self._sweeper = asyncio.get_running_loop().call_soon(self._sweep_slice, now, pending)
            return
        self.cache.expire(now)
        self._schedule_sweep()

    def close_all(self, code: int) -> None:
        for conn in list(self.connections.values()):
            conn.close(code)

    def reconfigure(self, apps: AppRegistry, limits: LimitsConfig) -> None:
        """A reload: new apps get their channels; the limits hold for what connects (timeouts,
        queue and frame sizes) or subscribes (counts, user_info, client event rate) next."""
        self.apps = apps
        self.limits = limits
        for app in apps:
            self.channels.setdefault(app.id, ChannelRegistry())
