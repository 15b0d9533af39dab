"""PySyncObj's Raft journal, kept in LMDB beside the state instead of its mmap'd file.

PySyncObj's FileJournal does not fsync entries and writes the commit index once a second; this
one commits (and fsyncs) every append, and currentTerm/votedFor before any vote leaves the node,
as Raft requires. The manager's environment does not sync meta pages at commit (ADR 58), so
those two sync the environment explicitly: an OS crash may undo the state's last commit, which
replays from the journal, but never an append or a vote this node has acted on.
Entries are also kept in a list in memory because PySyncObj indexes and slices the journal by
position on every tick; log compaction keeps that list short. The commands of entries the
store applied are held only up to `RESIDENT_BYTES` (the newest ones): past it an entry keeps its
index and term, and its command is read back from LMDB if it is asked for, to send to a follower
that lags (ADR 91). At 100,000 tasks the log held 80-87 MB of commands before its compaction.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import lmdb
from pysyncobj import journal as pysyncobj_journal
from pysyncobj import syncobj as pysyncobj_syncobj

from warren.manager import metrics

log = logging.getLogger(__name__)

_ENTRY_HEADER = struct.Struct(">Q")  # term, then the command bytes
_COMMIT_KEY = b"commit_index"
_TERM_KEY = b"current_term"
_VOTED_KEY = b"voted_for"

Entry = tuple[bytes, int, int]  # (command, raft index, term), PySyncObj's shape
_Held = tuple[bytes | None, int, int]  # an entry in memory: None for a command left on disk

# Commands of applied entries held in memory, the newest first: a follower a few seconds behind
# is sent them without a read from the disk.
RESIDENT_BYTES = 16 << 20


class NoRoomError(Exception):
    """An entry cannot be appended: the map or the disk is full. PySyncObj drops a proposal
    whose append raises (its proposer times out), and a follower does not acknowledge the
    entries, which its leader sends again: the log stays a prefix of the leader's (ADR 22)."""


class UnwrittenEntries(Exception):
    """Entries appended together could not be written; they were dropped from the log."""

    def __init__(self, first_index: int, count: int, cause: lmdb.Error) -> None:
        super().__init__(f"cannot write Raft entries {first_index}-{first_index + count - 1}: {cause}")
        self.first_index = first_index
        self.count = count


class LmdbJournal(pysyncobj_journal.Journal):
    def __init__(self, env: lmdb.Environment, data_dir: Path, applied: Callable[[], int] = lambda: 0) -> None:
        self._env = env
        self._data_dir = data_dir
        self._applied = applied  # the store's applied index
        # Commits that do not sync their meta page need an explicit sync to be durable (ADR 58).
        self._sync_explicitly = not env.flags()["metasync"]
        self._log = env.open_db(b"raft_log")
        self._meta = env.open_db(b"raft_meta")
        self._entries: list[_Held] = []
        self._resident = 0  # bytes of the commands held in `_entries`
        self._shed_to = 0  # position below which every command is left on disk
        # Inside `appending_together`: the appends' (key, value), written on the way out.
        self._together: list[tuple[bytes, bytes]] | None = None
        with env.begin() as txn:
            for key, value in txn.cursor(db=self._log):
                (term,) = _ENTRY_HEADER.unpack_from(value)
                self._entries.append((bytes(value[_ENTRY_HEADER.size :]), int.from_bytes(key, "big"), term))
                self._resident += len(value) - _ENTRY_HEADER.size
            self._commit_index = int(txn.get(_COMMIT_KEY, b"1", db=self._meta))
            self._term = int(txn.get(_TERM_KEY, b"0", db=self._meta))
            voted = txn.get(_VOTED_KEY, db=self._meta)
            self._voted_for = voted.decode() if voted else None
        self._commit_index_saved = True
        self.shed()

    @staticmethod
    def _key(index: int) -> bytes:
        return index.to_bytes(8, "big")

    def add(self, command: bytes, idx: int, term: int) -> None:
        command = bytes(command)
        if self._together is not None:
            self._together.append((self._key(idx), _ENTRY_HEADER.pack(term) + command))
            self._hold(command, idx, term)
            return
        try:
            with self._env.begin(write=True) as txn:
                txn.put(self._key(idx), _ENTRY_HEADER.pack(term) + command, db=self._log)
            if self._sync_explicitly:  # durable before it is acknowledged or counted
                self._env.sync(True)
        except (lmdb.MapFullError, lmdb.DiskError) as exc:
            raise NoRoomError(f"cannot append Raft entry {idx}: {exc}") from None
        self._hold(command, idx, term)

    @property
    def resident_bytes(self) -> int:
        """The bytes of commands held in memory."""
        return self._resident

    def _hold(self, command: bytes, idx: int, term: int) -> None:
        self._entries.append((command, idx, term))
        self._resident += len(command)

    @staticmethod
    def _held_bytes(entries: list[_Held]) -> int:
        return sum(len(command) for command, _, _ in entries if command is not None)

    def _drop_from(self, position: int) -> None:
        """Forget the entries from `position` on (in memory only)."""
        self._resident -= self._held_bytes(self._entries[position:])
        del self._entries[position:]
        self._shed_to = min(self._shed_to, position)

    def shed(self) -> None:
        """Leave on disk the commands of the oldest applied entries, past `RESIDENT_BYTES` (on
        the Raft thread, each second and at start)."""
        applied = self._applied()
        entries = self._entries
        position = self._shed_to
        while self._resident > RESIDENT_BYTES and position < len(entries):
            command, idx, term = entries[position]
            if idx > applied:
                break
            if command is not None:
                entries[position] = (None, idx, term)
                self._resident -= len(command)
            position += 1
        self._shed_to = position

    def _whole(self, held: _Held) -> Entry:
        command, idx, term = held
        if command is not None:
            return cast(Entry, held)  # as held: no new tuple on PySyncObj's every lookup
        with self._env.begin() as txn:
            value = txn.get(self._key(idx), db=self._log)
        if value is None:  # a log that lost an entry it applied: no follower can be sent it
            raise LookupError(f"the Raft journal has no entry {idx} on disk")
        return (bytes(value[_ENTRY_HEADER.size :]), idx, term)

    @contextmanager
    def appending_together(self) -> Iterator[None]:
        """Write the appends made inside in one transaction, synced (two fsyncs for all of
        them, ADR 90) on the way out or at `write_appends`. A leader sends its entries to its
        followers before its own fsync: it counts itself towards a commit only at its next tick,
        after this returned. A follower writes them before it acknowledges them. Appends that
        cannot be written are dropped from the log, and UnwrittenEntries says which."""
        if self._together is not None:  # nested: the outer one writes
            yield
            return
        self._together = []
        try:
            yield
        finally:
            try:
                self.write_appends()
            finally:
                self._together = None

    def write_appends(self) -> None:
        """Write, and sync, the appends made so far inside `appending_together`."""
        appends = self._together
        if not appends:
            return
        self._together = []
        started = time.perf_counter()
        try:
            with self._env.begin(write=True) as txn:
                for key, value in appends:
                    txn.put(key, value, db=self._log)
            if self._sync_explicitly:
                self._env.sync(True)
            metrics.JOURNAL_WRITE.observe(time.perf_counter() - started)
        except lmdb.Error as exc:
            first = len(self._entries) - len(appends)  # they are the log's last entries
            first_index = self._entries[first][1]
            self._drop_from(first)
            raise UnwrittenEntries(first_index, len(appends), exc) from exc

    def clear(self) -> None:
        with self._env.begin(write=True) as txn:
            txn.drop(self._log, delete=False)
        self._entries = []
        self._resident = self._shed_to = 0

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        """Drop entries from position `entryFrom` on. PySyncObj calls this on every append a
        follower receives, re-adding the same entries right after. Entries the store applied
        are committed, and Raft re-sends committed entries unchanged, so those stay on disk
        (the re-add overwrites them with the same bytes): a crash between the delete and the
        re-add must not leave a log that ends before what the store applied."""
        applied = self._applied()
        with self._env.begin(write=True) as txn:
            for _command, idx, _term in self._entries[entryFrom:]:
                if idx > applied:
                    txn.delete(self._key(idx), db=self._log)
        self._drop_from(entryFrom)

    def deleteEntriesTo(self, entryTo: int) -> None:
        with self._env.begin(write=True) as txn:
            for _command, idx, _term in self._entries[:entryTo]:
                txn.delete(self._key(idx), db=self._log)
        self._resident -= self._held_bytes(self._entries[:entryTo])
        del self._entries[:entryTo]
        self._shed_to = max(0, self._shed_to - entryTo)

    def __getitem__(self, item: int | slice) -> Entry | list[Entry]:
        if isinstance(item, slice):
            return [self._whole(held) for held in self._entries[item]]
        return self._whole(self._entries[item])

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        self._save_commit_index()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        # Not fsynced per commit: a lower commit index after a crash is safe (it is re-learnt
        # from the leader or re-committed), and replay skips entries the store already applied.
        self._commit_index = raftCommitIndex
        self._commit_index_saved = False

    def getRaftCommitIndex(self) -> int:
        return self._commit_index

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        with self._env.begin(write=True) as txn:
            txn.put(_TERM_KEY, str(term).encode(), db=self._meta)
            if votedForNodeId is None:
                txn.delete(_VOTED_KEY, db=self._meta)
            else:
                txn.put(_VOTED_KEY, str(votedForNodeId).encode(), db=self._meta)
        if self._sync_explicitly:  # before any vote leaves the node
            self._env.sync(True)
        self._term = term
        self._voted_for = votedForNodeId

    def getCurrentTerm(self) -> int:
        return self._term

    def getVotedForNodeId(self) -> str | None:
        return self._voted_for

    def onOneSecondTimer(self) -> None:
        self._save_commit_index()
        self.shed()

    def _save_commit_index(self) -> None:
        if not self._commit_index_saved:
            try:
                with self._env.begin(write=True) as txn:
                    txn.put(_COMMIT_KEY, str(self._commit_index).encode(), db=self._meta)
            except lmdb.PanicError:
                raise
            except lmdb.Error as exc:  # no room (a full disk can show as EIO: a short write)
                # Saving it is an optimisation (see setRaftCommitIndex): with no room, try again
                # next second rather than fail PySyncObj's tick, or its shutdown.
                log.warning("cannot save the Raft commit index: %s", exc)
                return
            self._commit_index_saved = True

    def first_index(self) -> int:
        return self._entries[0][1] if self._entries else 0

    def last_index(self) -> int:
        return self._entries[-1][1] if self._entries else 0

    def align_to_snapshot(self, previous: Entry, last: Entry) -> None:
        """Finish a compaction a crash interrupted.

        PySyncObj renames the snapshot in one tick and trims the journal in a later one. If the
        process dies in between, it finds a journal that does not start with the snapshot's two
        entries and *clears* it, dropping every entry after the snapshot, although the store
        has applied them. Trimming the journal to start at the snapshot first avoids that."""
        positions = [i for i, entry in enumerate(self._entries) if entry[1] == previous[1]]
        if positions and positions[0] > 0:
            i = positions[0]
            if self[i] == previous and i + 1 < len(self._entries) and self[i + 1] == last:
                self.deleteEntriesTo(i)


def install(journal: LmdbJournal) -> None:
    """Make the next SyncObj created in this process use `journal`.

    PySyncObj has no journal hook: SyncObj.__init__ calls the module-level createJournal(path),
    so it is replaced for the duration of the constructor (see RaftNode)."""

    def create(_journal_file: str | None = None) -> LmdbJournal:
        return journal

    pysyncobj_syncobj.createJournal = create


def uninstall() -> None:
    pysyncobj_syncobj.createJournal = pysyncobj_journal.createJournal
