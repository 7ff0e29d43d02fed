"""sidecar.engine.broker.local_channels: when a node subscribes and unsubscribes in Redis."""

from __future__ import annotations

from sidecar.engine.broker.changes import CountDelta, MemberJoin, MemberLeave, TerminateUser
from sidecar.engine.broker.local_channels import LocalChannels

NEWS = ("1", "news")
ROOM = ("1", "presence-room")


def test_the_first_subscriber_of_the_node_subscribes_the_last_unsubscribes() -> None:
    local = LocalChannels()
    first = local.apply(1, [CountDelta("1", "news", 1)])
    assert first.subscribe == {NEWS} and first.ready == [(1, "1", "news", 1)]
    other = local.apply(2, [CountDelta("1", "news", 2)])  # another worker: already subscribed
    assert other.subscribe == set() and other.ready == [(2, "1", "news", 1)]
    assert local.apply(1, [CountDelta("1", "news", -1)]).unsubscribe == set()
    last = local.apply(2, [CountDelta("1", "news", -2)])
    assert last.unsubscribe == {NEWS}
    assert local.total(NEWS) == 0 and local.channels() == []


def test_a_workers_subscribes_are_numbered_as_it_numbers_them() -> None:
    local = LocalChannels()
    serials = []
    for delta in (1, -1, 1, 1, -2, 1):
        serials += [r[3] for r in local.apply(1, [CountDelta("1", "news", delta)]).ready]
    assert serials == [1, 2, 3]


def test_members_hold_the_channel_and_a_leave_never_joined_is_nothing() -> None:
    local = LocalChannels()
    joined = local.apply(1, [MemberJoin("1", "presence-room", "1.1", "ann")])
    assert joined.subscribe == {ROOM} and joined.ready == []  # answered on its echo instead
    assert local.apply(1, [MemberJoin("1", "presence-room", "1.1", "ann")]).subscribe == set()
    assert local.apply(1, [MemberLeave("1", "presence-room", "9.9")]).unsubscribe == set()
    assert local.total(ROOM) == 1
    assert local.apply(1, [MemberLeave("1", "presence-room", "1.1")]).unsubscribe == {ROOM}


def test_a_lost_worker_gives_back_exactly_its_share() -> None:
    local = LocalChannels()
    local.apply(1, [CountDelta("1", "news", 2), MemberJoin("1", "presence-room", "1.1", "a")])
    local.apply(2, [CountDelta("1", "news", 1), TerminateUser("1", "a")])
    released = local.release(1)
    assert released.unsubscribe == {ROOM}
    assert local.total(NEWS) == 1
    assert local.release(2).unsubscribe == {NEWS}
    assert local.release(3).unsubscribe == set()


def test_gone_and_back_in_one_batch_needs_no_unsubscribe() -> None:
    local = LocalChannels()
    local.apply(1, [CountDelta("1", "news", 1)])
    needs = local.apply(1, [CountDelta("1", "news", -1), CountDelta("1", "news", 1)])
    assert needs.unsubscribe == set() and needs.subscribe == {NEWS}
    assert local.total(NEWS) == 1
