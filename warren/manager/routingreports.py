"""What each node's load balancer may route to (ADR 33): the endpoints the leader sent it, by the
Raft index they were computed at, and the index its heartbeats say it applied. A pass asks it
whether a draining task's address may still get traffic before stopping the task."""

from __future__ import annotations

from collections.abc import Container, Iterator
from collections.abc import Set as AbstractSet

from warren.manager.backendhistory import BackendHistory, BackendsAt


class RoutingReports:
    """The backend addresses each node's load balancer may route to (ADR 33), from the
    endpoints sent to it (by the Raft index they were computed at) and the index its heartbeat
    says it applied. Until it applies the newest, a node may hold any endpoints sent since the
    one it confirmed, so it may route to the union of their backends. A node missing from
    `snapshot()` is unknown: a stop waits for it at most the reconciler's bound."""

    MAX_UNCONFIRMED = 64  # sends without a confirmation before the node counts as unknown

    def __init__(self) -> None:
        self._sent: dict[str, dict[int, AbstractSet[str]]] = {}  # node -> index -> backends
        self._applied: dict[str, int] = {}

    def sent(self, node_id: str, index: int, backends: AbstractSet[str]) -> None:
        """`backends`: the version's, a `BackendsAt` (ADR 72), shared by every node sent it."""
        sent = self._sent.setdefault(node_id, {})
        sent[index] = backends
        if len(sent) > self.MAX_UNCONFIRMED:  # an agent that does not report: unknown
            self.forget(node_id)

    def applied(self, node_id: str, index: int) -> None:
        sent = self._sent.get(node_id)
        if not index or sent is None or index not in sent or index < self._applied.get(node_id, 0):
            return  # nothing sent by this leader, or an older report: says nothing new
        self._applied[node_id] = index
        for older in [i for i in sent if i < index]:
            del sent[older]

    def forget(self, node_id: str) -> None:
        self._sent.pop(node_id, None)
        self._applied.pop(node_id, None)

    def snapshot(self, revoked: Container[str] = ()) -> dict[str, MayRoute]:
        """Node -> every address its load balancer may route to, for the nodes known. Each is the
        union of the backends of the indexes sent since the node's confirmed one, left unbuilt:
        a pass asks it only about the addresses of draining tasks, and building the unions of
        every node's big backend sets at every pass took 40 % of the leader's CPU in S1 (#15).
        The sets are read-only views of versions, so the snapshot is safe to read in another
        thread (see `backendhistory`). Nodes in `revoked` (`node rm`: gone for good, never asked
        about again) are forgotten first, or each would keep its last versions alive (ADR 72)."""
        for node_id in [n for n in self._sent if n in revoked]:
            self.forget(node_id)
        known: dict[str, MayRoute] = {}
        for node_id, applied in self._applied.items():
            sent = self._sent.get(node_id, {})
            known[node_id] = MayRoute(tuple(backends for index, backends in sent.items() if index >= applied))
        return known


class MayRoute(AbstractSet[str]):
    """The union of some sets of addresses, computed only if iterated or sized. When they are
    all versions of one `BackendHistory` (as the dispatcher sends them), membership asks the
    address's intervals against the sorted versions (ADR 72); otherwise each set in turn."""

    __slots__ = ("_history", "_parts", "_versions")

    def __init__(self, parts: tuple[AbstractSet[str], ...]) -> None:
        self._parts = parts
        self._versions: tuple[int, ...] | None = None  # worked out at the first question: most are never asked
        self._history: BackendHistory | None = None

    def __contains__(self, address: object) -> bool:
        if self._versions is None:
            parts = self._parts
            history = parts[0].history if parts and type(parts[0]) is BackendsAt else None
            if history is not None and all(type(p) is BackendsAt and p.history is history for p in parts):
                self._history = history
                self._versions = tuple(sorted([p.at for p in parts]))  # type: ignore[attr-defined]
            else:
                self._versions = ()
        if self._history is not None:
            return isinstance(address, str) and self._history.held_within(address, self._versions)
        return any(address in part for part in self._parts)

    def _union(self) -> frozenset[str]:
        return frozenset().union(*self._parts)

    def __iter__(self) -> Iterator[str]:
        return iter(self._union())

    def __len__(self) -> int:
        return len(self._union())

    def __repr__(self) -> str:
        return f"MayRoute({set(self._union())!r})"
