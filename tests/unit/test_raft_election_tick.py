"""The Raft thread's poller wait around an early election (ADR 16, ADR 82): after the leader's
connection closes, the poller wakes at the survivor's election deadline, not up to a tick period
past it, and goes back to its usual wait once no election is due within it."""

from __future__ import annotations

from types import SimpleNamespace

from pysyncobj.monotonic import monotonic as raft_clock
from pysyncobj.node import TCPNode

from warren.manager.raft_peers import ELECTION_STAGGER, MIN_WAIT, PeerLinks

TICK = 0.05
FOLLOWER, CANDIDATE, LEADER = 0, 1, 2


class Survivor(PeerLinks):
    """PeerLinks over the few SyncObj fields it reads, as PySyncObj's thread would leave them."""

    def __init__(self, me: str, leader: str, other: str) -> None:
        self._tick_period = TICK
        self._init_peer_links()
        self.selfNode = TCPNode(me)
        self.leader = TCPNode(leader)
        self.otherNodes = {self.leader, TCPNode(other)}
        self._SyncObj__connectedNodes = set(self.otherNodes)
        self._SyncObj__raftLeader = self.leader
        self._SyncObj__raftState = FOLLOWER
        self._SyncObj__raftElectionDeadline = raft_clock() + 2.5
        self._SyncObj__conf = SimpleNamespace(autoTickPeriod=TICK)

    @property
    def wait(self) -> float:
        return self._SyncObj__conf.autoTickPeriod


def test_the_first_survivor_waits_only_until_its_early_election() -> None:
    survivor = Survivor("127.0.0.1:1", leader="127.0.0.1:3", other="127.0.0.1:2")  # rank 0 of the two left
    survivor._SyncObj__onNodeDisconnected(survivor.leader)
    due_in = survivor._SyncObj__raftElectionDeadline - raft_clock()
    assert due_in <= ELECTION_STAGGER / 2 < TICK
    assert survivor.wait >= MIN_WAIT and 0 <= survivor.wait - due_in < 0.01  # until the deadline, read just before
    survivor._tick_as_usual()  # the election is still due within a usual wait: keep the short one
    assert survivor.wait < TICK


def test_the_usual_wait_comes_back_once_no_election_is_due_within_it() -> None:
    elected = Survivor("127.0.0.1:1", leader="127.0.0.1:3", other="127.0.0.1:2")
    elected._SyncObj__onNodeDisconnected(elected.leader)
    elected._SyncObj__raftState = LEADER  # it won
    elected._tick_as_usual()
    assert elected.wait == TICK

    lost = Survivor("127.0.0.1:1", leader="127.0.0.1:3", other="127.0.0.1:2")
    lost._SyncObj__onNodeDisconnected(lost.leader)
    lost._SyncObj__raftState = CANDIDATE  # PySyncObj draws the next timeout as the election starts
    lost._SyncObj__raftElectionDeadline = raft_clock() + 2.0
    lost._tick_as_usual()
    assert lost.wait == TICK


def test_losing_another_follower_changes_no_wait() -> None:
    survivor = Survivor("127.0.0.1:1", leader="127.0.0.1:3", other="127.0.0.1:2")
    deadline = survivor._SyncObj__raftElectionDeadline
    survivor._SyncObj__onNodeDisconnected(TCPNode("127.0.0.1:2"))
    assert survivor.wait == TICK and survivor._SyncObj__raftElectionDeadline == deadline
