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
from typing import NamedTuple

from warren import strategy
from warren.manager import changelog
from warren.manager.backendhistory import BackendHistory
from warren.manager.dispatchwire import encode_endpoint_delta, encode_endpoint_entries, encode_endpoints
from warren.manager.endpoints import Addresses, Computed, Held, Patch, composed, computed, head, held
from warren.manager.events import Event, EventHub
from warren.manager.ports import StateReader
from warren.model import Service, Task
from warren.state import Change, ClusterState, Put

# A run longer than this is not sent (ADR 78), but the composed delta. A run can be longer than
# the composed delta, which nets out an address added and removed within it, and than the whole
# list (a task flapping over many versions): by at most this much per message.
MAX_RUN_BYTES = 256 << 10
# Encodings of the current version's whole list with names kept, shared by the sessions that
# keep the same names (ADR 81); nodes in step keep the same, and others get one of their own.
WHOLE_KEPT_SHARED = 16


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
        self._by_name: dict[str, Computed] = {}  # what agents hold, by service name
        self._counted: dict[str, Held] = {}  # task id -> what it gives, of tasks that `counts`
        self._addresses: dict[str, Addresses] = {}  # service id -> what its counted tasks give
        # Each service as of the changes taken in: a service whose strategy routes every task
        # alike is computed from these and the counts alone, all of one index (the live state may
        # be a commit ahead of the changes drained).
        self._services: dict[str, Service] = {}
        self._backend_refs: dict[str, int] = {}  # backend address -> held entries naming it
        self._named_changed: set[str] = set()  # addresses named or unnamed since the last version
        self._history = BackendHistory()  # every version's backends, as intervals (ADR 72)
        self._view = EndpointView(-1, frozenset())
        self._log = changelog.ChangeLog(changelog.HISTORY)  # the names each version changed
        self._whole: bytes | None = None  # the current version's whole list, once encoded
        # The current version's whole list for agents that hold some of it (ADR 81), by the
        # names they hold as they are: nodes in step hold the same, and share one encoding.
        self._whole_kept: dict[tuple[str, ...], bytes] = {}
        # (base, patches, runs) -> delta onto the current version
        self._deltas: dict[tuple[int, bool, bool], bytes | None] = {}
        # Each recent version's own entries, encoded once for runs (ADR 78); None for a version
        # that removed a name or recomputed everything (a run cannot carry it).
        self._steps: dict[int, bytes | None] = {}
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
            services = [self._by_name[name].entry() for name in sorted(self._by_name)]
            self._whole = encode_endpoints(services, self._view.at)
        return self._whole

    def whole_for(self, held: Mapping[str, bytes]) -> tuple[bytes, int]:
        """The current version's whole list for an agent that holds endpoints of these digests,
        by name: those it holds as they are now are named kept instead of sent (ADR 81). With
        how many were kept."""
        if not held:
            return self.whole(), 0
        names = sorted(self._by_name)
        kept = tuple(name for name in names if held.get(name) == self._by_name[name].digest())
        if not kept:
            return self.whole(), 0
        encoded = self._whole_kept.get(kept)
        if encoded is None:
            taken = set(kept)
            services = [self._by_name[name].entry() for name in names if name not in taken]
            encoded = encode_endpoints(services, self._view.at, list(kept))
            if len(self._whole_kept) < WHOLE_KEPT_SHARED:
                self._whole_kept[kept] = encoded
        return encoded, len(kept)

    def __len__(self) -> int:
        """The services of the current version."""
        return len(self._by_name)

    def since(
        self, sent: int, deltas: bool, patches: bool = False, runs: bool = False
    ) -> tuple[EndpointView, bytes] | None:
        """What a session that holds version `sent` must be sent: None if it is current; a delta
        if its agent takes them and `sent` is recent enough (with patches for the services whose
        backends or members only changed, if it takes those; as a run of each version's own
        entries, if it takes runs too); the whole list otherwise."""
        view = self.current()
        if view.at == sent:
            return None
        delta = self._delta(sent, patches, runs and patches) if deltas else None
        return view, delta if delta is not None else self.whole()

    def _delta(self, base: int, patches: bool, runs: bool = False) -> bytes | None:
        """The delta from version `base` onto the current one, encoded once per base (sessions
        in step share it); None when `base` is no longer in the log. A composed delta is never
        larger than the whole list but by the names removed, and a run at most MAX_RUN_BYTES, so
        a delta is sent whenever it can be."""
        if (base, patches, runs) in self._deltas:
            return self._deltas[base, patches, runs]
        encoded = self._run(base) if runs else None
        steps = self._log.steps(base) if encoded is None else None
        if steps is not None:
            names = set().union(*(keys for keys, _ in steps))
            entries = []
            for name in sorted(names):
                current = self._by_name.get(name)
                if current is not None:
                    patch = composed(name, steps) if patches else None
                    entries.append(current.entry() if patch is None else patch.entry(current))
            removed = sorted(n for n in names if n not in self._by_name)
            encoded = encode_endpoint_delta(entries, removed, base, self._view.at)
        self._deltas[base, patches, runs] = encoded
        return encoded

    def _run(self, base: int) -> bytes | None:
        """The delta from version `base` as the run of each version's own entries since, then
        the delta's header (ADR 78): a join of encodings made once per version, where composing
        the net patch of every service cost each base its own pass over every version since it.
        None if a version since cannot be carried so, or the run is too long."""
        versions = self._log.versions(base)
        if versions is None:
            return None
        parts: list[bytes] = []
        for version, _, _ in versions:
            part = self._steps.get(version)
            if part is None:
                return None
            parts.append(part)
        if sum(map(len, parts)) > MAX_RUN_BYTES:
            return None
        return b"".join(parts) + encode_endpoint_delta([], [], base, self._view.at)

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
        """Take in what `changes` give the services' endpoints, and add the ids of the services
        whose endpoints they may alter to `dirty`; True if they may alter every service's (a
        network changed). A task change that gives its endpoint nothing new (starting, then
        running unready) alters nothing."""
        for change in changes:
            kind = change.kind
            if kind == "task":
                if isinstance(change, Put):
                    task = change.obj
                    assert isinstance(task, Task)
                    self._hold(task.id, held(task), dirty)
                else:
                    self._hold(change.id, None, dirty)
            elif kind == "service":
                if isinstance(change, Put):
                    assert isinstance(change.obj, Service)
                    self._services[change.obj.id] = change.obj
                    dirty.add(change.obj.id)
                else:
                    self._services.pop(change.id, None)
                    dirty.add(change.id)
            elif kind == "network":
                return True
        return False

    def _hold(self, task_id: str, new: Held | None, dirty: set[str]) -> None:
        """Take in what a task now gives its service's endpoint (None: nothing)."""
        old = self._counted.get(task_id)
        if old == new:
            return
        if old is not None:
            before = self._addresses[old.service_id]
            before.remove(old)
            if not before.members:  # its last counted task (a removed service's, say)
                del self._addresses[old.service_id]
            dirty.add(old.service_id)
        if new is None:
            del self._counted[task_id]
            return
        self._counted[task_id] = new
        addresses = self._addresses.get(new.service_id)
        if addresses is None:
            addresses = self._addresses[new.service_id] = Addresses()
        addresses.add(new)
        dirty.add(new.service_id)

    def _computed(self, state: ClusterState, service_id: str) -> Computed | None:
        """A service's endpoint now: from the service and the addresses as of the changes taken
        in if its strategy routes every task alike (no task is read: at S2's size each commit
        touched services of 1,000 tasks), from the service and its tasks in the live state
        otherwise (`computed`); None without a VIP."""
        service = self._services.get(service_id)
        if service is not None and not strategy.routes_every_task(service):
            live = state.services.get(service_id)
            return computed(state, live) if live is not None and live.vip else None
        if service is None or not service.vip:
            return None
        given = self._addresses.get(service.id)
        if given is None:
            return Computed(head(state, service), frozenset(), frozenset())
        return Computed(head(state, service), frozenset(given.routed), frozenset(given.members))

    def _recompute(self, state: ClusterState, service_ids: set[str]) -> tuple[set[str], dict[str, Patch]]:
        """Recompute the endpoints of `service_ids`: the names whose entry changed, and how, for
        those whose entry only changed in place (same service, same name)."""
        changed: set[str] = set()
        patches: dict[str, Patch] = {}
        for service_id in service_ids:
            new = self._computed(state, service_id)
            old = self._by_id.get(service_id)
            if new.same(old) if new is not None else old is None:
                continue
            names = {c.name for c in (old, new) if c is not None}
            in_place = False
            patch = Patch.between(old, new)
            # Only what changed is counted: an address in both never drops to no entry, so only
            # that is "named or unnamed" (the history records O(changes), ADR 72).
            self._count(patch.backends_added, 1)
            self._count(patch.backends_removed, -1)
            if old is not None:
                del self._by_id[service_id]
                if self._by_name.get(old.name) is old:  # not already taken by another service
                    del self._by_name[old.name]
                    in_place = new is not None and new.name == old.name and not names & changed
            if new is not None:
                self._by_id[service_id] = new
                self._by_name[new.name] = new
            for name in names:
                patches.pop(name, None)  # a name two services changed travels whole
            if in_place and new is not None:
                patches[new.name] = patch
            changed |= names
        return changed, patches

    def _step(self, changed: set[str], patches: dict[str, Patch]) -> bytes | None:
        """A recomputed version's own entries, encoded: a patch where a name changed in place,
        else its whole entry; None if it removed a name (a run keeps no order between the
        entries and the names removed)."""
        if any(name not in self._by_name for name in changed):
            return None
        entries = []
        for name in sorted(changed):
            current, patch = self._by_name[name], patches.get(name)
            entries.append(current.entry() if patch is None else patch.entry(current))
        encoded = encode_endpoint_entries(entries)
        return encoded if len(encoded) <= MAX_RUN_BYTES else None  # never part of a run sent

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
        self._counted, self._addresses = {}, {}
        with self._store.read() as state:
            index = self._store.applied_index
            self._services = dict(state.services)
            unused: set[str] = set()
            for task in state.tasks.values():
                self._hold(task.id, held(task), unused)
            by_id = {sid: c for sid in self._services if (c := self._computed(state, sid)) is not None}
        by_name = {c.name: c for c in by_id.values()}
        old = self._by_name
        changed = {n for n, c in by_name.items() if not c.same(old.get(n))} | {n for n in old if n not in by_name}
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
        # A run cannot pass through a rebuild (no patches): its version has no step.
        self._steps[at] = self._step(changed, patches) if patches is not None else None
        while len(self._steps) > changelog.HISTORY:
            del self._steps[next(iter(self._steps))]  # the oldest: no longer in the log
        self._view = EndpointView(at, backends)
        self._whole = None
        self._whole_kept = {}
        self._deltas = {}
