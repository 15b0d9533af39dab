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
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from contextlib import AbstractContextManager
from typing import NamedTuple

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


def endpoint(state: ClusterState, service: Service) -> dpb.ServiceEndpoint:
    """A service's VIP and the addresses of its tasks that may take connections: ready
    (healthy, with a health check) and not draining before a stop (ADR 33), chosen and weighted
    by the service's deployment strategy (ADR 35)."""
    tasks = [state.tasks[t] for t in state.tasks_by_service.get(service.id, ())]
    routing = strategy.routing(service, tasks)
    # Networks (#14, ADR 47): every node isolates by them, so every live task is a member.
    names = network_names(service.spec)
    found = [state.network_by_name(name) for name in names]
    internal = all(n is not None and n.internal for n in found)
    members = {t.overlay_address for t in tasks if t.overlay_address and not t.state.terminal}
    return convert.endpoint_to_pb(
        service, routing.backends, routing.canary, routing.canary_weight, names, members, internal
    )


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
        self._by_id: dict[str, dpb.ServiceEndpoint] = {}  # service id -> its endpoint
        self._by_name: dict[str, dpb.ServiceEndpoint] = {}  # what agents hold, by service name
        self._counted: dict[str, str] = {}  # task id -> service id, of tasks that `_counts`
        self._backend_refs: dict[str, int] = {}  # backend address -> held entries naming it
        self._named_changed: set[str] = set()  # addresses named or unnamed since the last version
        self._history = BackendHistory()  # every version's backends, as intervals (ADR 72)
        self._view = EndpointView(-1, frozenset())
        self._log = changelog.ChangeLog(changelog.HISTORY)  # the names each version changed
        self._whole: bytes | None = None  # the current version's whole list, once encoded
        self._deltas: dict[int, bytes | None] = {}  # base -> delta onto the current version
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

    def since(self, sent: int, deltas: bool) -> tuple[EndpointView, bytes] | None:
        """What a session that holds version `sent` must be sent: None if it is current; a delta
        if its agent takes them and `sent` is recent enough; the whole list otherwise."""
        view = self.current()
        if view.at == sent:
            return None
        delta = self._delta(sent) if deltas else None
        return view, delta if delta is not None else self.whole()

    def _delta(self, base: int) -> bytes | None:
        """The delta from version `base` onto the current one, encoded once per base (sessions
        in step share it); None when `base` is no longer in the log. A delta is never larger than
        the whole list but by the names removed, so it is sent whenever it can be."""
        if base in self._deltas:
            return self._deltas[base]
        names = self._log.since(base)
        encoded = None
        if names is not None:
            changed_entries = [self._by_name[n] for n in sorted(names) if n in self._by_name]
            removed = sorted(n for n in names if n not in self._by_name)
            encoded = encode_endpoint_delta(changed_entries, removed, base, self._view.at)
        self._deltas[base] = encoded
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
            changed = self._recompute(state, dirty)
        self._through = last
        if changed:
            self._new_version(max(last, self._view.at + 1), changed)

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

    def _recompute(self, state: ClusterState, service_ids: set[str]) -> set[str]:
        """Recompute the endpoints of `service_ids`; the names whose entry changed."""
        changed: set[str] = set()
        for service_id in service_ids:
            service = state.services.get(service_id)
            new = endpoint(state, service) if service is not None and service.vip else None
            old = self._by_id.get(service_id)
            if new == old:
                continue
            # The new backends first: an address in both never drops to no entry, so only what
            # changed is "named or unnamed" (the history records O(changes), ADR 72).
            if new is not None:
                self._count(new.backends, 1)
            if old is not None:
                self._count(old.backends, -1)
                del self._by_id[service_id]
                if self._by_name.get(old.name) is old:  # not already taken by another service
                    del self._by_name[old.name]
                changed.add(old.name)
            if new is not None:
                self._by_id[service_id] = self._by_name[new.name] = new
                changed.add(new.name)
        return changed

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
            by_id = {s.id: endpoint(state, s) for s in state.services.values() if s.vip}
            self._counted = {t.id: t.service_id for t in state.tasks.values() if _counts(t)}
        by_name = {e.name: e for e in by_id.values()}
        old = self._by_name
        changed = {n for n, e in by_name.items() if old.get(n) != e} | {n for n in old if n not in by_name}
        self._by_id, self._by_name = by_id, by_name
        self._named_changed.update(self._backend_refs)  # counted again from nothing: any may go
        self._backend_refs = {}
        for entry in by_id.values():
            self._count(entry.backends, 1)
        self._through = index
        if changed or self._view.at < 0:
            self._new_version(max(index, self._view.at + 1), changed)
        else:
            self._named_changed = set()  # the same entries, so the same backends as the version held

    def _new_version(self, at: int, changed: set[str]) -> None:
        backends = self._history.record(at, self._backend_refs.keys(), self._named_changed)
        self._named_changed = set()
        self._log.record(at, self._view.at, changed)
        self._view = EndpointView(at, backends)
        self._whole = None
        self._deltas = {}
