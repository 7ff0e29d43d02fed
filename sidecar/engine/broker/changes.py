"""The broker's second kind of message: changes to the cluster-wide state of channels.

Publications say "deliver this event"; changes say "this many more subscribers here", "this
socket joined that presence channel as that user", "that worker is gone", "close that user's
connections". Every process applies the same changes in the same order (the hub's, or the event
loop's with the memory broker), so every process holds the same counts and member lists.

A change is sent without its origin; whoever puts changes in order (the hub) says which
process they came from, so that a process that dies can have its share taken back
(`OriginGone`). On the wire a batch is the JSON `[origin, [change, ...]]`, each change a short
array whose first element names its kind.

With Redis (several nodes) an origin is a *cluster origin*: `cluster_origin(node_num, local)`
puts the node's number above the hub's local numbering (0 for the hub, 1, 2... for its
workers), so every node's replica can tell whose share a subscription is, and a node that is
gone has all of its origins released at once (`NodeGone`). JSON carries integers exactly up to
2**53: node numbers stay below 2**36, local origins below 2**16.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class CountDelta:
    """Subscriptions to a channel (not presence) gained or lost by the sending process."""

    app_id: str
    channel: str
    delta: int


@dataclass(frozen=True, slots=True)
class MemberJoin:
    """A socket asks to join a presence channel as a user. The ordered stream decides."""

    app_id: str
    channel: str
    socket_id: str
    user_id: str
    user_info: Any = None


@dataclass(frozen=True, slots=True)
class MemberLeave:
    """A socket leaves a presence channel (or never got in: then nothing happens)."""

    app_id: str
    channel: str
    socket_id: str


@dataclass(frozen=True, slots=True)
class OriginGone:
    """A process died: everything it held is released. Sent by the hub only."""

    origin: int


@dataclass(frozen=True, slots=True)
class NodeGone:
    """A node of a cluster is gone (swept): every origin of that node is released."""

    node_num: int


@dataclass(frozen=True, slots=True)
class Share:
    """What one node holds, in place of what the replicas held for that node's origins.

    `share` is shaped like a snapshot restricted to the node's origins (ChannelState.share_of).
    A node publishes it after Redis came back, so that changes lost around an outage cannot
    leave replicas disagreeing; the transitions it causes send no webhooks."""

    node_num: int
    share: Any


@dataclass(frozen=True, slots=True)
class Reset:
    """The whole state, for a process that starts while others run. Sent by the hub only."""

    snapshot: Any


@dataclass(frozen=True, slots=True)
class TerminateUser:
    """Close every connection signed in as this user, wherever it is."""

    app_id: str
    user_id: str


Change = (
    CountDelta | MemberJoin | MemberLeave | OriginGone | NodeGone | Share | Reset | TerminateUser
)
# Bits of a cluster origin below the node number: room for the hub and its workers.
LOCAL_ORIGIN_BITS = 16
MAX_NODE_NUM = 2**36  # node numbers are drawn from [1, MAX_NODE_NUM)


def cluster_origin(node_num: int, local: int) -> int:
    """The origin, cluster-wide, of a node's hub (local 0) or of one of its workers."""
    return node_num << LOCAL_ORIGIN_BITS | local


def node_of(origin: int) -> int:
    """The node number of a cluster origin; 0 for the local origins of one machine."""
    return origin >> LOCAL_ORIGIN_BITS


# Called with the origin of a batch and its changes, in the one order every process shares.
OnChanges = Callable[[int, list[Change]], None]


def _to_wire(change: Change) -> list[Any]:
    match change:
        case CountDelta(app_id, channel, delta):
            return ["c", app_id, channel, delta]
        case MemberJoin(app_id, channel, socket_id, user_id, user_info):
            return ["j", app_id, channel, socket_id, user_id, user_info]
        case MemberLeave(app_id, channel, socket_id):
            return ["l", app_id, channel, socket_id]
        case OriginGone(origin):
            return ["g", origin]
        case NodeGone(node_num):
            return ["n", node_num]
        case Share(node_num, share):
            return ["s", node_num, share]
        case Reset(snapshot):
            return ["r", snapshot]
        case TerminateUser(app_id, user_id):
            return ["t", app_id, user_id]
    raise TypeError(f"not a change: {change!r}")


_FROM_WIRE: dict[str, Callable[..., Change]] = {
    "c": CountDelta,
    "j": MemberJoin,
    "l": MemberLeave,
    "g": OriginGone,
    "n": NodeGone,
    "s": Share,
    "r": Reset,
    "t": TerminateUser,
}


def encode_changes(origin: int, changes: Sequence[Change]) -> bytes:
    return orjson.dumps([origin, [_to_wire(c) for c in changes]])


def decode_changes(data: bytes) -> tuple[int, list[Change]]:
    origin, wire = orjson.loads(data)
    return origin, [_FROM_WIRE[item[0]](*item[1:]) for item in wire]


def restamp(data: bytes, origin: int) -> tuple[bytes, list[Change]]:
    """A batch as received from a process, re-encoded with the origin the hub gives it."""
    _, changes = decode_changes(data)
    return encode_changes(origin, changes), changes
