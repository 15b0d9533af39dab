"""The agent's view of its assignment set, kept in step with the dispatcher's version chain.

Pure: no grpc calls, no I/O. The session feeds every AssignmentsMessage to `AssignmentSet.apply`,
which either returns what changed or raises `VersionGap` so the session reopens and starts again
from a COMPLETE message (ADR 10). Tasks are read from the wire by warren.api.convert.

Specs travel once per session (ADR 21): a message's `specs` hold the spec versions its tasks
need that were not sent before, and a task finds its spec there, in the session's earlier
specs, or (a task desired to stop) in the copy the agent already holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from warren.agent.runtime import PullLogin
from warren.api import convert, names, specconvert
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import types_pb2 as pb
from warren.model import ServiceSpec, Task, TaskState
from warren.network.endpointdigest import endpoint_digest, endpoint_of, sendable
from warren.network.lb import Endpoint
from warren.specrefs import SpecKey, SpecRefs


class VersionGap(Exception):
    """An INCREMENTAL message does not follow the version we hold: resynchronise."""


@dataclass(frozen=True)
class AssignmentDelta:
    """What one message changed. `complete` means `updated` is the whole set: every task the
    agent holds that is not in it must go (the orphan rule, ADR 12)."""

    complete: bool
    updated: tuple[Task, ...] = ()
    removed: tuple[str, ...] = ()
    managers: tuple[str, ...] = ()
    invalid: tuple[tuple[str, str], ...] = ()  # (task id, why) of tasks that could not be read
    mesh: tuple[MeshMember, ...] | None = None  # the overlay's nodes, when they changed (ADR 17)
    services: tuple[Endpoint, ...] | None = None  # service VIPs and backends, when they changed
    vip_range: str = ""
    services_index: int = 0  # the Raft index `services` were computed at (ADR 33)
    volumes: tuple[str, ...] | None = None  # the volumes living on this node, when they changed (ADR 40)
    # Values of secrets and configs, (kind, name, data), sent with the specs (ADR 38): held in
    # memory only, never cached.
    files: tuple[tuple[str, str, bytes], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class MeshMember:
    node_id: str
    public_key: str
    endpoint: str
    subnet: str


Held = TypeVar("Held")


class KeyOrdered(Mapping[str, Held], Generic[Held]):
    """Entries by key, kept in key order as they change: the order a whole list comes in (the
    managers send endpoints by name, the mesh by node id). A delta costs O(changed) lookups and
    a memmove per added or removed key; re-sorting the whole set whenever a delta added a key
    was 17 % of the S1 simulator's CPU (#15), and real agents run the same code."""

    __slots__ = ("_by_key", "_keys", "_values")

    def __init__(self, entries: Iterable[tuple[str, Held]] = ()) -> None:
        self._by_key: dict[str, Held] = dict(entries)  # a key sent twice: its last entry, as a dict reads
        self._keys = sorted(self._by_key)  # linear for a whole list, which comes sorted
        self._values = [self._by_key[key] for key in self._keys]  # in step with _keys

    def merge(self, entries: Iterable[tuple[str, Held]], removed: Iterable[str]) -> None:
        """Put a delta's entries in by key, then take its removed keys out."""
        keys, values, by_key = self._keys, self._values, self._by_key
        for key, value in entries:
            at = bisect_left(keys, key)
            if key in by_key:
                values[at] = value
            else:
                keys.insert(at, key)
                values.insert(at, value)
            by_key[key] = value
        for key in removed:
            if key in by_key:
                del by_key[key]
                at = bisect_left(keys, key)
                del keys[at], values[at]

    def copy(self) -> KeyOrdered[Held]:
        """Another set of the same entries, to change apart from this one."""
        other: KeyOrdered[Held] = KeyOrdered()
        other._by_key, other._keys, other._values = dict(self._by_key), list(self._keys), list(self._values)
        return other

    def ordered(self) -> tuple[Held, ...]:
        """Every entry, in key order."""
        return tuple(self._values)

    def __getitem__(self, key: str) -> Held:
        return self._by_key[key]

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeyOrdered({dict(zip(self._keys, self._values, strict=True))!r})"


def _no_held_task(task_id: str) -> Task | None:
    return None


@dataclass
class AssignmentSet:
    """Tasks assigned to this node and the version of the last message applied (None = no
    COMPLETE seen on this session yet). `held` finds a task the agent already runs (its worker),
    for the spec of a task desired to stop, which the managers do not send again."""

    tasks: dict[str, Task] = field(default_factory=dict)
    version: int | None = None
    session_id: str = ""
    held: Callable[[str], Task | None] = _no_held_task
    specs: dict[SpecKey, ServiceSpec] = field(default_factory=dict)  # sent on this session
    refs: SpecRefs = field(default_factory=SpecRefs)  # every task in the set -> its spec, counted
    # Registry logins of tasks yet to pull (ADR 43): in memory only, never in the agent's cache.
    # Changed in place: the controllers read it through ControllerEnv.pull_login.
    logins: dict[str, PullLogin] = field(default_factory=dict)
    # The endpoints held, by service name, and the services_index they are of (0: none yet):
    # a delta applies onto exactly that index (ADR 65). Kept across sessions: COMPLETE replaces them.
    endpoints: KeyOrdered[Endpoint] = field(default_factory=lambda: KeyOrdered())
    endpoints_index: int = 0
    mesh: KeyOrdered[MeshMember] = field(default_factory=lambda: KeyOrdered())  # by node id (ADR 65)
    mesh_version: int = 0
    _arrived: set[SpecKey] = field(default_factory=set, init=False, repr=False)  # specs of this message
    # How the session reads a message for this set from its bytes.
    # (A static method: with the pure-Python protobuf, FromString is a plain function.)
    decode: ClassVar[Any] = staticmethod(dpb.AssignmentsMessage.FromString)

    def reset(self) -> None:
        """A new session starts a new version chain and a new set of specs; the tasks are kept
        until COMPLETE replaces them."""
        self.version = None
        self.session_id = ""
        self.specs = {}
        self.refs = SpecRefs()
        self._arrived = set()

    def apply(self, msg: dpb.AssignmentsMessage) -> AssignmentDelta:
        """Apply one message; raise VersionGap when it cannot be applied to what we hold."""
        managers = tuple(msg.managers)
        volumes = tuple(msg.volumes) if msg.volumes_changed else None
        if msg.type == dpb.AssignmentsMessage.COMPLETE:
            self._check_deltas(msg)
            services, mesh = self._take_endpoints(msg), self._take_mesh(msg)
            self.specs, self.refs = {}, SpecRefs()
            self.logins.clear()
            self._read_logins(msg)
            updated, invalid = self._read(msg)
            files = _files(msg)
            tasks = {t.id: t for t in updated}
            for task_id, _ in invalid:  # unreadable now, but known: keep the copy we have
                if task_id in self.tasks:
                    tasks[task_id] = self.tasks[task_id]
            self.tasks = tasks
            self._prune()
            self.version = msg.version
            self.session_id = msg.session_id
            return AssignmentDelta(
                complete=True,
                updated=tuple(tasks.values()),
                managers=managers,
                invalid=invalid,
                mesh=mesh,
                services=services,
                vip_range=msg.vip_range,
                services_index=msg.services_index,
                volumes=volumes,
                files=files,
            )
        if msg.type != dpb.AssignmentsMessage.INCREMENTAL:
            raise VersionGap(f"unknown assignments message type {msg.type}")
        if self.version is None:
            raise VersionGap(f"incremental message (version {msg.version}) before the complete set")
        if msg.session_id and self.session_id and msg.session_id != self.session_id:
            raise VersionGap(f"message for session {msg.session_id}, ours is {self.session_id}")
        if msg.applies_to != self.version:
            raise VersionGap(f"message applies to version {msg.applies_to}, we hold {self.version}")
        self._check_deltas(msg)
        services, mesh = self._take_endpoints(msg), self._take_mesh(msg)
        self._read_logins(msg)
        updated, invalid = self._read(msg)
        for task in updated:
            self.tasks[task.id] = task
        for task_id in msg.removed:
            self.tasks.pop(task_id, None)
            self.refs.forget(task_id)
            self.logins.pop(task_id, None)
        self._prune()
        self.version = msg.version
        return AssignmentDelta(
            complete=False,
            updated=updated,
            removed=tuple(msg.removed),
            managers=managers,
            invalid=invalid,
            mesh=mesh,
            services=services,
            vip_range=msg.vip_range,
            services_index=msg.services_index,
            volumes=volumes,
            files=_files(msg),
        )

    def _check_deltas(self, msg: dpb.AssignmentsMessage) -> None:
        """A delta of the endpoints or of the mesh applies onto exactly what is held (ADR 65)."""
        if msg.services_delta and msg.services_base != self.endpoints_index:
            raise VersionGap(
                f"endpoints delta onto index {msg.services_base}, we hold {self.endpoints_index}: resynchronise"
            )
        if msg.mesh_delta and msg.mesh_base != self.mesh_version:
            raise VersionGap(f"mesh delta onto version {msg.mesh_base}, we hold {self.mesh_version}: resynchronise")

    def _take_mesh(self, msg: dpb.AssignmentsMessage) -> tuple[MeshMember, ...] | None:
        """The whole mesh after `msg` if it changed it, else None; a delta converts only the
        nodes it carries into the mesh held, which is kept in node id order."""
        if msg.mesh_delta:
            self.mesh.merge(((m.node_id, _member(m)) for m in msg.mesh), msg.mesh_removed)
        elif msg.mesh_changed:
            self.mesh = KeyOrdered((m.node_id, _member(m)) for m in msg.mesh)
        else:
            return None
        self.mesh_version = msg.mesh_version
        return self.mesh.ordered()

    def _take_endpoints(self, msg: dpb.AssignmentsMessage) -> tuple[Endpoint, ...] | None:
        """The whole endpoint set after `msg` if it changed them, else None (`endpoints_after`)."""
        if not (msg.services_delta or msg.services_changed):
            return None
        try:
            self.endpoints = endpoints_after(self.endpoints, msg)
        except KeptUnknown:
            # The managers named an endpoint kept that this node does not hold, so the digests it
            # sent were not of what it holds: the next session starts from none (ADR 81).
            self.endpoints, self.endpoints_index = KeyOrdered(), 0
            raise
        self.endpoints_index = msg.services_index
        return self.endpoints.ordered()

    def endpoint_digests(self) -> list[dpb.EndpointDigest]:
        """A digest of each endpoint held, for the next session's request (ADR 81)."""
        return [dpb.EndpointDigest(name=e.name, digest=endpoint_digest(e)) for e in sendable(self.endpoints.ordered())]

    def forget_logins(self, task_ids: Iterable[str]) -> None:
        for task_id in task_ids:
            self.logins.pop(task_id, None)

    def _read_logins(self, msg: dpb.AssignmentsMessage) -> None:
        for login in msg.pull_logins:
            self.logins[login.task_id] = PullLogin(login.host, login.username, login.password)
        for task in msg.updated:  # pulled and started: its login is no longer needed here
            if names.task_state_or(task.state, TaskState.NEW) >= TaskState.RUNNING:
                self.logins.pop(task.id, None)

    def _read(self, msg: dpb.AssignmentsMessage) -> tuple[tuple[Task, ...], tuple[tuple[str, str], ...]]:
        """The message's specs joined to the session's, then its tasks, each with its spec."""
        bad: list[tuple[str, str]] = []
        for entry in msg.specs:
            key = (entry.service_id, entry.spec_version)
            self._arrived.add(key)
            try:
                self.specs[key] = converted_spec(entry.spec)
            except (names.ConversionError, ValueError, TypeError) as exc:
                bad.extend((t.id, f"unreadable task spec: {exc}") for t in msg.updated if _key(t) == key)
        for task in msg.updated:  # every task counts, readable or not, as on the managers' side
            self.refs.refer(task.id, _key(task))
        good, unread = _read_tasks(msg.updated, self._spec_of, {task_id for task_id, _ in bad})
        return good, tuple(bad) + unread

    def _spec_of(self, msg: pb.Task) -> ServiceSpec | None:
        """The task's spec: sent in full (an older manager), sent on this session, or held."""
        if msg.HasField("spec"):
            return converted_spec(msg.spec)
        spec = self.specs.get(_key(msg))
        if spec is not None:
            return spec
        held = self.tasks.get(msg.id) or self.held(msg.id)
        if held is not None and held.spec_version == msg.spec_version:
            return held.spec
        if names.task_state_or(msg.desired_state, TaskState.SHUTDOWN) > TaskState.RUNNING:
            return ServiceSpec(name=msg.service_name, image="")  # never started: only to be stopped
        return None

    def _prune(self) -> None:
        """Forget specs no task in the set refers to, as the managers do (ADR 21): those whose
        last task left, and any this message sent for no task. O(changed), not a walk (#15)."""
        for key in self.refs.released() | self._arrived:
            if key not in self.refs:
                self.specs.pop(key, None)
        self._arrived = set()


class KeptUnknown(VersionGap):
    """COMPLETE kept an endpoint that is not held (ADR 81)."""


def endpoints_after(held: KeyOrdered[Endpoint], msg: dpb.AssignmentsMessage) -> KeyOrdered[Endpoint]:
    """The endpoint set after `msg`, which changes it, from the set `held` at its base. A delta
    changes `held` in place and returns it: it converts only the entries it carries, and the set
    stays in name order, as a whole list comes. A whole list is a new set: its entries, and
    those of `held` it names kept (ADR 81)."""
    if msg.services_delta:
        # In order, a patch onto the entry as the entries before it in this delta left it (a
        # run names a service once per version that changed it, ADR 78). Read first: one that
        # does not fit raises before anything held changed.
        taken: dict[str, Endpoint] = {}
        for entry in msg.services:
            taken[entry.name] = _read_endpoint(held, entry, taken)
        held.merge(taken.items(), msg.services_removed)
        return held
    whole = {entry.name: endpoint_of(entry) for entry in msg.services}
    for name in msg.services_kept:
        kept = held.get(name)
        if kept is None:
            raise KeptUnknown(f"endpoints of {name!r} kept, which we do not hold: resynchronise")
        whole[name] = kept
    return KeyOrdered(whole.items())


def _read_endpoint(held: Mapping[str, Endpoint], entry: dpb.ServiceEndpoint, taken: dict[str, Endpoint]) -> Endpoint:
    """A delta's entry: whole, or a patch onto the entry under its name (ADR 65): as `taken`
    from this delta so far, else as held."""
    if not entry.patch:
        return endpoint_of(entry)
    base = taken[entry.name] if entry.name in taken else held.get(entry.name)
    if base is None:
        raise VersionGap(f"endpoints patch of {entry.name!r}, which we do not hold: resynchronise")
    return _patched(base, entry)


def _patched(held: Endpoint, entry: dpb.ServiceEndpoint) -> Endpoint:
    """`held` with a patch's backends and members added and removed, and its other fields."""
    return dataclasses.replace(
        endpoint_of(entry),
        backends=_patch_list(entry.name, held.backends, entry.backends_added, entry.backends_removed),
        members=_patch_list(entry.name, held.members, entry.members_added, entry.members_removed),
    )


def _patch_list(name: str, held: tuple[str, ...], added: Iterable[str], removed: Iterable[str]) -> tuple[str, ...]:
    """A sorted list with `added` put in and `removed` taken out, each found by bisection (a
    patch is a few addresses of a thousand); a patch that adds what is held or removes what is
    not was made for another version: resynchronise."""
    result: list[str] | None = None
    for address in removed:
        result = result if result is not None else list(held)
        at = bisect_left(result, address)
        if at == len(result) or result[at] != address:
            raise VersionGap(f"endpoints patch of {name!r} removes {address}, which we do not hold: resynchronise")
        del result[at]
    for address in added:
        result = result if result is not None else list(held)
        at = bisect_left(result, address)
        if at < len(result) and result[at] == address:
            raise VersionGap(f"endpoints patch of {name!r} adds {address}, which we hold: resynchronise")
        result.insert(at, address)
    return held if result is None else tuple(result)


def _member(m: dpb.MeshNode) -> MeshMember:
    return MeshMember(m.node_id, m.public_key, m.endpoint, m.subnet)


def _files(msg: dpb.AssignmentsMessage) -> tuple[tuple[str, str, bytes], ...]:
    return tuple((f.kind, f.name, f.data) for entry in msg.specs for f in entry.files)


# Converted specs, shared by every session of the process and keyed by a digest of the bytes
# they came as. A spec version comes once per node, and `warren sim` runs 1,000 nodes in one
# process (ADR 71): converting the same bytes once per node was 18 % of its CPU at S2. A
# converted spec is immutable, so one serves every node. A real agent gains on each new
# session's COMPLETE message. Bounded by count: a spec is at most 256 KiB.
CONVERTED_SPECS_LIMIT = 1024
_converted_specs: dict[bytes, ServiceSpec] = {}


def converted_spec(spec: pb.ServiceSpec) -> ServiceSpec:
    """`specconvert.spec_from_pb`, once per distinct spec (the oldest is forgotten past the limit)."""
    key = hashlib.blake2b(spec.SerializeToString(deterministic=True), digest_size=16).digest()  # a spec may be 256 KiB
    found = _converted_specs.get(key)
    if found is None:
        found = specconvert.spec_from_pb(spec)  # raises on a bad spec: nothing is kept then
        if len(_converted_specs) >= CONVERTED_SPECS_LIMIT:
            del _converted_specs[next(iter(_converted_specs))]
        _converted_specs[key] = found
    return found


def _key(msg: pb.Task) -> SpecKey:
    return (msg.service_id, msg.spec_version)


def _read_tasks(
    msgs: Iterable[pb.Task],
    spec_of: Callable[[pb.Task], ServiceSpec | None] = lambda msg: converted_spec(msg.spec),
    skip: set[str] | frozenset[str] = frozenset(),
) -> tuple[tuple[Task, ...], tuple[tuple[str, str], ...]]:
    """Convert each task on its own, so one unreadable task does not poison the message."""
    good: list[Task] = []
    bad: list[tuple[str, str]] = []
    for msg in msgs:
        if msg.id in skip:
            continue
        try:
            spec = spec_of(msg)
            if spec is None:
                bad.append((msg.id, f"its spec (service {msg.service_id} version {msg.spec_version}) was not sent"))
                continue
            good.append(convert.task_from_pb(msg, spec))
        except (names.ConversionError, ValueError, TypeError) as exc:
            bad.append((msg.id, f"unreadable task spec: {exc}"))
    return tuple(good), tuple(bad)
