"""What a connection holds beyond plain subscriptions: its user, presence, client-event rate.

Kept apart from Connection (and made only when a connection first needs it) so that the many
connections that only read public channels pay nothing for features they do not use.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

C = TypeVar("C", bound=Hashable)


class RateLimiter:
    """A token bucket: `rate` events per second on average, bursts up to `burst` (by default
    `rate`). No timers."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        self._rate = rate
        self._burst = rate if burst is None else burst
        self._tokens = self._burst
        self._stamp = now

    def allow(self, now: float) -> bool:
        elapsed = now - self._stamp
        self._stamp = now
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@dataclass(slots=True)
class Session:
    user_id: str | None = None  # signed in with pusher:signin
    # presence channel -> the user_id it joined as, once the shared order let it in
    members: dict[str, str] = field(default_factory=dict)
    # presence channel -> user_id, joins sent and not answered yet
    pending: dict[str, str] = field(default_factory=dict)
    limiter: RateLimiter | None = None  # client events
    joins: RateLimiter | None = None  # presence subscriptions


class SignedInUsers(Generic[C]):
    """(app_id, user_id) -> the connections signed in as that user, for terminate_connections."""

    __slots__ = ("_users",)

    def __init__(self) -> None:
        self._users: dict[tuple[str, str], set[C]] = {}

    def add(self, app_id: str, user_id: str, conn: C) -> None:
        self._users.setdefault((app_id, user_id), set()).add(conn)

    def discard(self, app_id: str, user_id: str, conn: C) -> None:
        key = (app_id, user_id)
        signed_in = self._users.get(key)
        if signed_in is not None:
            signed_in.discard(conn)
            if not signed_in:
                del self._users[key]

    def of(self, app_id: str, user_id: str) -> list[C]:
        return list(self._users.get((app_id, user_id), ()))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._users)
