"""The Raft snapshot file, mixed into RaftNode: what PySyncObj's serializer writes when it
compacts the log, and its deserializer reads at a start or when the leader sends one (ADRs 2, 3).

A snapshot is the whole state store and the two entries PySyncObj needs to resume its log.
`cluster restore` and `cluster init --force-new-cluster` seed a manager with one (ADR 56).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
from pysyncobj.node import TCPNode

from warren import datadir
from warren.manager.store import Snapshot, Store


class SnapshotFile(msgspec.Struct):
    """The Raft snapshot file: the whole store plus what PySyncObj needs to resume its log."""

    state: Snapshot
    entries: list[tuple[bytes, int, int]]
    cluster: list[str]


class Snapshots:
    """Mixed into RaftNode, which gives these to SyncObjConf as its serializer and deserializer."""

    _store: Store  # RaftNode's (declared for the type checker only)

    def _write_snapshot(self, file_name: str, raft_data: tuple) -> None:
        last, previous, cluster = raft_data
        snapshot = SnapshotFile(
            state=self._store.dump(),
            entries=[tuple(last), tuple(previous)],
            cluster=sorted(node.id for node in cluster),
        )
        # PySyncObj renames `file_name` (its temporary file) over the snapshot; owner-only, as the
        # state holds the wrapped CA key.
        datadir.write_atomic(Path(file_name), msgspec.msgpack.encode(snapshot), datadir.PRIVATE)

    def _read_snapshot(self, file_name: str) -> tuple:
        with open(file_name, "rb") as f:
            snapshot = msgspec.msgpack.decode(f.read(), type=SnapshotFile)
        if snapshot.state.applied_index > self._store.applied_index:
            self._store.restore(snapshot.state)  # a snapshot sent by the leader
        last, previous = (tuple(e) for e in snapshot.entries)
        return last, previous, [TCPNode(addr) for addr in snapshot.cluster]
