"""How long to wait before retrying a webhook batch."""

from __future__ import annotations

from collections.abc import Callable


def retry_delay(attempt: int, initial: float, maximum: float, rng: Callable[[], float]) -> float:
    """The wait after failed attempt number `attempt` (1-based): exponential, capped, jittered.

    Doubles from `initial` up to `maximum`; the wait is drawn from the upper half of that step
    ("equal jitter"), so retries never collapse to zero but many relays (or targets) that failed
    together do not retry in lockstep.
    """
    step = min(maximum, initial * 2 ** min(attempt - 1, 62))
    return step / 2 + rng() * step / 2
