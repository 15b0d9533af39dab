"""What the manager's services need from the replicated state and from Raft (ADR 28).

The control API, the dispatcher, the orchestrator and the managers service take these small
Protocols, not the concrete `Store` and `RaftNode`: the LMDB store and the PySyncObj node are
one implementation, `warren.manager.inmemory` (the pure core's `commands.apply` on a
ClusterState) is another, with which the services run in a unit test without processes.
No I/O here: only the vocabulary of the ports.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from warren.commands import Command, Result
from warren.state import Change, ClusterState

# Called with the applied index and its changes; changes is None after a snapshot restore,
# meaning "everything may have changed: resynchronise".
Watcher = Callable[[int, list[Change] | None], None]


class ProposalError(Exception):
    """The command was not (or not known to be) committed. `code` is a gRPC-style name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RaftStatus:
    state: str
    leader: str
    term: int
    commit_index: int
    applied_index: int
    has_quorum: bool
    peers: dict[str, bool]  # raft address -> connected
    self_addr: str = ""
    log_entries: int = 0  # in the Raft log, since its last compaction
    log_resident_bytes: int = 0  # of those entries' commands, held in memory (ADR 91)

    @property
    def members(self) -> list[str]:
        """Every member's Raft address, this one's included."""
        return sorted([self.self_addr, *self.peers])

    @property
    def connected(self) -> list[str]:
        """The other members this one has a Raft connection to."""
        return sorted(addr for addr, up in self.peers.items() if up)

    @property
    def reachable(self) -> int:
        """Members this one is connected to, itself included."""
        return 1 + sum(self.peers.values())


class StateReader(Protocol):
    """Reads of the state this manager has applied. Writes go through a Proposer."""

    @property
    def applied_index(self) -> int:
        """The Raft index of the last command applied to the state read."""
        ...

    def read(self) -> AbstractContextManager[ClusterState]:
        """The live state for a short read; keep no reference past it."""
        ...

    def snapshot(self) -> tuple[int, ClusterState]:
        """A copy of the state, to keep, and the index of the last command applied to it."""
        ...

    def watch(self, watcher: Watcher) -> None:
        """Call `watcher(index, changes)` after each commit (on the thread that applies)."""
        ...


class Proposer(Protocol):
    """Writes: propose a command and wait until it is applied here, and whether this manager
    leads (what only the leader does: scheduling, sessions). The status names the leader."""

    @property
    def is_leader(self) -> bool: ...

    async def propose_async(self, command: Command, timeout: float = 5.0) -> Result:
        """`command`'s result once committed and applied here; raises ProposalError if it was
        not (or is not known to be) committed."""
        ...

    def status(self) -> RaftStatus: ...


class Consensus(Proposer, Protocol):
    """A Proposer that also changes who the managers are, for the control API (`node update
    --role`, `cluster info --consistent`) and the managers service (joins)."""

    async def read_barrier(self, timeout: float = 5.0) -> int:
        """Wait until this manager has applied everything committed before the call."""
        ...

    async def change_membership(self, action: str, raft_addr: str, timeout: float = 10.0) -> None:
        """Add or remove (`action`) one member and wait until the change is committed."""
        ...

    async def transfer_leadership(self, timeout: float = 5.0) -> str:
        """Hand leadership to another member; returns its Raft address."""
        ...
