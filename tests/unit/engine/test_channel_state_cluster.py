"""sidecar.engine.channel_state with several nodes: cluster origins, NodeGone, Share, and the
webhook-once rule (every replica computes the same transitions; one node sends each webhook)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sidecar.engine.broker.changes import (
    Change,
    CountDelta,
    MemberJoin,
    MemberLeave,
    NodeGone,
    OriginGone,
    Share,
    cluster_origin,
    decode_changes,
    encode_changes,
    node_of,
)
from sidecar.engine.channel_state import ChannelInfo, ChannelState
from sidecar.engine.transitions import (
    MemberAdded,
    MemberRemoved,
    Occupied,
    Transition,
    Vacated,
)

A = "1"
ROOM = "presence-room"
# Two nodes, each a hub (local 0) and workers (local 1, 2).
N1, N2, N3 = 0x1234_5678, 7, 2**36 - 1
N1_W1, N1_W2, N2_W1 = cluster_origin(N1, 1), cluster_origin(N1, 2), cluster_origin(N2, 1)
N1_HUB, N2_HUB, N3_HUB = cluster_origin(N1, 0), cluster_origin(N2, 0), cluster_origin(N3, 0)


def join(socket_id: str, user_id: str, info: Any = None, channel: str = ROOM) -> MemberJoin:
    return MemberJoin(A, channel, socket_id, user_id, info)


class Webhooks:
    """What one node's on_event hears."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, app_id: str, event: dict[str, Any]) -> None:
        self.events.append(event)


def replica(node_num: int | None) -> tuple[ChannelState, Webhooks]:
    state, hooks = ChannelState(), Webhooks()
    state.on_event, state.node_num = hooks, node_num
    return state, hooks


def test_a_cluster_origin_keeps_its_node_and_local_number_through_json() -> None:
    origin = cluster_origin(N3, 0xFFFF)
    assert node_of(origin) == N3 and origin & 0xFFFF == 0xFFFF
    assert origin < 2**53  # JSON numbers stay exact in every client
    assert node_of(3) == 0  # one machine's local origins belong to no node
    changes: list[Change] = [NodeGone(N2), Share(N2, {"1": {"news": {"o": [[N2_W1, 2]]}}})]
    assert decode_changes(encode_changes(origin, changes)) == (origin, changes)
    assert orjson.loads(encode_changes(origin, changes))[1][0] == ["n", N2]


def test_node_gone_releases_every_origin_of_that_node_and_only_those() -> None:
    state = ChannelState()
    state.apply(N1_W1, CountDelta(A, "news", 2))
    state.apply(N1_W2, CountDelta(A, "news", 1))
    state.apply(N1_HUB, CountDelta(A, "solo", 1))
    state.apply(N2_W1, CountDelta(A, "news", 4))
    state.apply(N1_W1, join("1.1", "ann"))
    state.apply(N1_W2, join("1.2", "bob"))
    state.apply(N2_W1, join("2.1", "bob"))

    out = state.apply(N2_HUB, NodeGone(N1))

    assert sorted(map(repr, out)) == sorted(
        map(repr, [MemberRemoved(A, ROOM, "ann"), Vacated(A, "solo")])
    )  # bob keeps a socket on node 2
    assert state.info(A, "news") == ChannelInfo(4, 0)
    assert state.info(A, "solo") is None
    assert state.members(A, ROOM) == {"bob": None}
    assert state.apply(N2_HUB, NodeGone(N1)) == []  # once is all


def three_replicas() -> list[tuple[ChannelState, Webhooks]]:
    return [replica(N1), replica(N2), replica(N3)]


def apply_everywhere(
    replicas: list[tuple[ChannelState, Webhooks]], origin: int, *changes: Change
) -> list[list[Transition]]:
    return [state.apply_all(origin, list(changes)) for state, _ in replicas]


def test_each_webhook_is_sent_once_by_the_node_whose_batch_caused_it() -> None:
    replicas = three_replicas()
    apply_everywhere(replicas, N1_W1, join("1.1", "ann"))
    apply_everywhere(replicas, N2_W1, join("2.1", "ann"), join("2.2", "bob"))
    apply_everywhere(replicas, N1_W1, MemberLeave(A, ROOM, "1.1"))  # ann still on node 2
    apply_everywhere(replicas, N2_W1, MemberLeave(A, ROOM, "2.2"))

    (s1, h1), (s2, h2), (s3, h3) = replicas
    assert h1.events == [
        {"name": "channel_occupied", "channel": ROOM},
        {"name": "member_added", "channel": ROOM, "user_id": "ann"},
    ]
    assert h2.events == [
        {"name": "member_added", "channel": ROOM, "user_id": "bob"},
        {"name": "member_removed", "channel": ROOM, "user_id": "bob"},
    ]
    assert h3.events == []  # node 3 caused nothing, though it computed everything
    assert s1.snapshot() == s2.snapshot() == s3.snapshot()


def test_a_swept_nodes_webhooks_come_from_the_sweeper_only() -> None:
    replicas = three_replicas()
    apply_everywhere(replicas, N2_W1, join("2.1", "eve"), CountDelta(A, "news", 1))
    for _, hooks in replicas:
        hooks.events.clear()

    transitions = apply_everywhere(replicas, N3_HUB, NodeGone(N2))

    assert transitions[0] == transitions[1] == transitions[2] != []
    (_, h1), (_, h2), (_, h3) = replicas
    assert h1.events == h2.events == []
    assert sorted(e["name"] for e in h3.events) == [
        "channel_vacated",
        "channel_vacated",
        "member_removed",
    ]


def test_a_process_gone_on_its_own_node_is_that_nodes_webhooks() -> None:
    replicas = three_replicas()
    apply_everywhere(replicas, N1_W2, CountDelta(A, "news", 1))
    apply_everywhere(replicas, N1_HUB, OriginGone(N1_W2))
    (_, h1), (_, h2), _ = replicas
    assert [e["name"] for e in h1.events] == ["channel_occupied", "channel_vacated"]
    assert h2.events == []


def test_one_machine_sends_every_transitions_webhook() -> None:
    state, hooks = replica(None)
    state.apply(1, CountDelta(A, "news", 1))
    state.apply(2, CountDelta(A, "news", -5))  # origin 2 held nothing
    state.apply(0, OriginGone(1))
    assert [e["name"] for e in hooks.events] == ["channel_occupied", "channel_vacated"]


# Share --------------------------------------------------------------------------------------


def held(state: ChannelState) -> dict[str, Any]:
    """A replica's counts, members and sockets, whatever order they came in."""
    return {
        app_id: {
            name: {key: sorted(map(repr, items)) for key, items in saved.items()}
            for name, saved in channels.items()
        }
        for app_id, channels in state.snapshot().items()
    }


def node_two_state() -> ChannelState:
    """Node 2's own view: what it holds, beside something of node 1."""
    state = ChannelState()
    state.apply(N2_W1, CountDelta(A, "news", 3))
    state.apply(N2_W1, join("2.1", "bob", {"name": "Bob"}))
    state.apply(N2_W1, join("2.2", "cat"))
    state.apply(N1_W1, join("1.1", "ann"))
    return state


def test_share_of_holds_only_that_nodes_origins() -> None:
    share = node_two_state().share_of(N2)
    assert share == {
        A: {
            "news": {"o": [[N2_W1, 3]], "m": [], "s": []},
            ROOM: {
                "o": [[N2_W1, 2]],
                "m": [["bob", {"name": "Bob"}], ["cat", None]],
                "s": [["2.1", "bob", N2_W1], ["2.2", "cat", N2_W1]],
            },
        }
    }
    assert node_two_state().share_of(N3) == {}


def test_a_share_repairs_a_replica_that_missed_changes_and_sends_no_webhook() -> None:
    source = node_two_state()
    behind, hooks = replica(N1)
    seen: list[list[Transition]] = []
    behind.on_transitions = seen.append
    # This replica missed node 2's news count and cat's join, and kept a ghost dan.
    behind.apply(N2_W1, join("2.1", "bob", {"name": "Bob"}))
    behind.apply(N2_W1, join("2.9", "dan"))
    behind.apply(N2_W1, CountDelta(A, "gone-elsewhere", 1))
    behind.apply(N1_W1, join("1.1", "ann"))
    hooks.events.clear()

    out = behind.apply(N2_HUB, Share(N2, source.share_of(N2)))

    assert sorted(map(repr, out)) == sorted(
        map(
            repr,
            [
                MemberRemoved(A, ROOM, "dan"),
                MemberAdded(A, ROOM, "cat", None, "2.2"),
                Occupied(A, "news"),
                Vacated(A, "gone-elsewhere"),
            ],
        )
    )
    assert hooks.events == []  # a repair, not news
    assert seen[-1] == out  # the console still sees it
    assert held(behind) == held(source)  # the same, join order aside
    assert behind.apply(N2_HUB, Share(N2, source.share_of(N2))) == []  # in place already


def test_a_share_keeps_a_member_who_is_also_on_another_node() -> None:
    state = ChannelState()
    state.apply(N1_W1, join("1.1", "ann", {"n": 1}))
    state.apply(N2_W1, join("2.1", "ann", {"n": 1}))
    assert state.apply(N2_HUB, Share(N2, {})) == []  # node 2 holds nothing any more
    assert state.info(A, ROOM) == ChannelInfo(1, 1)
    assert state.apply(N1_HUB, Share(N1, {})) == [
        MemberRemoved(A, ROOM, "ann"),
        Vacated(A, ROOM),
    ]
    assert state.snapshot() == {}


def test_a_share_takes_nothing_of_other_nodes_it_names() -> None:
    state = ChannelState()
    state.apply(N1_W1, CountDelta(A, "news", 1))
    forged = {A: {"news": {"o": [[N1_W1, 9], [N2_W1, 1]], "m": [], "s": []}}}
    assert state.apply(N2_HUB, Share(N2, forged)) == []
    assert state.info(A, "news") == ChannelInfo(2, 0)


@pytest.mark.parametrize("node_num", [None, N2])
def test_a_share_never_sends_webhooks_even_on_one_machine(node_num: int | None) -> None:
    state, hooks = replica(node_num)
    state.apply(N2_HUB, Share(N2, node_two_state().share_of(N2)))
    assert state.info(A, "news") == ChannelInfo(3, 0)
    assert hooks.events == []
