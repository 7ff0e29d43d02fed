"""sidecar.engine.session: the client-event rate limiter and the per-connection session."""

from __future__ import annotations

from sidecar.engine.session import RateLimiter, SignedInUsers


def test_a_burst_up_to_the_rate_then_refusals() -> None:
    limiter = RateLimiter(rate=10, now=0.0)
    assert [limiter.allow(0.0) for _ in range(12)] == [True] * 10 + [False] * 2


def test_tokens_come_back_with_time_but_never_above_the_rate() -> None:
    limiter = RateLimiter(rate=10, now=0.0)
    for _ in range(10):
        limiter.allow(0.0)
    assert limiter.allow(0.05) is False  # half a token
    assert limiter.allow(0.1) is True  # one more token after a tenth of a second
    assert sum(limiter.allow(100.0) for _ in range(20)) == 10  # a long pause: a full bucket


def test_a_steady_rate_at_the_limit_is_allowed() -> None:
    limiter = RateLimiter(rate=10, now=0.0)
    assert all(limiter.allow(i * 0.1) for i in range(100))


def test_signed_in_users_index() -> None:
    users: SignedInUsers[str] = SignedInUsers()
    users.add("1", "ann", "conn-a")
    users.add("1", "ann", "conn-b")
    users.add("2", "ann", "conn-c")  # another app's ann
    assert sorted(users.of("1", "ann")) == ["conn-a", "conn-b"]
    users.discard("1", "ann", "conn-a")
    users.discard("1", "ann", "conn-b")
    users.discard("1", "bob", "conn-x")  # never there: nothing happens
    assert users.of("1", "ann") == []
    assert list(users) == [("2", "ann")]
