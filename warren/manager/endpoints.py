"""One service's endpoint and its parts (ADRs 33, 35, 47, 65, 75): the entry a node's load
balancer gets, computed from the state (`computed`, the definition) or from what the service's
tasks give it, kept per task (`Held`, `Addresses`); and the patch from one version of it to the
next. Pure values: `endpointlog` keeps them versioned for the sessions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import msgspec

from warren import strategy
from warren.api import convert
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.commands.networks import network_names
from warren.model import Service, Task, is_routed
from warren.network.endpointdigest import endpoint_digest, endpoint_of
from warren.state import ClusterState


class Computed:
    """A service's endpoint: every field but its backends and members (`head`), and those as
    sets (for patches and counts, without reading 1,000 addresses back from a message). The whole
    message is made once, when a session first needs it: most versions travel as patches."""

    __slots__ = ("_digest", "_entry", "backends", "head", "members")

    def __init__(self, head: dpb.ServiceEndpoint, backends: frozenset[str], members: frozenset[str]) -> None:
        self.head = head
        self.backends = backends
        self.members = members
        self._entry: dpb.ServiceEndpoint | None = None
        self._digest: bytes | None = None

    @property
    def name(self) -> str:
        return self.head.name

    def entry(self) -> dpb.ServiceEndpoint:
        """The whole message, as `convert.endpoint_to_pb` makes it."""
        if self._entry is None:
            entry = dpb.ServiceEndpoint()
            entry.CopyFrom(self.head)
            entry.backends.extend(sorted(self.backends))
            entry.members.extend(sorted(self.members))
            self._entry = entry
        return self._entry

    def digest(self) -> bytes:
        """The digest of the endpoint an agent makes of the whole message (ADR 81)."""
        if self._digest is None:
            self._digest = endpoint_digest(endpoint_of(self.entry()))
        return self._digest

    def same(self, other: Computed | None) -> bool:
        return (
            other is not None
            and self.backends == other.backends
            and self.members == other.members
            and self.head == other.head
        )


def head(
    state: ClusterState, service: Service, canary: Iterable[str] = (), canary_weight: int = 0
) -> dpb.ServiceEndpoint:
    # Networks (#14, ADR 47): every node isolates by them, so every live task is a member.
    names = network_names(service.spec)
    found = [state.network_by_name(name) for name in names]
    internal = all(n is not None and n.internal for n in found)
    return convert.endpoint_to_pb(service, (), canary, canary_weight, names, (), internal)


def computed(state: ClusterState, service: Service) -> Computed:
    """A service's VIP and the addresses of its tasks that may take connections: ready
    (healthy, with a health check) and not draining before a stop (ADR 33), chosen and weighted
    by the service's deployment strategy (ADR 35); and every live task's address."""
    tasks = [state.tasks[t] for t in state.tasks_by_service.get(service.id, ())]
    routing = strategy.routing(service, tasks)
    members = frozenset(t.overlay_address for t in tasks if counts(t))
    return Computed(head(state, service, routing.canary, routing.canary_weight), frozenset(routing.backends), members)


def endpoint(state: ClusterState, service: Service) -> dpb.ServiceEndpoint:
    """A service's endpoint as agents get it (`computed`)."""
    return computed(state, service).entry()


def all_endpoints(state: ClusterState) -> list[dpb.ServiceEndpoint]:
    """Every service with a VIP, sorted by name: the whole list an agent holds."""
    services = sorted((s for s in state.services.values() if s.vip), key=lambda s: s.spec.name)
    return [endpoint(state, s) for s in services]


def counts(task: Task) -> bool:
    """Whether the task can be in its service's endpoint (a member or a backend): it has an
    overlay address and has not ended. Tasks that cannot are skipped when they change."""
    return bool(task.overlay_address) and not task.state.terminal


class Held(msgspec.Struct, frozen=True, gc=False):
    """What one task that `counts` gives its service's endpoint (its spec version too: under a
    canary or blue/green, which set a task is in depends on it). Untracked by the collector, as
    tasks are (ADR 55): a full collection at S2's size walked 86,240 of them as tuples."""

    service_id: str
    address: str
    routed: bool
    spec_version: int


def held(task: Task) -> Held | None:
    return Held(task.service_id, task.overlay_address, is_routed(task), task.spec_version) if counts(task) else None


class Addresses:
    """The addresses a service's tasks give its endpoint, kept from the task changes (ADR 75):
    every live task's (members) and the routed ones' (the backends of a service whose strategy
    `routes_every_task`). Counted, so that two tasks holding one address for a while (one ending,
    one starting in the same commit) never drop it early."""

    __slots__ = ("members", "routed")

    def __init__(self) -> None:
        self.members: dict[str, int] = {}
        self.routed: dict[str, int] = {}

    def add(self, held: Held) -> None:
        self.members[held.address] = self.members.get(held.address, 0) + 1
        if held.routed:
            self.routed[held.address] = self.routed.get(held.address, 0) + 1

    def remove(self, held: Held) -> None:
        _uncount(self.members, held.address)
        if held.routed:
            _uncount(self.routed, held.address)


def _uncount(tally: dict[str, int], address: str) -> None:
    left = tally[address] - 1
    if left:
        tally[address] = left
    else:
        del tally[address]


class Patch(NamedTuple):
    """How one version changed a service's backends and members, which at S2's size are 1,000
    addresses each: a patch carries only these (ADR 65). Every other field travels whole."""

    backends_added: frozenset[str]
    backends_removed: frozenset[str]
    members_added: frozenset[str]
    members_removed: frozenset[str]

    @classmethod
    def between(cls, old: Computed | None, new: Computed | None) -> Patch:
        """From `old` to `new`; a missing one holds no address."""
        old_backends, old_members = (old.backends, old.members) if old is not None else NOTHING
        new_backends, new_members = (new.backends, new.members) if new is not None else NOTHING
        return cls(
            new_backends - old_backends,
            old_backends - new_backends,
            new_members - old_members,
            old_members - new_members,
        )

    def size(self) -> int:
        return sum(map(len, self))

    def entry(self, current: Computed) -> dpb.ServiceEndpoint:
        """`current` as a patch, or whole if the patch would not be smaller."""
        if self.size() >= len(current.backends) + len(current.members):
            return current.entry()
        patched = dpb.ServiceEndpoint()
        patched.CopyFrom(current.head)
        patched.patch = True
        patched.backends_added.extend(sorted(self.backends_added))
        patched.backends_removed.extend(sorted(self.backends_removed))
        patched.members_added.extend(sorted(self.members_added))
        patched.members_removed.extend(sorted(self.members_removed))
        return patched


NOTHING: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())


def composed(name: str, steps: list[tuple[frozenset[str], Mapping[str, Any]]]) -> Patch | None:
    """The net patch of `name` over `steps` (versions in order); None if one of them changed it
    otherwise than in place (created, renamed, recomputed whole): it then travels whole."""
    backends: tuple[set[str], set[str]] = (set(), set())
    members: tuple[set[str], set[str]] = (set(), set())
    for keys, details in steps:
        if name not in keys:
            continue
        patch = details.get(name)
        if patch is None:
            return None
        _fold(backends, patch.backends_added, patch.backends_removed)
        _fold(members, patch.members_added, patch.members_removed)
    return Patch(frozenset(backends[0]), frozenset(backends[1]), frozenset(members[0]), frozenset(members[1]))


def _fold(net: tuple[set[str], set[str]], added: frozenset[str], removed: frozenset[str]) -> None:
    """Fold one step into the net (added, removed) from the base: an address the step adds back
    was removed since the base, one it removes was added since (each step's own sets are exact)."""
    net_added, net_removed = net
    for address in added:
        if address in net_removed:
            net_removed.discard(address)
        else:
            net_added.add(address)
    for address in removed:
        if address in net_added:
            net_added.discard(address)
        else:
            net_removed.add(address)
