"""Backups of the replicated state, and the data directories made from one (ADR 56).

A backup file is `MAGIC`, a header (format version, payload length, SHA-256 of the payload)
and the payload: the store's Snapshot at a Raft index, the cluster id, the Raft term and the
Raft secret (the root of the keys that seal the CA key and the secrets, unless autolock moved
that root to the unlock key: ADR 38, 44). A damaged or cut file is refused before anything is
written. `seed_raft` makes a manager's Raft journal and snapshot start at a given state with this
manager as the only member: what `cluster restore` and `cluster init --force-new-cluster` share.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import msgspec
from pysyncobj.syncobj import _COMMAND_TYPE

from warren import commands, datadir
from warren.manager import journal
from warren.manager.raft_snapshots import SnapshotFile
from warren.manager.store import Snapshot, Store
from warren.model import Node, NodeRole

MAGIC = b"WARREN-BACKUP\n"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">HQ32s")  # format version, payload length, SHA-256 of the payload
CHUNK_BYTES = 1 << 20  # what one BackupChunk message carries
_NOOP_ENTRY = bytes([_COMMAND_TYPE.NO_OP])  # PySyncObj's own no-op: what the seeded log holds


class BackupError(Exception):
    """The backup file cannot be used; str() says why, in one line."""


class Backup(msgspec.Struct, frozen=True):
    cluster_id: str
    raft_index: int
    raft_term: int
    created_at: float
    raft_secret: str  # the key root; empty for a locked cluster, whose root is the unlock key (ADR 38, 44)
    state: Snapshot


def encode(backup: Backup) -> bytes:
    payload = msgspec.msgpack.encode(backup)
    return MAGIC + _HEADER.pack(FORMAT_VERSION, len(payload), hashlib.sha256(payload).digest()) + payload


def decode(blob: bytes) -> Backup:
    """The backup in `blob`; BackupError if it is not one, is cut short, damaged or too new."""
    if not blob.startswith(MAGIC):
        raise BackupError("not a Warren backup file (bad magic)")
    header = blob[len(MAGIC) : len(MAGIC) + _HEADER.size]
    if len(header) < _HEADER.size:
        raise BackupError("the backup file is truncated (its header is incomplete)")
    version, length, digest = _HEADER.unpack(header)
    if version != FORMAT_VERSION:
        raise BackupError(f"backup format version {version} is not supported (this Warren reads {FORMAT_VERSION})")
    payload = blob[len(MAGIC) + _HEADER.size :]
    if len(payload) < length:
        raise BackupError(f"the backup file is truncated ({len(payload)} of {length} payload bytes)")
    if len(payload) > length:
        raise BackupError("the backup file has trailing bytes after its payload")
    if hashlib.sha256(payload).digest() != digest:
        raise BackupError("the backup file is corrupted (checksum mismatch)")
    try:
        return msgspec.msgpack.decode(payload, type=Backup)
    except msgspec.DecodeError as exc:  # a checksum over garbage we wrote ourselves: a bug, said plainly
        raise BackupError(f"the backup payload cannot be read ({exc})") from None


def read_file(path: Path) -> Backup:
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    return decode(blob)


def recovery_commands(state_nodes: list[Node], keep: Node, at: float) -> list[commands.Command]:
    """What makes `keep` the only manager: the other managers are removed (and revoked, so that
    a lost manager with stale state cannot come back; their tasks are replaced), and `keep` is
    registered. Workers are untouched: their certificates stay valid."""
    removed: list[commands.Command] = [
        commands.RemoveNode(n.id, at) for n in state_nodes if n.role == NodeRole.MANAGER and n.id != keep.id
    ]
    return [*removed, commands.RegisterNode(keep)]


def apply_recovery(store: Store, index: int, to_apply: list[commands.Command]) -> None:
    """Apply `to_apply` to `store` as Raft entry `index` would (one transaction, with events)."""
    store.commit_each(index, to_apply, commands.apply)


def seed_raft(store: Store, data_dir: Path, self_raft_addr: str, term: int) -> None:
    """Make the Raft journal and snapshot start at the store's applied index, with this manager
    as the only member. The journal's entries past that index (never applied here) are dropped."""
    index = store.applied_index
    previous, last = (_NOOP_ENTRY, index - 1, term), (_NOOP_ENTRY, index, term)
    log = journal.LmdbJournal(store.env, data_dir, applied=lambda: index)
    log.clear()
    log.add(*previous)
    log.add(*last)
    log.setCurrentTerm(term, None)
    log.setRaftCommitIndex(index)
    log.onOneSecondTimer()  # persists the commit index
    snapshot = SnapshotFile(state=store.dump(), entries=[last, previous], cluster=[self_raft_addr])
    datadir.write_atomic(data_dir / "raft-snapshot", msgspec.msgpack.encode(snapshot), datadir.PRIVATE)


def current_term(store: Store, data_dir: Path) -> int:
    return journal.LmdbJournal(store.env, data_dir).getCurrentTerm()
