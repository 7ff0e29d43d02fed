"""sidecar.engine.broker.liveness_rules: whom to sweep, re-assert or give up (no Redis)."""

from __future__ import annotations

import pytest

from sidecar.engine.broker.liveness_rules import KeyLapsed, LivenessRules

HEARTBEAT = 1.0
ME, OTHER, THIRD = 10, 20, 30


def beats(rules: LivenessRules, count: int, start: float = 0.0, took: float = 0.01) -> float:
    """`count` prompt heartbeats one interval apart from `start`; the time of the last."""
    at = start
    for i in range(count):
        at = start + i * HEARTBEAT
        rules.beat_succeeded(at, at + took)
    return at + took


def test_a_node_sweeps_only_after_three_prompt_heartbeats_in_a_row() -> None:
    rules = LivenessRules(ME, HEARTBEAT)
    now = beats(rules, 2)
    assert not rules.healthy(now)
    now = beats(rules, 1, start=2.0)
    assert rules.healthy(now)


@pytest.mark.parametrize("spoil", ["failed", "slow", "late"])
def test_a_failed_or_slow_or_late_heartbeat_stops_sweeping_for_three_more(spoil: str) -> None:
    rules = LivenessRules(ME, HEARTBEAT)
    beats(rules, 3)
    if spoil == "failed":
        rules.beat_failed()
        at = 4.0
    elif spoil == "slow":  # answered, but after most of a heartbeat
        rules.beat_succeeded(3.0, 3.9)
        at = 4.0
    else:  # this process was paused: the next beat came 5 heartbeats later
        at = 8.0
    now = beats(rules, 2, start=at)
    assert not rules.healthy(now)
    now = beats(rules, 1, start=at + 2 * HEARTBEAT)
    assert rules.healthy(now)


def test_healthy_needs_a_recent_heartbeat() -> None:
    rules = LivenessRules(ME, HEARTBEAT)
    now = beats(rules, 3)
    assert rules.healthy(now)
    assert not rules.healthy(now + 5 * HEARTBEAT)


def test_a_missing_node_is_swept_when_missing_two_healthy_rounds_in_a_row() -> None:
    rules = LivenessRules(ME, HEARTBEAT)
    now = beats(rules, 3)
    alive = {ME: True, OTHER: False, THIRD: True}
    assert rules.to_sweep(now, alive) == []  # a suspect, first
    now = beats(rules, 1, start=3.0)
    assert rules.to_sweep(now, alive) == [OTHER]
    now = beats(rules, 1, start=4.0)
    assert rules.to_sweep(now, alive) == []  # taken off the suspects once swept


def test_a_node_that_comes_back_in_between_is_not_swept() -> None:
    rules = LivenessRules(ME, HEARTBEAT)
    now = beats(rules, 3)
    assert rules.to_sweep(now, {ME: True, OTHER: False}) == []
    now = beats(rules, 1, start=3.0)
    assert rules.to_sweep(now, {ME: True, OTHER: True}) == []
    now = beats(rules, 1, start=4.0)
    assert rules.to_sweep(now, {ME: True, OTHER: False}) == []  # suspect again, from scratch


def test_the_redis_pause_trap_sweeps_nobody() -> None:
    """Redis paused longer than 3 heartbeats: every key expired on Redis's clock at once."""
    rules = LivenessRules(ME, HEARTBEAT)
    beats(rules, 3)
    for _ in range(5):  # the pause: every heartbeat times out
        rules.beat_failed()
    # Redis is back: this node's own key lapsed too; it was not swept, so it puts it back.
    assert rules.key_lapsed(tombstoned=False) is KeyLapsed.REASSERT
    everyone_missing = {ME: True, OTHER: False, THIRD: False}
    for round_ in range(3):  # the first rounds after the pause: no sweep however it looks
        now = beats(rules, 1, start=10.0 + round_)
        assert rules.to_sweep(now, everyone_missing) == [], round_
    # By now the others have put their keys back: nothing to sweep.
    now = beats(rules, 1, start=13.0)
    assert rules.to_sweep(now, {ME: True, OTHER: True, THIRD: True}) == []
    assert not rules.evicted


def test_suspicions_from_before_an_outage_are_forgotten() -> None:
    rules = LivenessRules(ME, HEARTBEAT)
    now = beats(rules, 3)
    assert rules.to_sweep(now, {ME: True, OTHER: False}) == []
    rules.beat_failed()
    now = beats(rules, 3, start=5.0)
    assert rules.to_sweep(now, {ME: True, OTHER: False}) == []  # suspect again, not swept


def test_a_swept_node_gives_up_on_a_tombstone_or_its_own_node_gone() -> None:
    rules = LivenessRules(ME, HEARTBEAT)
    assert rules.key_lapsed(tombstoned=True) is KeyLapsed.EVICTED
    assert rules.evicted
    told = LivenessRules(ME, HEARTBEAT)
    assert told.told_gone(OTHER) is False
    assert told.told_gone(ME) is True
    assert told.key_lapsed(tombstoned=False) is KeyLapsed.EVICTED


def test_a_node_never_sweeps_itself() -> None:
    rules = LivenessRules(ME, HEARTBEAT)
    now = beats(rules, 3)
    rules.to_sweep(now, {ME: False})
    now = beats(rules, 1, start=3.0)
    assert rules.to_sweep(now, {ME: False}) == []
