"""What a node decides about liveness, from what it saw: sweep whom, re-assert or give up. No I/O.

`NodeLiveness` (cluster_nodes.py) does the Redis side and asks these rules. Keys expire on
Redis's clock, so a Redis that stops answering for longer than 3 heartbeats (paused, swapping,
a long `DEBUG SLEEP`) comes back with every node's key expired at once: a node that swept
whatever it found missing would then sweep the whole cluster. The rules that prevent it:

- A node sweeps others only while its own heartbeats are healthy: each of the last 3 succeeded
  promptly, one in each interval (on this process's monotonic clock). A pause of Redis, or of
  this node, breaks that for 3 heartbeats, during which every other node gets its key back.
- A node found missing is swept only if it is missing again the next round this node may sweep,
  so a node whose key just lapsed has one more heartbeat to put it back.
- A node whose own key lapsed puts it back (a plain SET) unless it was swept: a sweeper leaves
  a tombstone before it says so, and the node may also have seen `NodeGone` for itself. Then it
  is evicted: it closes its clients and joins again under a new node number.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping

# Heartbeats in a row that must have succeeded before a node may sweep others (and the number
# a node may miss before it is swept: its key lives 3 heartbeats).
HEALTHY_BEATS = 3
# A heartbeat "in each interval": no more than this many heartbeats from one start to the next.
MAX_GAP = 1.5
# A heartbeat is prompt when its round trips took at most this share of a heartbeat.
PROMPT = 0.5


class KeyLapsed(enum.Enum):
    """What a node does when its own heartbeat key is gone."""

    REASSERT = "reassert"  # it expired (Redis or this node paused; Redis restarted): set it again
    EVICTED = "evicted"  # another node swept it: close the clients, join again as a new node


class LivenessRules:
    def __init__(self, node_num: int, heartbeat: float) -> None:
        self.node_num = node_num
        self.heartbeat = heartbeat
        # (started, finished) of the last heartbeats on the monotonic clock; None: one failed.
        self._beats: deque[tuple[float, float] | None] = deque(maxlen=HEALTHY_BEATS)
        self._suspects: set[int] = set()
        self.evicted = False

    # This node's own heartbeats ------------------------------------------------------------

    def beat_succeeded(self, started: float, finished: float) -> None:
        self._beats.append((started, finished))

    def beat_failed(self) -> None:
        self._beats.append(None)
        self._suspects.clear()  # what was seen before an outage proves nothing after it

    def healthy(self, now: float) -> bool:
        """Each of the last HEALTHY_BEATS heartbeats succeeded promptly, one per interval, the
        last one recently: this node's view of Redis can be trusted to sweep."""
        if len(self._beats) < HEALTHY_BEATS:
            return False
        previous: float | None = None
        for beat in self._beats:
            if beat is None:
                return False
            started, finished = beat
            if finished - started > PROMPT * self.heartbeat:
                return False
            if previous is not None and started - previous > MAX_GAP * self.heartbeat:
                return False
            previous = started
        assert previous is not None
        return now - previous <= MAX_GAP * self.heartbeat

    def key_lapsed(self, tombstoned: bool) -> KeyLapsed:
        """This node's key was gone at its heartbeat; `tombstoned`: a sweeper's mark is there."""
        if tombstoned or self.evicted:
            self.evicted = True
            return KeyLapsed.EVICTED
        return KeyLapsed.REASSERT

    def told_gone(self, node_num: int) -> bool:
        """`NodeGone(node_num)` came through the log; True if it names this node (evicted)."""
        self._suspects.discard(node_num)
        if node_num == self.node_num:
            self.evicted = True
        return self.evicted

    # Other nodes ---------------------------------------------------------------------------

    def to_sweep(self, now: float, alive: Mapping[int, bool]) -> list[int]:
        """The nodes to sweep now, given which listed nodes still have their key.

        Only while healthy, and only nodes found missing in two such rounds in a row."""
        missing = {n for n, up in alive.items() if not up and n != self.node_num}
        if not self.healthy(now):
            self._suspects.clear()
            return []
        confirmed = sorted(missing & self._suspects)
        self._suspects = missing - set(confirmed)
        return confirmed

    def forget(self, node_nums: Iterable[int]) -> None:
        """Nodes swept (by this node or another) need no more watching."""
        self._suspects.difference_update(node_nums)
