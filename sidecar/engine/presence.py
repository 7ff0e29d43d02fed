"""The presence store interface: who is subscribed where, and who is present, cluster-wide.

`PresenceStore` is the seam between the relay and where channel state lives. Its first
implementation is `ChannelState` (sidecar/engine/channel_state.py): a replica in every process,
fed the broker's one order of changes. A store kept in Redis (../shared/SCALE.md) is a second
module beside it and one more branch in `make_presence_store`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from sidecar.config.model import LimitsConfig
from sidecar.engine.broker.base import Origin
from sidecar.engine.broker.changes import Change, CountDelta, MemberJoin, MemberLeave
from sidecar.engine.channel_state import ChannelInfo, ChannelState
from sidecar.engine.transitions import EventSink, Transition


class PresenceStore(Protocol):
    """Subscription counts and presence members of every channel of every app.

    The contract:
    - **Writes come in the broker's order** (sidecar/engine/broker/base.py: Broker), each with
      the origin the hub gave it: `count` (subscriptions to a non-presence channel gained or
      lost by a node), `join` and `leave` (a socket in or out of a presence channel), `release`
      (a node is gone: its counts and members go, as `OriginGone` says), `release_node` (with
      Redis, every origin of a swept node: `NodeGone`), `replace_share` (with Redis, a node's
      own share put back after an outage: `Share`; `share_of` makes it) and `restore` (`Reset`:
      the whole state, for a node that starts late; `snapshot` makes it). `apply` takes any
      change and calls the one of these it names. Every process applying the same order holds
      the same answers, so whether a join is accepted (a full channel) is decided once, in order.
    - **Each write returns its transitions** (channel_state.py: Occupied, Vacated, MemberAdded,
      MemberRemoved, JoinAccepted, JoinRefused), and gives the webhook-shaped ones to `on_event`
      and all of them to `on_transitions` when these are set (the process that sends webhooks;
      the debug console). An observer that raises is logged, never lets the state fall behind.
      With several nodes (`node_num` set), `on_event` hears only the transitions this node's
      own batches caused (a `NodeGone`: the batch of the node that swept), so each webhook is
      sent once for the cluster; a `Share`'s transitions reach no webhook.
    - **Reads** (`info`, `channels`, `members`, `presence_data`) answer from the state as the
      order made it so far: the publish API's queries and subscription_succeeded's members.

    What the relay still does itself (sidecar/engine/relay.py), not behind this interface:
    - the *local* side of presence: which of its own connections wait for a join to come back
      (`Session.pending`), which are in as which user (`Session.members`), the local subscriber
      sets (`ChannelRegistry`) and turning transitions into frames for them;
    - batching its changes into one announcement per loop turn (`ChangeOutbox`), and sending
      them through the broker rather than writing here: a store that is its own order (Redis)
      would take the writes directly and publish the transitions instead;
    - `TerminateUser`, which is not state: each relay closes its own connections of that user.
    """

    on_event: EventSink | None
    on_transitions: Callable[[list[Transition]], None] | None
    node_num: int | None

    # Writes, in the broker's order ----------------------------------------------------------

    def count(self, origin: Origin, change: CountDelta) -> list[Transition]: ...

    def join(self, origin: Origin, change: MemberJoin) -> list[Transition]: ...

    def leave(self, origin: Origin, change: MemberLeave) -> list[Transition]: ...

    def release(self, origin: Origin) -> list[Transition]:
        """A node's share released: every subscription and member it held goes."""
        ...

    def release_node(self, node_num: int, by: Origin) -> list[Transition]:
        """Every origin of a swept node released; `by`, the sweeper's origin, sends webhooks."""
        ...

    def replace_share(self, node_num: int, share: Any) -> list[Transition]:
        """What this replica held for a node's origins replaced by the node's own share."""
        ...

    def apply(self, origin: Origin, change: Change) -> list[Transition]: ...

    def apply_all(self, origin: Origin, changes: list[Change]) -> list[Transition]: ...

    # Reads ----------------------------------------------------------------------------------

    def info(self, app_id: str, channel: str) -> ChannelInfo | None: ...

    def channels(self, app_id: str, prefix: str = "") -> Iterator[tuple[str, ChannelInfo]]: ...

    def members(self, app_id: str, channel: str) -> dict[str, Any]: ...

    def presence_data(self, app_id: str, channel: str) -> dict[str, Any]: ...

    # A node that starts late ----------------------------------------------------------------

    def snapshot(self) -> Any: ...

    def share_of(self, node_num: int) -> Any:
        """What one node's origins hold, shaped like a snapshot (for `Share`)."""
        ...

    def restore(self, snapshot: Any) -> None: ...


def make_presence_store(limits: LimitsConfig) -> PresenceStore:
    """The store for this process: today the replica every process keeps."""
    return ChannelState(limits.max_presence_members)
