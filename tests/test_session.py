"""sidecar.relay.session: the client-event rate limiter and the per-connection session."""

from __future__ import annotations

from sidecar.relay.session import RateLimiter, Session


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


def test_a_session_is_empty_until_it_holds_something() -> None:
    session = Session()
    assert session.is_empty()
    session.pending["presence-a"] = "ann"
    assert not session.is_empty()
