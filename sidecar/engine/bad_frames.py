"""How many refused frames a connection may send before it is closed, without I/O.

Browsers running pusher-js never send a frame the relay refuses in normal use; a page with a
bug sends a few (a bad auth, a channel over the subscription limit), a client flooding the port
sends thousands a second. Each refusal costs a reply and the frame's parsing, so a connection
may refuse a burst of `BAD_FRAME_BURST` and then `BAD_FRAMES_PER_SECOND` on average; past that
it is closed with 4101 (Pusher's back-off range: pusher-js reconnects after a pause, and a page
that does it again is closed again, never in a hot loop).
"""

from __future__ import annotations

from sidecar.engine.session import RateLimiter

# Enough for a page that subscribes to a hundred channels over its limit at once.
BAD_FRAME_BURST = 100
# One a second forever is a bug to fix, not a flood: those connections stay.
BAD_FRAMES_PER_SECOND = 1.0


class BadFrameBudget(RateLimiter):
    """The client's refusals: `spend()` is False once it has refused too many."""

    __slots__ = ()

    def __init__(self, now: float) -> None:
        super().__init__(BAD_FRAMES_PER_SECOND, now, burst=BAD_FRAME_BURST)

    # One more refused frame at `now`: True while within the budget, False: close.
    spend = RateLimiter.allow
