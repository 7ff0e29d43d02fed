"""sidecar.engine.bad_frames: the budget of refused frames a connection may send, no I/O."""

from __future__ import annotations

from sidecar.engine.bad_frames import BAD_FRAME_BURST, BAD_FRAMES_PER_SECOND, BadFrameBudget


def spend(budget: BadFrameBudget, count: int, now: float) -> list[bool]:
    return [budget.spend(now) for _ in range(count)]


def test_a_burst_is_allowed_then_the_next_refusal_is_one_too_many() -> None:
    budget = BadFrameBudget(now=10.0)
    assert all(spend(budget, BAD_FRAME_BURST, 10.0))
    assert budget.spend(10.0) is False
    assert budget.spend(10.0) is False  # stays over while nothing is earned back


def test_the_budget_comes_back_at_the_rate() -> None:
    budget = BadFrameBudget(now=0.0)
    spend(budget, BAD_FRAME_BURST, 0.0)
    later = 1.0 / BAD_FRAMES_PER_SECOND
    assert budget.spend(later) is True
    assert budget.spend(later) is False


def test_a_steady_trickle_at_the_rate_is_never_closed() -> None:
    budget = BadFrameBudget(now=0.0)
    step = 1.0 / BAD_FRAMES_PER_SECOND
    assert all(budget.spend(i * step) for i in range(10 * BAD_FRAME_BURST))


def test_a_flood_is_stopped_within_the_burst_and_what_a_second_earns() -> None:
    budget = BadFrameBudget(now=0.0)
    # 140,000 frames in one second (the attack): allowed ones are the burst plus at
    # most one second's worth, never the rest.
    allowed = sum(budget.spend(i / 140_000) for i in range(140_000))
    assert allowed <= BAD_FRAME_BURST + BAD_FRAMES_PER_SECOND


def test_a_long_quiet_spell_does_not_bank_more_than_the_burst() -> None:
    budget = BadFrameBudget(now=0.0)
    assert sum(spend(budget, 3 * BAD_FRAME_BURST, 86_400.0)) == BAD_FRAME_BURST
