"""The manager's ports (ADR 28) in memory, on the pure core: `commands.apply` on a ClusterState.

A one-process stand-in for the Raft-replicated store, with which the control API, the
dispatcher and the orchestrator run in a unit test, without processes or sockets. It ships in
the package, beside the ports it implements (as httpx ships MockTransport), so that the type
checker holds it to them and tests, benchmarks and chaos scenarios share one.
Not for production: nothing is durable and nothing is replicated.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import msgspec

from warren import commands
from warren.commands import Command, Result
from warren.manager.ports import ProposalError, RaftStatus, Watcher
from warren.state import Change, ClusterState


class AppliedState(Protocol):
    """Where InMemoryRaft applies commands: an InMemoryState, or the LMDB Store itself."""

    state: ClusterState

    @property
    def applied_index(self) -> int: ...

    def commit(self, index: int, changes: list[Change], command: object = None) -> None: ...


class InMemoryState:
    """A StateReader over a ClusterState in memory; `commit` as the Store's, without the disk."""

    def __init__(self, state: ClusterState | None = None) -> None:
        self.state = state if state is not None else ClusterState()
        self.applied_index = 0
        self._watchers: list[Watcher] = []

    @contextmanager
    def read(self) -> Iterator[ClusterState]:
        yield self.state

    def snapshot(self) -> tuple[int, ClusterState]:
        return self.applied_index, self.state.copy()

    def watch(self, watcher: Watcher) -> None:
        self._watchers.append(watcher)

    def commit(self, index: int, changes: list[Change], command: object = None) -> None:
        changes = self.state.apply(changes)  # as stored, as the Store tells its watchers
        self.applied_index = index
        for watcher in self._watchers:
            watcher(index, changes)

    def put(self, *changes: Change) -> int:
        """Commit `changes` as the next index (test set-up that goes around the commands)."""
        self.commit(self.applied_index + 1, list(changes))
        return self.applied_index


class InMemoryRaft:
    """A Consensus whose proposals apply at once, each as the next index, as one manager's
    would. `leader` is the Raft address of the leader; this manager leads if it is its own.
    Membership and leadership changes take effect at once; a member's link is up unless
    `peers` says otherwise."""

    def __init__(
        self,
        store: AppliedState,
        self_addr: str = "127.0.0.1:4243",
        leader: str | None = None,
        peers: dict[str, bool] | None = None,
        term: int = 1,
    ) -> None:
        self.store = store
        self.self_addr = self_addr
        self.leader = self_addr if leader is None else leader
        self.peers = dict(peers or {})
        self.term = term
        self.proposed: list[Command] = []  # every command proposed, committed or not

    @property
    def is_leader(self) -> bool:
        return self.leader == self.self_addr

    async def propose_async(self, command: Command, timeout: float = 5.0) -> Result:
        """As RaftNode's: refused if too big or without quorum, otherwise applied."""
        if (too_large := commands.oversize_message(command)) is not None:
            raise ProposalError("resource_exhausted", too_large)
        status = self.status()
        if not status.has_quorum:
            raise ProposalError(
                "unavailable", f"no quorum: {status.reachable} of {len(status.members)} managers reachable"
            )
        self.proposed.append(command)
        index = self.store.applied_index + 1
        result, changes = commands.apply(self.store.state, command)
        self.store.commit(index, changes, command)
        return msgspec.structs.replace(result, index=index)

    def status(self) -> RaftStatus:
        reachable, total = 1 + sum(self.peers.values()), 1 + len(self.peers)
        return RaftStatus(
            state="leader" if self.is_leader else "follower",
            leader=self.leader,
            term=self.term,
            commit_index=self.store.applied_index,
            applied_index=self.store.applied_index,
            has_quorum=reachable * 2 > total,
            peers=dict(self.peers),
            self_addr=self.self_addr,
        )

    async def read_barrier(self, timeout: float = 5.0) -> int:
        return self.store.applied_index

    async def change_membership(self, action: str, raft_addr: str, timeout: float = 10.0) -> None:
        if action == "add":
            self.peers[raft_addr] = True
        elif action == "remove":
            self.peers.pop(raft_addr, None)
        else:
            raise ValueError(f"unknown membership change {action!r}")

    async def transfer_leadership(self, timeout: float = 5.0) -> str:
        """To the first connected peer, as RaftNode's goes to a caught-up one."""
        successor = next((addr for addr, up in sorted(self.peers.items()) if up), None)
        if successor is None:
            raise ProposalError("unavailable", "no other manager is caught up enough to take over leadership; retry")
        self.leader = successor
        self.term += 1
        return successor
