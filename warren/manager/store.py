"""LMDB persistence of the cluster state, with the in-memory ClusterState readers use.

One LMDB environment per manager holds both the Raft journal (see journal.py) and the state.
Every applied command writes its changes and the Raft index it came from in a transaction, so
after a crash the state is exactly "everything up to applied_index" and replay skips what was
already applied. The Raft thread applies the committed entries of a tick inside `batch()`: one
transaction and one fsync for all of them (ADR 89). Transactions are fsynced, and proposers are
answered after theirs, so an acknowledged write survives power loss, not only kill -9.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import msgspec

from warren import events
from warren.manager.ports import Watcher
from warren.manager.settings import DEFAULT_MAP_SIZE
from warren.model import (
    AdminCert,
    ClusterInfo,
    Config,
    Network,
    Node,
    RegistryLogin,
    RevokedNode,
    Secret,
    Service,
    Task,
    Volume,
)
from warren.state import CLUSTER_KEY, Change, ClusterState, Kind, Put, object_key

log = logging.getLogger(__name__)

_KIND_TYPES: dict[Kind, type] = {
    "cluster": ClusterInfo,
    "node": Node,
    "service": Service,
    "task": Task,
    "revoked": RevokedNode,
    "admin": AdminCert,
    "volume": Volume,
    "secret": Secret,
    "config": Config,
    "registry": RegistryLogin,
    "network": Network,
}
_APPLIED_KEY = b"applied_index"
_PRUNED_KEY = b"events_pruned"  # the id of the last event dropped from the history (ADR 45)

# The event history (ADR 45): at least the last HISTORY_MIN_EVENTS events and every event of the
# last HISTORY_MIN_AGE seconds, whichever is more, but never more than HISTORY_MAX_EVENTS (an
# hour of a very busy cluster must not fill the map).
HISTORY_MIN_EVENTS = 10_000
HISTORY_MIN_AGE = 3600.0
HISTORY_MAX_EVENTS = 100_000

T = TypeVar("T")
R = TypeVar("R")


class _Batch:
    """The writes of a `Store.batch()`: its transaction (begun at the first entry), and the
    watchers' notices held until it is committed."""

    def __init__(self) -> None:
        self.txn: lmdb.Transaction | None = None
        self.notices: list[tuple[int, list[Change]]] = []


class Snapshot(msgspec.Struct, frozen=True):
    """The whole state at `applied_index`: what a Raft snapshot carries."""

    applied_index: int
    cluster: ClusterInfo | None
    nodes: list[Node]
    services: list[Service]
    tasks: list[Task]
    revoked: list[RevokedNode] = []  # absent from snapshots written before revocation existed
    admin_certs: list[AdminCert] = []  # absent from snapshots written before admin certificates
    volumes: list[Volume] = []  # absent from snapshots written before volumes (ADR 40)
    secrets: list[Secret] = []  # sealed values only (ADR 38)
    configs: list[Config] = []
    registry_logins: list[RegistryLogin] = []  # absent from snapshots written before them (ADR 43)
    networks: list[Network] = []  # absent from snapshots written before networks (#14)
    events: list[events.Event] = []  # the event history (ADR 45), oldest first
    events_pruned: tuple[int, int] | None = None  # the last event dropped from it


def open_environment(path: Path, map_size: int = DEFAULT_MAP_SIZE, metasync: bool = True) -> lmdb.Environment:
    """The manager's LMDB environment. Owner-only: the state holds the cluster CA key.
    `map_size` is address space, not disk: the file grows as needed, up to it. LMDB never maps
    less than its file holds, so a smaller map than a previous run's has no effect.
    `metasync=False` (the running manager, ADR 58): a commit fsyncs its data once and not its
    meta page, which keeps the database consistent but lets an OS crash (not a process kill)
    undo the last transaction; the Raft journal syncs explicitly what must be durable."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return lmdb.open(str(path), map_size=map_size, max_dbs=32, sync=True, metasync=metasync, mode=0o600)


class Store:
    """Durable cluster state. Writes come only from the Raft apply thread; reads from anywhere."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env
        self._meta = env.open_db(b"state_meta")
        self._dbs = {kind: env.open_db(f"state_{kind}".encode()) for kind in _KIND_TYPES}
        self._encoder = msgspec.msgpack.Encoder()
        self._decoders: dict[Kind, msgspec.msgpack.Decoder[Any]] = {
            kind: msgspec.msgpack.Decoder(t) for kind, t in _KIND_TYPES.items()
        }
        self._events_db = env.open_db(b"events")
        self._event_decoder = msgspec.msgpack.Decoder(events.Event)
        self._lock = threading.Lock()
        self._watchers: list[Watcher] = []
        self.state = ClusterState()
        self.applied_index = 0
        self.last_event: events.Event | None = None
        self.events_pruned: tuple[int, int] | None = None
        self._batch: _Batch | None = None
        # Events of the open batch, not yet on disk: for `dump` from another thread.
        self._unsaved_events: list[events.Event] = []
        self._load()

    def _load(self) -> None:
        with self.env.begin() as txn:
            raw = txn.get(_APPLIED_KEY, db=self._meta)
            self.applied_index = int(raw) if raw else 0
            self._read_event_marks(txn)
            changes: list[Change] = []
            for kind, db in self._dbs.items():
                decoder = self._decoders[kind]
                for _key, value in txn.cursor(db=db):
                    changes.append(Put(kind, decoder.decode(value)))
        self.state.apply(changes)

    def _read_event_marks(self, txn: lmdb.Transaction) -> None:
        pruned = txn.get(_PRUNED_KEY, db=self._meta)
        self.events_pruned = _unpack_event_key(pruned) if pruned else None
        cursor = txn.cursor(db=self._events_db)
        self.last_event = self._event_decoder.decode(cursor.value()) if cursor.last() else None

    def _reload(self) -> None:
        """Make the live state what the disk holds again, after a transaction that failed."""
        with self._lock:
            self.state = ClusterState()
            self._unsaved_events = []
            self._load()

    # -- reads -------------------------------------------------------------------------------
    @contextmanager
    def read(self) -> Iterator[ClusterState]:
        """Direct access to the live state for a short read; don't keep references past it."""
        with self._lock:
            yield self.state

    def derived(self, compute: Callable[[ClusterState], T]) -> Callable[[], T]:
        """A function that returns `compute(state)`, computed again only once the store applied
        another entry (or reloaded): for what every API call and handshake checks (ADR 88).
        Each check took the lock at every call, and waited whenever the apply thread held it for
        a whole batch. A value may trail the live state while an entry is being persisted: it
        is the state as of the last applied index."""
        memo: tuple[tuple[int, int], T] | None = None

        def current() -> T:
            nonlocal memo
            seen = memo
            if seen is not None and seen[0] == (self.applied_index, id(self.state)):
                return seen[1]
            with self._lock:
                fresh = ((self.applied_index, id(self.state)), compute(self.state))
            memo = fresh
            return fresh[1]

        return current

    def snapshot(self) -> tuple[int, ClusterState]:
        """A copy of the state to keep, and the index of the last entry it holds."""
        with self._lock:
            return self.applied_index, self.state.copy()

    # -- writes (Raft apply thread only) -----------------------------------------------------
    @contextmanager
    def batch(self) -> Iterator[None]:
        """Write the entries committed inside in one transaction, committed on the way out
        (one fsync for them all, ADR 89), and notify the watchers once they are on disk. The
        live state and `applied_index` move at each entry, a moment before the disk, as in
        `commit_each`; the caller answers the entries' proposers once this returns. After
        `abandon_batch`, nothing is committed. An exception from inside still commits what was
        applied, then propagates; a failed commit makes the live state the disk's again."""
        if self._batch is not None:  # nested: the outer batch commits
            yield
            return
        batch = self._batch = _Batch()
        try:
            yield
        finally:
            self._batch = None
            self._finish(batch)

    def _finish(self, batch: _Batch) -> None:
        if batch.txn is None:
            return
        try:
            batch.txn.commit()
        except lmdb.Error:
            self._abandon(batch)
            raise
        with self._lock:
            self._unsaved_events = []
        for index, changes in batch.notices:
            self._notify(index, changes)

    @property
    def batching(self) -> bool:
        return self._batch is not None

    def abandon_batch(self) -> None:
        """Drop the open batch's writes and make the live state what the disk holds again:
        after a write of the batch failed, its transaction cannot be committed."""
        if self._batch is not None:
            self._abandon(self._batch)

    def _abandon(self, batch: _Batch) -> None:
        if batch.txn is not None:
            with suppress(lmdb.Error):
                batch.txn.abort()
            batch.txn = None
        batch.notices.clear()
        self._reload()

    @contextmanager
    def _writing(self) -> Iterator[lmdb.Transaction]:
        """The transaction to write an entry in: the open batch's, or one of its own,
        committed on the way out."""
        batch = self._batch
        if batch is None:
            with self.env.begin(write=True) as txn:
                yield txn
            return
        if batch.txn is None:
            batch.txn = self.env.begin(write=True)
        yield batch.txn

    def _written(self, index: int, changes: list[Change], new_events: list[events.Event]) -> None:
        """Notify the watchers of entry `index` now, or once the open batch is on disk."""
        if self._batch is None:
            self._notify(index, changes)
            return
        self._batch.notices.append((index, changes))
        with self._lock:
            self._unsaved_events += new_events

    def watch(self, watcher: Watcher) -> None:
        """`watcher(index, changes)` runs on the apply thread once an entry is on disk: keep it quick."""
        self._watchers.append(watcher)

    def commit(self, index: int, changes: list[Change], command: object = None) -> None:
        """Persist, with the events of `command`'s changes, then notify. Only a failure to
        persist propagates: once the data is on disk, a watcher's failure (say, at shutdown)
        must not look like a broken disk."""
        new_events = self._derive_events(index, 0, command, changes)
        try:
            with self._writing() as txn:
                self._put_changes(txn, index, changes)
                self._put_events(txn, new_events)
        except lmdb.Error:
            with self.env.begin() as txn:  # what the failed transaction did not write
                self._read_event_marks(txn)
            raise
        with self._lock:
            changes = self.state.apply(changes)  # as stored: what the watchers are told (ADR 92)
            self.applied_index = index
        self._written(index, changes, new_events)

    def commit_each(
        self, index: int, items: Sequence[T], step: Callable[[ClusterState, T], tuple[R, list[Change]]]
    ) -> list[R]:
        """Group commit: run `step` on each item in order, each seeing the changes of those
        before it, and persist all of them in one transaction (one fsync). The live state holds
        the changes a moment before they are on disk; a failure to persist propagates, and the
        caller may retry, because the live state is first reloaded from the disk (ADR 22)."""
        results: list[R] = []
        everything: list[Change] = []
        new_events: list[events.Event] = []
        try:
            with self._writing() as txn, self._lock:
                for item in items:
                    result, changes = step(self.state, item)
                    new_events += self._derive_events(index, len(new_events), item, changes)
                    changes = self.state.apply(changes)  # as stored: what the watchers are told (ADR 92)
                    self._put_changes(txn, index, changes)
                    results.append(result)
                    everything.extend(changes)
                self.applied_index = index  # with the state, under the lock: a snapshot pairs them
                self._put_events(txn, new_events)
        except lmdb.Error:
            if self._batch is None:
                self._reload()
            raise
        self._written(index, everything, new_events)
        return results

    def _put_changes(self, txn: lmdb.Transaction, index: int, changes: list[Change]) -> None:
        for change in changes:
            db = self._dbs[change.kind]
            if isinstance(change, Put):
                key = object_key(change.kind, change.obj).encode()
                txn.put(key, self._encoder.encode(change.obj), db=db)
            else:
                key = (CLUSTER_KEY if change.kind == "cluster" else change.id).encode()
                txn.delete(key, db=db)
        txn.put(_APPLIED_KEY, str(index).encode(), db=self._meta)

    # -- the event history (ADR 45) ------------------------------------------------------------
    def _derive_events(self, index: int, first: int, command: object, changes: list[Change]) -> list[events.Event]:
        """The events of `changes`, against the state before them. A command without a time
        of its own takes the last event's: the same on every manager, and never going back."""
        time = events.command_time(command) or (self.last_event.time if self.last_event else 0.0)
        derived = events.derive(self.state, command, changes, index, first, time)
        if derived:
            self.last_event = derived[-1]
        return derived

    def _put_events(self, txn: lmdb.Transaction, new_events: list[events.Event]) -> None:
        for event in new_events:
            txn.put(_event_key(event.key), self._encoder.encode(event), db=self._events_db)
        if new_events:
            self._prune_events(txn, new_events[-1].time)

    def _prune_events(self, txn: lmdb.Transaction, newest: float) -> None:
        count = txn.stat(self._events_db)["entries"]
        if count <= HISTORY_MIN_EVENTS:
            return
        cursor = txn.cursor(db=self._events_db)
        pruned = None
        cursor.first()
        while count > HISTORY_MIN_EVENTS:
            key = cursor.key()
            recent = self._event_decoder.decode(cursor.value()).time >= newest - HISTORY_MIN_AGE
            if recent and count <= HISTORY_MAX_EVENTS:
                break
            cursor.delete()  # and on to the next
            pruned, count = key, count - 1
        if pruned is not None:
            txn.put(_PRUNED_KEY, pruned, db=self._meta)
            self.events_pruned = _unpack_event_key(pruned)

    def events_after(self, after: tuple[int, int] | None, limit: int = 1000) -> list[events.Event]:
        """Up to `limit` events of the history after the event `after` (None: from its start)."""
        found: list[events.Event] = []
        with self.env.begin(db=self._events_db) as txn:
            cursor = txn.cursor()
            start = _event_key((after[0], after[1] + 1)) if after else b""
            if not cursor.set_range(start):
                return found
            for _key, value in cursor:
                found.append(self._event_decoder.decode(value))
                if len(found) >= limit:
                    break
        return found

    def _events_upto(self, index: int) -> list[events.Event]:
        """The history up to entry `index`, with the open batch's events not yet on disk
        (call with the lock held). A single commit writes to disk before the live state moves,
        so the disk may also hold events past `index`."""
        saved = [e for e in self._all_events() if e.index <= index]
        last = saved[-1].key if saved else None
        return saved + [e for e in self._unsaved_events if e.index <= index and (last is None or e.key > last)]

    def _all_events(self) -> list[events.Event]:
        with self.env.begin(db=self._events_db) as txn:
            return [self._event_decoder.decode(value) for _key, value in txn.cursor()]

    def _notify(self, index: int, changes: list[Change] | None) -> None:
        for watcher in self._watchers:
            try:
                watcher(index, changes)
            except Exception:
                log.exception("state watcher failed")

    def dump(self) -> Snapshot:
        with self._lock:
            s = self.state
            return Snapshot(
                self.applied_index,
                s.cluster,
                list(s.nodes.values()),
                list(s.services.values()),
                list(s.tasks.values()),
                list(s.revoked.values()),
                list(s.admin_certs.values()),
                list(s.volumes.values()),
                list(s.secrets.values()),
                list(s.configs.values()),
                list(s.registry_logins.values()),
                list(s.networks.values()),
                self._events_upto(self.applied_index),
                self.events_pruned,
            )

    def restore(self, snapshot: Snapshot) -> None:
        """Replace everything with `snapshot` (a follower catching up from the leader's
        snapshot), in one transaction: no reader ever sees a half-empty cluster."""
        changes: list[Change] = [Put("node", n) for n in snapshot.nodes]
        changes += [Put("service", s) for s in snapshot.services]
        changes += [Put("task", t) for t in snapshot.tasks]
        changes += [Put("revoked", r) for r in snapshot.revoked]
        changes += [Put("admin", a) for a in snapshot.admin_certs]
        changes += [Put("volume", v) for v in snapshot.volumes]
        changes += [Put("secret", x) for x in snapshot.secrets]
        changes += [Put("config", c) for c in snapshot.configs]
        changes += [Put("registry", r) for r in snapshot.registry_logins]
        changes += [Put("network", n) for n in snapshot.networks]
        if snapshot.cluster is not None:
            changes.append(Put("cluster", snapshot.cluster))
        state = ClusterState()
        state.apply(changes)
        with self.env.begin(write=True) as txn:
            for db in (*self._dbs.values(), self._events_db):
                txn.drop(db, delete=False)
            self._put_changes(txn, snapshot.applied_index, changes)
            for event in snapshot.events:  # the leader's history, so that resumes work here too
                txn.put(_event_key(event.key), self._encoder.encode(event), db=self._events_db)
            if snapshot.events_pruned is not None:
                txn.put(_PRUNED_KEY, _event_key(snapshot.events_pruned), db=self._meta)
            else:
                txn.delete(_PRUNED_KEY, db=self._meta)
        with self._lock:
            self.state = state
            self.applied_index = snapshot.applied_index
            self.last_event = snapshot.events[-1] if snapshot.events else None
            self.events_pruned = snapshot.events_pruned
        self._notify(snapshot.applied_index, None)


def _event_key(key: tuple[int, int]) -> bytes:
    """Big-endian, so that LMDB's byte order is the events' order."""
    return struct.pack(">QI", *key)


def _unpack_event_key(raw: bytes | memoryview) -> tuple[int, int]:
    index, position = struct.unpack(">QI", raw)
    return index, position
