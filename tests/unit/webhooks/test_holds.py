"""sidecar.webhooks.holds: vacated/removed wait; a comeback within the delay cancels the pair."""

from __future__ import annotations

from sidecar.webhooks.holds import Holds


def occupied(channel: str = "c") -> dict[str, str]:
    return {"name": "channel_occupied", "channel": channel}


def vacated(channel: str = "c") -> dict[str, str]:
    return {"name": "channel_vacated", "channel": channel}


def added(user: str, channel: str = "presence-x") -> dict[str, str]:
    return {"name": "member_added", "channel": channel, "user_id": user}


def removed(user: str, channel: str = "presence-x") -> dict[str, str]:
    return {"name": "member_removed", "channel": channel, "user_id": user}


def test_other_events_pass_straight_through() -> None:
    holds = Holds(delay=3, limit=100)
    for event in (occupied(), added("u"), {"name": "client_event", "channel": "private-a"}):
        assert holds.add(event, now=0) == [event]
    assert len(holds) == 0
    assert holds.next_due() is None


def test_vacated_waits_for_the_delay() -> None:
    holds = Holds(delay=3, limit=100)
    assert holds.add(vacated(), now=10) == []
    assert holds.next_due() == 13
    assert holds.due(12.9) == []
    assert holds.due(13) == [vacated()]
    assert len(holds) == 0
    assert holds.next_due() is None


def test_reoccupied_within_the_delay_fires_nothing() -> None:
    holds = Holds(delay=3, limit=100)
    assert holds.add(vacated(), now=0) == []
    assert holds.add(occupied(), now=1) == []  # swallowed along with the vacated
    assert holds.due(100) == []


def test_reoccupied_after_the_delay_fires_both() -> None:
    holds = Holds(delay=3, limit=100)
    holds.add(vacated(), now=0)
    assert holds.due(3) == [vacated()]
    assert holds.add(occupied(), now=4) == [occupied()]


def test_another_channel_does_not_cancel() -> None:
    holds = Holds(delay=3, limit=100)
    holds.add(vacated("a"), now=0)
    assert holds.add(occupied("b"), now=1) == [occupied("b")]
    assert holds.due(3) == [vacated("a")]


def test_member_pair_is_per_user_and_channel() -> None:
    holds = Holds(delay=3, limit=100)
    holds.add(removed("u1"), now=0)
    holds.add(removed("u2"), now=0.5)
    assert holds.add(added("u2", channel="presence-y"), now=1) == [added("u2", "presence-y")]
    assert holds.add(added("u1"), now=1) == []
    assert holds.due(10) == [removed("u2")]


def test_a_channel_and_a_member_of_the_same_name_are_distinct() -> None:
    holds = Holds(delay=3, limit=100)
    holds.add(vacated("presence-x"), now=0)
    holds.add(removed("u"), now=0)
    assert holds.add(added("u"), now=1) == []
    assert holds.due(5) == [vacated("presence-x")]


def test_due_in_arrival_order_and_a_repeat_moves_to_the_back() -> None:
    holds = Holds(delay=3, limit=100)
    holds.add(vacated("a"), now=0)
    holds.add(vacated("b"), now=1)
    holds.add(vacated("a"), now=2)  # a second vacated with no occupied between: the later wins
    assert holds.next_due() == 4
    assert holds.due(4) == [vacated("b")]
    assert holds.due(5) == [vacated("a")]


def test_a_full_set_lets_the_oldest_go_early() -> None:
    holds = Holds(delay=3, limit=2)
    holds.add(vacated("a"), now=0)
    holds.add(vacated("b"), now=0)
    assert holds.add(vacated("c"), now=0) == [vacated("a")]
    assert len(holds) == 2


def test_zero_delay_still_pairs_within_one_step() -> None:
    holds = Holds(delay=0, limit=10)
    holds.add(vacated(), now=5)
    assert holds.add(occupied(), now=5) == []
    holds.add(vacated(), now=5)
    assert holds.due(5) == [vacated()]


def test_release_all() -> None:
    holds = Holds(delay=3, limit=10)
    holds.add(vacated("a"), now=0)
    holds.add(removed("u"), now=1)
    assert holds.release_all() == [vacated("a"), removed("u")]
    assert len(holds) == 0
