"""When to ping a quiet client, and when to give up on it, without timers or I/O.

The relay calls `poll(now)` from one periodic sweep over all connections (a loop timer per
connection would cost a TimerHandle each and a reschedule per message), and `on_activity(now)`
whenever a frame arrives, which is only a float store.
"""

from __future__ import annotations

from enum import Enum

from sidecar.protocol.pusher import CloseCode


class HeartbeatAction(Enum):
    SEND_PING = "send_ping"


class Heartbeat:
    """Pusher's liveness rules for one connection.

    - The client is told `activity_timeout`; after that long without a frame from it the relay
      sends pusher:ping, and closes with 4201 if nothing arrives within `pong_timeout`.
    - A connection that holds no subscription for `idle_timeout` seconds is closed with 4202
      (0 disables): it costs a socket and serves nobody.
    """

    __slots__ = (
        "activity_timeout",
        "idle_since",
        "idle_timeout",
        "last_activity",
        "ping_sent_at",
        "pong_timeout",
    )

    def __init__(
        self, now: float, activity_timeout: float, pong_timeout: float, idle_timeout: float
    ) -> None:
        self.activity_timeout = activity_timeout
        self.pong_timeout = pong_timeout
        self.idle_timeout = idle_timeout
        self.last_activity = now
        self.ping_sent_at: float | None = None
        self.idle_since: float | None = now

    def on_activity(self, now: float) -> None:
        self.last_activity = now
        self.ping_sent_at = None

    def on_subscriptions_changed(self, now: float, count: int) -> None:
        if count == 0:
            if self.idle_since is None:
                self.idle_since = now
        else:
            self.idle_since = None

    def poll(self, now: float) -> HeartbeatAction | CloseCode | None:
        """What to do now: send a ping, close with a code, or nothing."""
        if self.ping_sent_at is not None:
            if now - self.ping_sent_at >= self.pong_timeout:
                return CloseCode.PONG_NOT_RECEIVED
        elif now - self.last_activity >= self.activity_timeout:
            self.ping_sent_at = now
            return HeartbeatAction.SEND_PING
        if (
            self.idle_timeout > 0
            and self.idle_since is not None
            and now - self.idle_since >= self.idle_timeout
        ):
            return CloseCode.CLOSED_FOR_INACTIVITY
        return None
