"""How a Raft member treats its peers, patched into PySyncObj 0.3.17 from outside.

PySyncObj has no hooks for any of this: `PeerLinks` overrides its private, name-mangled
handlers (`_SyncObj__...`), so it must come before `SyncObj` among a class's bases.
- A closed connection to the leader calls the election early, staggered by rank (ADR 16).
- Every link is pinged each second, so that an idle one is not dropped at its next send, which
  is a survivor's vote request after the leader crashed (ADR 26).
- A follower that refused an append is retried from the lowest point it named (ADR 26).
- A follower's answer to an older append does not make the leader send the newer ones again
  (ADR 87).
- Links going up and down are logged.
With another PySyncObj version these overrides do nothing, and its own behaviour applies.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from pysyncobj import SyncObj
from pysyncobj.monotonic import monotonic as raft_clock
from pysyncobj.node import Node

log = logging.getLogger("warren.manager.raft")

# After the leader's connection closes, survivor k (by address order) calls an election after
# k to k+0.5 times this, well within the election timeout and apart enough for one vote round.
ELECTION_STAGGER = 0.08
# PySyncObj drops a connection that has read nothing for connectionTimeout (3.5 s) at its next
# send, and followers never talk to each other: every member pings every other this often.
PEER_PING_PERIOD = 1.0
# The shortest wait for an election deadline: below it the poller would spin.
MIN_WAIT = 0.001
_PING = {"type": "warren_ping"}
FOLLOWER, LEADER = 0, 2  # PySyncObj's _RAFT_STATE


class PeerLinks:
    """Mixed into a SyncObj subclass; call `_init_peer_links` before `SyncObj.__init__` (its
    thread calls back at once) and register `_ping_peers` and `_tick_as_usual` as tick
    callbacks after it."""

    # What this reads of SyncObj's state (PySyncObj has no types): declared for the type
    # checker only, nothing is created here.
    _SyncObj__connectedNodes: set[Node]
    _SyncObj__raftLeader: Node | None
    _SyncObj__raftState: int
    _SyncObj__raftElectionDeadline: float
    _SyncObj__transport: Any
    _SyncObj__raftNextIndex: dict[Node, int]
    _SyncObj__conf: Any
    _tick_period: float  # the poller's usual wait (set by the class using this mixin)
    otherNodes: set[Node]
    selfNode: Node

    def _init_peer_links(self) -> None:
        # Follower -> the lowest log index it told us to retry from since it last accepted an
        # append. Only the Raft thread touches it.
        self._retry_from: dict[Node, int] = {}
        self._next_ping = 0.0

    def _connected_nodes(self) -> set[Node]:
        return self._SyncObj__connectedNodes

    def _forget_retry_points(self) -> None:
        self._retry_from.clear()

    # -- links ----------------------------------------------------------------------------------
    def _SyncObj__onNodeConnected(self, node: Node) -> None:
        connected = self._connected_nodes()
        if node not in connected:
            log.info("Raft connection to %s up", node.id)
        connected.add(node)
        self._retry_from.pop(node, None)

    def _SyncObj__onNodeDisconnected(self, node: Node) -> None:
        """PySyncObj only drops the node from its connected set. When the connection to our
        leader closes, the leader most likely crashed (a live but partitioned leader keeps its
        connections open, and the election timeout handles that): call the election soon
        instead of waiting out the timeout, staggered by rank among the survivors so that they
        do not split the vote (ADR 16)."""
        connected = self._connected_nodes()
        if node in connected:
            log.info("Raft connection to %s lost", node.id)
        connected.discard(node)
        self._retry_from.pop(node, None)
        try:
            if node != self._SyncObj__raftLeader or self._SyncObj__raftState != FOLLOWER:
                return
            survivors = sorted(n.id for n in [*self.otherNodes, self.selfNode] if n != node)
            rank = survivors.index(self.selfNode.id)
            # PySyncObj's clock (CLOCK_MONOTONIC_RAW), not time.monotonic: they drift apart.
            deadline = raft_clock() + ELECTION_STAGGER * (rank + random.random() / 2)
            self._SyncObj__raftElectionDeadline = min(self._SyncObj__raftElectionDeadline, deadline)
            # The poller's next wait is read after this returns: let it end at the deadline, not
            # up to a tick period past it (ADR 82). `_tick_as_usual` restores the period.
            wait = self._SyncObj__raftElectionDeadline - raft_clock()
            self._SyncObj__conf.autoTickPeriod = min(self._tick_period, max(MIN_WAIT, wait))
        except (AttributeError, ValueError):  # another PySyncObj version: keep its timeout
            return

    def _tick_as_usual(self) -> None:
        """Give the poller its usual wait back once no election is due within it (a tick
        callback, on the Raft thread)."""
        conf = self._SyncObj__conf
        if conf.autoTickPeriod == self._tick_period:
            return
        due_in = self._SyncObj__raftElectionDeadline - raft_clock()
        if self._SyncObj__raftState == LEADER or due_in >= self._tick_period:
            conf.autoTickPeriod = self._tick_period

    def _ping_peers(self) -> None:
        """Keep every link read from (a tick callback, on the Raft thread): PySyncObj would drop
        an idle one at its next send, and lose what it was sending."""
        now = raft_clock()
        if now < self._next_ping:
            return
        self._next_ping = now + PEER_PING_PERIOD
        for node in list(self._connected_nodes()):
            self._SyncObj__transport.send(node, _PING)

    # -- messages -------------------------------------------------------------------------------
    def _SyncObj__onMessageReceived(self, node: Node, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == _PING["type"]:
            return  # reading it was the point
        if kind == "next_node_idx" and self._SyncObj__raftState == LEADER:
            message = self._lowest_retry_point(node, message)
            if message.get("success"):
                sent_to = self._SyncObj__raftNextIndex.get(node)
                SyncObj._SyncObj__onMessageReceived(self, node, message)
                self._keep_sent(node, sent_to)
                return
        SyncObj._SyncObj__onMessageReceived(self, node, message)

    def _keep_sent(self, node: Node, sent_to: int | None) -> None:
        """Undo PySyncObj's step back after a follower accepted an append (ADR 87).

        The leader sends appends back to back and moves its next index for the follower past
        each one as it sends it. An acceptance sets the next index to just after the entries
        that append carried: behind what later appends, still on their way, already carry. The
        next append then sends those entries again, and the follower, which has them by then,
        deletes and re-writes them, two fsyncs each. A follower that answers late is sent more
        again, falls further behind, and answers later still: one follower spent 6.7 s of 9 in
        fsyncs and its writes took 0.5 s (#15). What was sent on the connection arrives in
        order, so only a refusal needs an older index, and refusals still set it
        (`_lowest_retry_point`); appends lost with a closed connection end in one."""
        if sent_to is not None and self._SyncObj__raftNextIndex.get(node, sent_to) < sent_to:
            self._SyncObj__raftNextIndex[node] = sent_to

    def _lowest_retry_point(self, node: Node, reply: dict[str, Any]) -> dict[str, Any]:
        """Where to resume appends to a follower that refused one (ADR 26).

        A follower refuses an append whose previous entry it lacks (its answer: retry from my
        end) or holds with another term (retry from that entry). PySyncObj sends appends back to
        back, each assuming the one before was accepted (one per 64 KiB of log, one per new
        command), and retries from the LAST refusal. Past a conflicting entry (a deposed leader's
        uncommitted tail), the answer to a later append (my end) overwrites the answer to the
        first (that entry), so the follower never gets past it while the leader's log is more
        than one append ahead: connected, never caught up, and no quorum without it. A
        follower's log changes only when it accepts an append, which it answers with success;
        until then every refusal is an upper bound on where our logs agree: take the lowest."""
        if reply.get("success"):
            self._retry_from.pop(node, None)
            return reply
        if not reply.get("reset"):
            return reply  # a part of an entry sent in pieces arrived: nothing about the log
        lowest = self._retry_from.get(node)
        if lowest is not None and lowest < reply["next_node_idx"]:
            return {**reply, "next_node_idx": lowest}
        self._retry_from[node] = reply["next_node_idx"]
        return reply
