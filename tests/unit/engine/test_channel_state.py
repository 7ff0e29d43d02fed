"""sidecar.engine.channel_state: counts and presence members from ordered changes (no I/O)."""

from __future__ import annotations

from typing import Any

import orjson

from sidecar.engine.broker.changes import (
    CountDelta,
    MemberJoin,
    MemberLeave,
    OriginGone,
    Reset,
    TerminateUser,
    decode_changes,
    encode_changes,
)
from sidecar.engine.channel_state import ChannelInfo, ChannelState
from sidecar.engine.transitions import (
    JoinAccepted,
    JoinRefused,
    MemberAdded,
    MemberRemoved,
    Occupied,
    Vacated,
    webhook_event,
)

A = "1"


def join(socket_id: str, user_id: str, channel: str = "presence-room", info: Any = None):
    return MemberJoin(A, channel, socket_id, user_id, info)


def leave(socket_id: str, channel: str = "presence-room") -> MemberLeave:
    return MemberLeave(A, channel, socket_id)


def test_counts_add_up_across_origins_with_occupied_and_vacated_once() -> None:
    state = ChannelState()
    assert state.apply(1, CountDelta(A, "news", 2)) == [Occupied(A, "news")]
    assert state.apply(2, CountDelta(A, "news", 3)) == []
    assert state.info(A, "news") == ChannelInfo(5, 0)
    assert state.apply(1, CountDelta(A, "news", -2)) == []
    assert state.apply(2, CountDelta(A, "news", -3)) == [Vacated(A, "news")]
    assert state.info(A, "news") is None
    assert list(state.channels(A)) == []


def test_a_count_never_goes_below_what_its_origin_holds() -> None:
    state = ChannelState()
    state.apply(1, CountDelta(A, "news", 1))
    assert state.apply(2, CountDelta(A, "news", -5)) == []  # origin 2 held nothing
    assert state.info(A, "news") == ChannelInfo(1, 0)
    assert state.apply(2, CountDelta(A, "lonely", -1)) == []
    assert list(state.channels(A)) == [("news", ChannelInfo(1, 0))]


def test_apps_do_not_share_channels() -> None:
    state = ChannelState()
    state.apply(1, CountDelta("1", "news", 1))
    assert state.info("2", "news") is None
    assert list(state.channels("2")) == []


def test_channels_filter_by_prefix() -> None:
    state = ChannelState()
    for name in ("presence-a", "private-b", "presence-c", "news"):
        state.apply(1, CountDelta(A, name, 1))
    assert [n for n, _ in state.channels(A, "presence-")] == ["presence-a", "presence-c"]
    assert len(list(state.channels(A))) == 4


def test_first_join_adds_the_member_and_accepts_the_socket() -> None:
    state = ChannelState()
    out = state.apply(1, join("1.1", "ann", info={"name": "Ann"}))
    assert out == [
        Occupied(A, "presence-room"),
        MemberAdded(A, "presence-room", "ann", {"name": "Ann"}, "1.1"),
        JoinAccepted(A, "presence-room", "1.1", "ann"),
    ]
    assert state.presence_data(A, "presence-room") == {
        "presence": {"ids": ["ann"], "hash": {"ann": {"name": "Ann"}}, "count": 1}
    }


def test_one_member_per_user_however_many_sockets_and_workers() -> None:
    state = ChannelState()
    state.apply(1, join("1.1", "ann"))
    assert state.apply(2, join("2.1", "ann")) == [JoinAccepted(A, "presence-room", "2.1", "ann")]
    state.apply(2, join("2.2", "bob"))
    assert state.info(A, "presence-room") == ChannelInfo(subscription_count=3, user_count=2)
    assert state.apply(1, leave("1.1")) == []  # ann still has a socket
    assert state.apply(2, leave("2.1")) == [MemberRemoved(A, "presence-room", "ann")]
    assert state.members(A, "presence-room") == {"bob": None}
    assert state.apply(2, leave("2.2")) == [
        MemberRemoved(A, "presence-room", "bob"),
        Vacated(A, "presence-room"),
    ]


def test_a_second_join_of_the_same_socket_changes_nothing() -> None:
    state = ChannelState()
    state.apply(1, join("1.1", "ann"))
    assert state.apply(1, join("1.1", "ann")) == []
    assert state.info(A, "presence-room") == ChannelInfo(1, 1)


def test_leaving_without_being_in_changes_nothing() -> None:
    state = ChannelState()
    assert state.apply(1, leave("1.1")) == []
    state.apply(1, join("1.1", "ann"))
    assert state.apply(1, leave("9.9")) == []
    assert state.info(A, "presence-room") == ChannelInfo(1, 1)


def test_a_full_channel_refuses_new_users_but_not_more_sockets_of_members() -> None:
    state = ChannelState(max_presence_members=2)
    state.apply(1, join("1.1", "ann"))
    state.apply(1, join("1.2", "bob"))
    (refused,) = state.apply(2, join("2.1", "cat"))
    assert isinstance(refused, JoinRefused)
    assert refused.socket_id == "2.1"
    assert "full: 2 members at most" in refused.reason
    assert state.apply(2, join("2.2", "ann")) == [JoinAccepted(A, "presence-room", "2.2", "ann")]
    assert state.apply(2, leave("2.1")) == []  # the refused socket's leave is a no-op
    assert state.info(A, "presence-room") == ChannelInfo(3, 2)


def test_a_refused_join_on_an_empty_channel_leaves_no_trace() -> None:
    state = ChannelState(max_presence_members=0)
    (refused,) = state.apply(1, join("1.1", "ann"))
    assert isinstance(refused, JoinRefused)
    assert state.snapshot() == {}


def test_a_gone_origin_releases_its_subscriptions_and_members() -> None:
    state = ChannelState()
    state.apply(1, CountDelta(A, "news", 4))
    state.apply(2, CountDelta(A, "news", 1))
    state.apply(1, CountDelta(A, "only-one", 1))
    state.apply(1, join("1.1", "ann"))
    state.apply(2, join("2.1", "ann"))
    state.apply(1, join("1.2", "bob"))
    out = state.apply(0, OriginGone(1))
    assert set(out) == {
        Vacated(A, "only-one"),
        MemberRemoved(A, "presence-room", "bob"),
    }
    assert state.info(A, "news") == ChannelInfo(1, 0)
    assert state.members(A, "presence-room") == {"ann": None}
    assert state.info(A, "presence-room") == ChannelInfo(1, 1)


def test_snapshot_restores_the_same_state_and_later_changes_agree() -> None:
    state = ChannelState()
    state.apply(1, CountDelta(A, "news", 2))
    state.apply(1, join("1.1", "ann", info={"n": 1}))
    state.apply(2, join("2.1", "ann"))
    state.apply(2, join("2.2", "bob", info=[1, 2]))
    snapshot = orjson.loads(orjson.dumps(state.snapshot()))  # as it travels: JSON
    copy = ChannelState()
    assert copy.apply(0, Reset(snapshot)) == []
    assert copy.snapshot() == snapshot
    assert list(copy.channels(A)) == list(state.channels(A))
    for other in (state, copy):
        assert other.apply(0, OriginGone(2)) == [MemberRemoved(A, "presence-room", "bob")]
        assert other.members(A, "presence-room") == {"ann": {"n": 1}}


def test_terminate_user_is_not_state() -> None:
    state = ChannelState()
    assert state.apply(0, TerminateUser(A, "ann")) == []


def test_the_observer_gets_webhook_shaped_events_in_order() -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    state = ChannelState(on_event=lambda app_id, event: events.append((app_id, event)))
    state.apply(1, join("1.1", "ann"))
    state.apply(1, CountDelta(A, "news", 1))
    state.apply(1, leave("1.1"))
    state.apply(0, OriginGone(1))
    assert events == [
        (A, {"name": "channel_occupied", "channel": "presence-room"}),
        (A, {"name": "member_added", "channel": "presence-room", "user_id": "ann"}),
        (A, {"name": "channel_occupied", "channel": "news"}),
        (A, {"name": "member_removed", "channel": "presence-room", "user_id": "ann"}),
        (A, {"name": "channel_vacated", "channel": "presence-room"}),
        (A, {"name": "channel_vacated", "channel": "news"}),
    ]


def test_a_failing_observer_does_not_stop_the_state() -> None:
    def broken(app_id: str, event: dict[str, Any]) -> None:
        raise RuntimeError("bug in the webhook sender")

    state = ChannelState(on_event=broken)
    assert state.apply(1, CountDelta(A, "news", 1)) == [Occupied(A, "news")]
    assert state.info(A, "news") == ChannelInfo(1, 0)


def test_webhook_event_is_none_for_join_answers() -> None:
    assert webhook_event(JoinAccepted(A, "presence-x", "1.1", "u")) is None
    assert webhook_event(JoinRefused(A, "presence-x", "1.1", "full")) is None


def test_changes_round_trip_on_the_wire() -> None:
    changes = [
        CountDelta(A, "news", -3),
        join("1.1", "ann", info={"name": "Ann", "tags": ["x"]}),
        leave("1.1"),
        OriginGone(4),
        Reset({"1": {}}),
        TerminateUser(A, "ann"),
    ]
    assert decode_changes(encode_changes(7, changes)) == (7, changes)
