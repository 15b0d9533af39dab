"""The services' endpoints as the dispatcher sends them, kept incrementally (ADRs 33, 57, 65).

Every node's load balancer gets every service's VIP and backends. The dispatcher keeps them as
one versioned view: a commit recomputes only the services its changes touched (a task of the
service, the service itself; a network change or a resynchronisation means all), and a session
that announced deltas is sent only the entries that changed since the version it holds. Each
encoding (the whole list of a version, a delta from one version to the next) is made once and
shared by every session that needs it (ADR 57).

Versions are labelled by a Raft index (`at`), which the agents echo back in their heartbeats
(ADR 33): the label of a version is the last index whose changes it is known to reflect. Labels
go up strictly with each new content, so a label names one content: what `RoutingReports`
needs. (A version may reflect a service's changes from a few indexes past its label: they are
read from the live state; the next version then relabels nothing, because nothing changed.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

from warren import strategy
from warren.api import convert
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.commands.networks import network_names
from warren.manager import changelog
from warren.manager.backendhistory import BackendHistory
from warren.manager.dispatchwire import encode_endpoint_delta, encode_endpoints
from warren.manager.events import Event, EventHub
from warren.manager.ports import StateReader
from warren.model import Service, Task
from warren.state import Change, ClusterState, Put


class Computed(NamedTuple):
    """A service's endpoint, with its backends and members as sets (for patches and counts,
    without reading 1,000 addresses back from the message)."""

    entry: dpb.ServiceEndpoint
    backends: frozenset[str]
    members: frozenset[str]


def computed(state: ClusterState, service: Service) -> Computed:
    """A service's VIP and the addresses of its tasks that may take connections: ready
    (healthy, with a health check) and not draining before a stop (ADR 33), chosen and weighted
    by the service's deployment strategy (ADR 35)."""
    tasks = [state.tasks[t] for t in state.tasks_by_service.get(service.id, ())]
    routing = strategy.routing(service, tasks)
    # Networks (#14, ADR 47): every node isolates by them, so every live task is a member.
    names = network_names(service.spec)
    found = [state.network_by_name(name) for name in names]
    internal = all(n is not None and n.internal for n in found)
    members = frozenset(t.overlay_address for t in tasks if t.overlay_address and not t.state.terminal)
    entry = convert.endpoint_to_pb(
        service, routing.backends, routing.canary, routing.canary_weight, names, members, internal
    )
    return Computed(entry, frozenset(routing.backends), members)


def endpoint(state: ClusterState, service: Service) -> dpb.ServiceEndpoint:
    """A service's endpoint as agents get it (`computed`)."""
    return computed(state, service).entry


def all_endpoints(state: ClusterState) -> list[dpb.ServiceEndpoint]:
    """Every service with a VIP, sorted by name: the whole list an agent holds."""
    services = sorted((s for s in state.services.values() if s.vip), key=lambda s: s.spec.name)
    return [endpoint(state, s) for s in services]


def _counts(task: Task) -> bool:
    """Whether the task can be in its service's endpoint (a member or a backend): it has an
    overlay address and has not ended. Tasks that cannot are skipped when they change."""
    return bool(task.overlay_address) and not task.state.terminal


class EndpointView(NamedTuple):
    """One version of the endpoints: its label and all its backends' addresses (for
    `RoutingReports.sent`: one view of the log's `BackendHistory` per version, shared by every
    session; ADR 72)."""

    at: int
    backends: AbstractSet[str]


class EndpointLog:
    """The endpoints of the current state, one version per change, with the names each version
    changed (the last HISTORY of them) and the encodings sessions asked for. Used on the event
    loop only. While sessions use it (`open`/`close`), it follows the committed changes on its
    own subscription to the hub: only the services they touch are recomputed."""

    def __init__(self, store: StateReader, hub: EventHub) -> None:
        self._store = store
        self._hub = hub
        self._users = 0
        self._subscription: AbstractContextManager[asyncio.Queue[Event]] | None = None
        self._events: asyncio.Queue[Event] | None = None
        self._through = -1  # every change up to this index is reflected; -1: recompute all
        self._by_id: dict[str, Computed] = {}  # service id -> its endpoint
        self._by_name: dict[str, dpb.ServiceEndpoint] = {}  # what agents hold, by service name
        self._counted: dict[str, str] = {}  # task id -> service id, of tasks that `_counts`
        self._backend_refs: dict[str, int] = {}  # backend address -> held entries naming it
        self._named_changed: set[str] = set()  # addresses named or unnamed since the last version
        self._history = BackendHistory()  # every version's backends, as intervals (ADR 72)
        self._view = EndpointView(-1, frozenset())
        self._log = changelog.ChangeLog(changelog.HISTORY)  # the names each version changed
        self._whole: bytes | None = None  # the current version's whole list, once encoded
        self._deltas: dict[tuple[int, bool], bytes | None] = {}  # (base, patches) -> delta onto the current version
        self.rebuilds = 0  # whole recomputations (for tests)

    # -- users -----------------------------------------------------------------------------------
    def open(self) -> None:
        """A session starts: follow the commits from now on (a first use recomputes all)."""
        self._users += 1
        if self._subscription is None:
            self._subscription = self._hub.subscribe()
            self._events = self._subscription.__enter__()
            self._through = -1  # what happened unfollowed is unknown: recompute everything

    def close(self) -> None:
        """A session ended; with none left, stop following (a follower keeps no queue)."""
        self._users -= 1
        if self._users <= 0 and self._subscription is not None:
            self._users = 0
            self._subscription.__exit__(None, None, None)
            self._subscription = self._events = None

    # -- what sessions send ------------------------------------------------------------------
    def current(self) -> EndpointView:
        """The current version, after taking in every change committed and delivered so far."""
        self._catch_up()
        return self._view

    def whole(self) -> bytes:
        """The current version's whole list, as an AssignmentsMessage's endpoint fields."""
        if self._whole is None:
            services = [self._by_name[name] for name in sorted(self._by_name)]
            self._whole = encode_endpoints(services, self._view.at)
        return self._whole

    def since(self, sent: int, deltas: bool, patches: bool = False) -> tuple[EndpointView, bytes] | None:
        """What a session that holds version `sent` must be sent: None if it is current; a delta
        if its agent takes them and `sent` is recent enough (with patches for the services whose
        backends or members only changed, if it takes those); the whole list otherwise."""
        view = self.current()
        if view.at == sent:
            return None
        delta = self._delta(sent, patches) if deltas else None
        return view, delta if delta is not None else self.whole()

    def _delta(self, base: int, patches: bool) -> bytes | None:
        """The delta from version `base` onto the current one, encoded once per base (sessions
        in step share it); None when `base` is no longer in the log. A delta is never larger than
        the whole list but by the names removed, so it is sent whenever it can be."""
        if (base, patches) in self._deltas:
            return self._deltas[base, patches]
        steps = self._log.steps(base)
        encoded = None
        if steps is not None:
            names = set().union(*(keys for keys, _ in steps))
            entries = []
            for name in sorted(names):
                current = self._by_name.get(name)
                if current is not None:
                    patch = _composed(name, steps) if patches else None
                    entries.append(current if patch is None else patch.entry(current))
            removed = sorted(n for n in names if n not in self._by_name)
            encoded = encode_endpoint_delta(entries, removed, base, self._view.at)
        self._deltas[base, patches] = encoded
        return encoded

    # -- following the commits -----------------------------------------------------------------
    def _catch_up(self) -> None:
        events = self._drain()
        if self._through < 0 or events is None:
            self._rebuild()
            return
        dirty: set[str] = set()
        last = self._through
        for index, changes in events:
            if index <= self._through:
                continue  # already in the state the last recomputation read
            last = max(last, index)
            if self._touched(changes, dirty):
                self._rebuild()
                return
        if not dirty:
            self._through = last
            return
        with self._store.read() as state:
            changed, patches = self._recompute(state, dirty)
        self._through = last
        if changed:
            self._new_version(max(last, self._view.at + 1), changed, patches)

    def _drain(self) -> list[tuple[int, list[Change]]] | None:
        """Every event delivered since the last call; None if one says "resynchronise". The
        sessions' queues get each event at the same moment as this one, so a session handling
        an event finds it here too."""
        drained: list[tuple[int, list[Change]]] = []
        queue = self._events
        if queue is None:  # used without a session (tests): the state is all there is
            self._through = -1
            return drained
        resync = False
        while not queue.empty():
            index, changes = queue.get_nowait()
            if changes is None:
                resync = True
            else:
                drained.append((index, changes))
        return None if resync else drained

    def _touched(self, changes: list[Change], dirty: set[str]) -> bool:
        """Add the ids of the services `changes` may alter the endpoints of to `dirty`; True if
        they may alter every service's (a network changed)."""
        counted = self._counted
        for change in changes:
            kind = change.kind
            if kind == "task":
                if isinstance(change, Put):
                    task = change.obj
                    assert isinstance(task, Task)
                    if _counts(task):
                        counted[task.id] = task.service_id
                        dirty.add(task.service_id)
                    elif counted.pop(task.id, None) is not None:
                        dirty.add(task.service_id)
                else:
                    service_id = counted.pop(change.id, None)
                    if service_id is not None:
                        dirty.add(service_id)
            elif kind == "service":
                dirty.add(change.obj.id if isinstance(change, Put) else change.id)
            elif kind == "network":
                return True
        return False

    def _recompute(self, state: ClusterState, service_ids: set[str]) -> tuple[set[str], dict[str, Patch]]:
        """Recompute the endpoints of `service_ids`: the names whose entry changed, and how, for
        those whose entry only changed in place (same service, same name)."""
        changed: set[str] = set()
        patches: dict[str, Patch] = {}
        for service_id in service_ids:
            service = state.services.get(service_id)
            new = computed(state, service) if service is not None and service.vip else None
            old = self._by_id.get(service_id)
            if (new.entry if new else None) == (old.entry if old else None):
                continue
            names = {c.entry.name for c in (old, new) if c is not None}
            in_place = False
            # The new backends first: an address in both never drops to no entry, so only what
            # changed is "named or unnamed" (the history records O(changes), ADR 72).
            if new is not None:
                self._count(new.backends, 1)
            if old is not None:
                self._count(old.backends, -1)
                del self._by_id[service_id]
                if self._by_name.get(old.entry.name) is old.entry:  # not already taken by another service
                    del self._by_name[old.entry.name]
                    in_place = new is not None and new.entry.name == old.entry.name and not names & changed
            if new is not None:
                self._by_id[service_id] = new
                self._by_name[new.entry.name] = new.entry
            for name in names:
                patches.pop(name, None)  # a name two services changed travels whole
            if in_place:
                assert old is not None and new is not None
                patches[new.entry.name] = Patch.between(old, new)
            changed |= names
        return changed, patches

    def _count(self, backends: Iterable[str], step: int) -> None:
        """Keep how many held entries name each backend, and which addresses started or stopped
        being named: a version records only those in the history, not every backend (ADR 72)."""
        refs, touched = self._backend_refs, self._named_changed
        for backend in backends:
            count = refs.get(backend, 0) + step
            if count:
                refs[backend] = count
                if count == 1 and step == 1:
                    touched.add(backend)
            else:
                del refs[backend]
                touched.add(backend)

    def _rebuild(self) -> None:
        """Recompute every service (at first use, after a resynchronisation or a network
        change), and record the names that differ from the version held."""
        self.rebuilds += 1
        with self._store.read() as state:
            index = self._store.applied_index
            by_id = {s.id: computed(state, s) for s in state.services.values() if s.vip}
            self._counted = {t.id: t.service_id for t in state.tasks.values() if _counts(t)}
        by_name = {c.entry.name: c.entry for c in by_id.values()}
        old = self._by_name
        changed = {n for n, e in by_name.items() if old.get(n) != e} | {n for n in old if n not in by_name}
        self._by_id, self._by_name = by_id, by_name
        self._named_changed.update(self._backend_refs)  # counted again from nothing: any may go
        self._backend_refs = {}
        for found in by_id.values():
            self._count(found.backends, 1)
        self._through = index
        if changed or self._view.at < 0:
            self._new_version(max(index, self._view.at + 1), changed)
        else:
            self._named_changed = set()  # the same entries, so the same backends as the version held

    def _new_version(self, at: int, changed: set[str], patches: dict[str, Patch] | None = None) -> None:
        backends = self._history.record(at, self._backend_refs.keys(), self._named_changed)
        self._named_changed = set()
        self._log.record(at, self._view.at, changed, patches)
        self._view = EndpointView(at, backends)
        self._whole = None
        self._deltas = {}


class Patch(NamedTuple):
    """How one version changed a service's backends and members, which at S2's size are 1,000
    addresses each: a patch carries only these (ADR 65). Every other field travels whole."""

    backends_added: frozenset[str]
    backends_removed: frozenset[str]
    members_added: frozenset[str]
    members_removed: frozenset[str]

    @classmethod
    def between(cls, old: Computed, new: Computed) -> Patch:
        return cls(
            new.backends - old.backends,
            old.backends - new.backends,
            new.members - old.members,
            old.members - new.members,
        )

    def size(self) -> int:
        return sum(map(len, self))

    def entry(self, current: dpb.ServiceEndpoint) -> dpb.ServiceEndpoint:
        """`current` as a patch, or whole if the patch would not be smaller."""
        if self.size() >= len(current.backends) + len(current.members):
            return current
        patched = dpb.ServiceEndpoint()
        patched.CopyFrom(current)
        patched.ClearField("backends")
        patched.ClearField("members")
        patched.patch = True
        patched.backends_added.extend(sorted(self.backends_added))
        patched.backends_removed.extend(sorted(self.backends_removed))
        patched.members_added.extend(sorted(self.members_added))
        patched.members_removed.extend(sorted(self.members_removed))
        return patched


def _composed(name: str, steps: list[tuple[frozenset[str], Mapping[str, Any]]]) -> Patch | None:
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
