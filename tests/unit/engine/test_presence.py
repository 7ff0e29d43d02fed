"""sidecar.engine.presence: the PresenceStore contract, over every implementation.

One implementation today (the replica, ChannelState); a Redis store joins the `store` fixture.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from sidecar.config.model import LimitsConfig
from sidecar.engine.broker.changes import CountDelta, MemberJoin, MemberLeave, OriginGone
from sidecar.engine.channel_state import ChannelInfo, ChannelState
from sidecar.engine.presence import PresenceStore, make_presence_store
from sidecar.engine.transitions import (
    JoinAccepted,
    JoinRefused,
    MemberAdded,
    MemberRemoved,
    Occupied,
    Vacated,
)

A = "1"
ROOM = "presence-room"
LIMITS = dataclasses.replace(LimitsConfig(), max_presence_members=2)


@pytest.fixture(params=["replica"])
def store(request: pytest.FixtureRequest) -> PresenceStore:
    return make_presence_store(LIMITS)


def join(socket_id: str, user_id: str, info: Any = None) -> MemberJoin:
    return MemberJoin(A, ROOM, socket_id, user_id, info)


def test_the_replica_has_every_member_of_the_interface() -> None:
    wanted = {
        name
        for name, _ in inspect.getmembers(PresenceStore)
        if not name.startswith("_") and name not in dir(object)
    } | set(PresenceStore.__annotations__)
    missing = {name for name in wanted if not hasattr(ChannelState(), name)}
    assert missing == set()
    assert isinstance(make_presence_store(LIMITS), ChannelState)


def test_join_answers_with_the_member_and_the_acceptance(store: PresenceStore) -> None:
    out = store.join(1, join("1.1", "ann", {"name": "Ann"}))
    assert out == [
        Occupied(A, ROOM),
        MemberAdded(A, ROOM, "ann", {"name": "Ann"}, "1.1"),
        JoinAccepted(A, ROOM, "1.1", "ann"),
    ]
    assert store.members(A, ROOM) == {"ann": {"name": "Ann"}}
    assert store.info(A, ROOM) == ChannelInfo(subscription_count=1, user_count=1)
    data = store.presence_data(A, ROOM)
    assert data == {"presence": {"ids": ["ann"], "hash": {"ann": {"name": "Ann"}}, "count": 1}}


def test_a_second_socket_of_a_member_adds_no_member(store: PresenceStore) -> None:
    store.join(1, join("1.1", "ann"))
    assert store.join(2, join("2.1", "ann")) == [JoinAccepted(A, ROOM, "2.1", "ann")]
    assert store.info(A, ROOM) == ChannelInfo(2, 1)
    assert store.leave(1, MemberLeave(A, ROOM, "1.1")) == []
    assert store.leave(2, MemberLeave(A, ROOM, "2.1")) == [
        MemberRemoved(A, ROOM, "ann"),
        Vacated(A, ROOM),
    ]
    assert store.info(A, ROOM) is None and store.members(A, ROOM) == {}


def test_a_full_channel_refuses_the_next_member_in_order(store: PresenceStore) -> None:
    store.join(1, join("1.1", "ann"))
    store.join(1, join("1.2", "bob"))
    (refused,) = store.join(2, join("2.1", "cat"))
    assert isinstance(refused, JoinRefused) and refused.socket_id == "2.1"
    assert list(store.members(A, ROOM)) == ["ann", "bob"]


def test_counts_move_by_origin_and_never_below_zero(store: PresenceStore) -> None:
    assert store.count(1, CountDelta(A, "news", 2)) == [Occupied(A, "news")]
    assert store.count(2, CountDelta(A, "news", 1)) == []
    assert store.count(2, CountDelta(A, "news", -5)) == []  # origin 2 held 1, not 5
    assert store.info(A, "news") == ChannelInfo(2, 0)
    assert dict(store.channels(A)) == {"news": ChannelInfo(2, 0)}
    assert dict(store.channels(A, prefix="presence-")) == {}


def test_releasing_a_node_takes_back_its_counts_and_members_only(store: PresenceStore) -> None:
    store.count(1, CountDelta(A, "news", 2))
    store.count(2, CountDelta(A, "news", 1))
    store.join(2, join("2.1", "ann"))
    store.join(1, join("1.1", "bob"))
    out = store.release(2)
    assert MemberRemoved(A, ROOM, "ann") in out
    assert store.members(A, ROOM) == {"bob": None}
    assert store.info(A, "news") == ChannelInfo(2, 0)
    assert store.release(2) == []  # once is all
    assert store.apply(1, OriginGone(1)) != []  # apply names the same release
    assert store.info(A, "news") is None and store.info(A, ROOM) is None


def test_a_snapshot_restores_the_same_answers_elsewhere(store: PresenceStore) -> None:
    store.count(1, CountDelta(A, "news", 3))
    store.join(2, join("2.1", "ann", {"n": 1}))
    other = make_presence_store(LIMITS)
    other.restore(store.snapshot())
    assert other.info(A, "news") == store.info(A, "news")
    assert other.members(A, ROOM) == {"ann": {"n": 1}}
    # ... and the same share per node: releasing node 2 there empties the room.
    other.release(2)
    assert other.info(A, ROOM) is None


def test_writes_tell_the_observers_and_an_observer_that_raises_stops_nothing(
    store: PresenceStore,
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    batches: list[list] = []
    store.on_event = lambda app_id, event: events.append((app_id, event))

    def broken(transitions: list) -> None:
        batches.append(transitions)
        raise RuntimeError("observer bug")

    store.on_transitions = broken
    store.join(1, join("1.1", "ann"))
    store.count(1, CountDelta(A, "news", 1))
    names = [event["name"] for _, event in events]
    assert names == ["channel_occupied", "member_added", "channel_occupied"]
    assert len(batches) == 2
    assert store.members(A, ROOM) == {"ann": None}
