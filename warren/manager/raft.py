"""The Raft-replicated state machine: PySyncObj for consensus, the LMDB Store as the FSM.

Proposals are acknowledged only after the entry is committed by a quorum AND applied to the
store (whose transaction is fsynced). Apply never raises: PySyncObj retries a raising entry
forever, which would wedge the node.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lmdb
import msgspec
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.monotonic import monotonic as raft_clock

from warren import commands, gcpolicy, logsetup
from warren.commands import Command, Result
from warren.manager import journal, metrics
from warren.manager.capacity import StoreCapacity
from warren.manager.ports import RaftStatus
from warren.manager.raft_appends import JournalAppends
from warren.manager.raft_apply import BoundedApply
from warren.manager.raft_membership import Membership
from warren.manager.raft_peers import PeerLinks
from warren.manager.raft_proposals import Proposals
from warren.manager.raft_snapshots import SnapshotFile, Snapshots
from warren.manager.raft_transport import HardenedTransport
from warren.manager.store import Store
from warren.text import format_size

log = logging.getLogger(__name__)

_RAFT_STATES = {0: "follower", 1: "candidate", 2: "leader"}


class _BatchFailed(Exception):
    """An entry of a batch of the store could not be written (the cause is chained)."""


class _Stopping(Exception):
    """Raised out of an apply that waits for space when the node is destroyed: the entry stays
    unapplied, and the next start replays it."""


class _PySyncObjNoiseFilter(logging.Filter):
    """PySyncObj truncates a follower's log after prevLogIdx on every append, even when the
    entries are the same ones re-sent (routine when appends overlap under load), and logs it as
    CRITICAL once they were applied. Applied entries are committed, and Raft guarantees that a
    leader re-sends committed entries unchanged, so this is noise; our store also skips indexes
    it applied. Count them at debug level instead of alarming the operator.
    Likewise, an apply waiting for space that gives up at shutdown is expected, and a journal
    that cannot append for want of room is said once in a while, not with a traceback per
    append (ADR 22)."""

    _last_no_room = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], _Stopping):
            log.info("%s; it is applied after the restart", record.exc_info[1])
            return False
        if record.exc_info and isinstance(record.exc_info[1], journal.NoRoomError):
            if record.created - self._last_no_room >= 10:  # once every 10 s is enough to say it
                self._last_no_room = record.created
                log.error("%s: writes wait for room in the state store (ADR 22)", record.exc_info[1])
            return False
        if record.msg.startswith("truncating already-applied log entries"):
            log.debug("re-appended already-applied Raft entries from index %s", record.args[0])  # type: ignore[index]
            return False
        return True


logging.getLogger("pysyncobj.syncobj").addFilter(_PySyncObjNoiseFilter())

# Election timeouts (ADR 16, raised by ADR 52 and ADR 80): the Raft thread of a busy leader goes
# without running for a while on a saturated machine (0.4-0.9 s with 500 nodes, 1.09-1.28 s with
# 1,000), and a timeout shorter than that elects a new leader each time, which at 1,000 nodes
# costs minutes of reconnections. A crashed leader is still replaced within ~0.1 s: its closed
# connections call the election early. Only a frozen or cut-off leader waits out the timeout.
RAFT_MIN_TIMEOUT = 2.0
RAFT_MAX_TIMEOUT = 3.0
# How long the Raft thread's poller waits when nothing arrives (ADR 82). Its timers (heartbeats
# every 50 ms, redials every 0.2 s, elections after 2-3 s) need no finer grain: a message or a
# new proposal wakes it at once, and so does an entry that a lone manager has to commit.
TICK_PERIOD = 0.05


class RaftStartError(Exception):
    """The Raft node cannot start safely; str() says why."""


# An entry that cannot be persisted for lack of space is retried this often (ADR 22).
PERSIST_RETRY_PERIOD = 0.5


# The mixins first: they override SyncObj's handlers.
class RaftNode(JournalAppends, PeerLinks, BoundedApply, Proposals, Membership, Snapshots, SyncObj):
    def __init__(
        self,
        self_addr: str,
        peers: list[str],
        data_dir: Path,
        secret: str,
        store: Store,
        bind_addr: str | None = None,
        elect_now: bool = False,
    ) -> None:
        """`elect_now`: this manager creates a cluster alone, so no other member exists to
        depose or to hear from, and waiting out the election timeout would only delay it."""
        self._store = store
        self._stopping = threading.Event()
        # After a batch of the store could not be written (ADR 89): apply entry by entry,
        # waiting for space, until one is written.
        self._entry_by_entry = False
        self._init_proposals()
        self._leader_event = threading.Event()
        self._leadership_listeners: list = []
        self._tick_period = TICK_PERIOD
        self._init_peer_links()  # before SyncObj's thread starts calling back
        conf = SyncObjConf(
            password=secret,
            bindAddress=bind_addr,
            # The journal file name is unused (journal.install swaps in LMDB), but PySyncObj
            # only creates a journal when it is set, and only snapshots with fullDumpFile.
            journalFile=str(data_dir / "raft-journal"),
            fullDumpFile=str(data_dir / "raft-snapshot"),
            serializer=self._write_snapshot,
            deserializer=self._read_snapshot,
            useFork=False,
            # Fail a write at once when there is no leader, instead of queueing it past the
            # client's deadline and applying it after the client was told it failed.
            commandsWaitLeader=False,
            bindRetryTime=0.25,
            maxBindRetries=8,
            appendEntriesUseBatch=False,
            autoTickPeriod=self._tick_period,
            dynamicMembershipChange=True,
            # Failover (ADR 16, 52, 80): followers call an election after 2-3 s without hearing
            # from the leader, which sends heartbeats every 50 ms; a leader that has not heard
            # from a quorum for 3 s steps down. Peers are redialled every 0.2 s, so the
            # survivors of a leader crash find each other before their election times out.
            raftMinTimeout=RAFT_MIN_TIMEOUT,
            raftMaxTimeout=RAFT_MAX_TIMEOUT,
            appendEntriesPeriod=0.05,
            leaderFallbackTimeout=RAFT_MAX_TIMEOUT,
            connectionRetryTime=0.2,
            logCompactionMinEntries=20000,
            logCompactionMinTime=600,
            onStateChanged=self._on_state_changed,
        )
        log = self._journal = journal.LmdbJournal(store.env, data_dir, applied=lambda: store.applied_index)
        _check_log_against_store(log, data_dir / "raft-snapshot", store)
        # Every named database exists now (the store's and the journal's), and no other thread
        # uses the environment yet: the capacity check opens its handles here, once. LMDB forbids
        # opening a database while another transaction may run (a proposal once found the Raft
        # thread's append and its own open_db waiting on each other for good).
        self.capacity = StoreCapacity(store.env, Path(store.env.path()))
        self.capacity.usage()
        journal.install(log)
        try:
            super().__init__(self_addr, peers, conf, transportClass=HardenedTransport)  # ADR 20
        finally:
            journal.uninstall()
        if elect_now and not peers:
            self._SyncObj__raftElectionDeadline = 0.0  # PySyncObj's private deadline, as in ADR 16
        self.addOnTickCallback(self._ping_peers)
        self._last_tick = 0.0
        self._tick_marks = (0.0, 0.0)  # seconds collecting and applying at the last tick
        self.addOnTickCallback(self._measure_tick)
        self._woken_for = 0
        self.addOnTickCallback(self._commit_alone_now)
        self.addOnTickCallback(self._tick_as_usual)
        try:
            self.waitBinded()
        except Exception:
            self.destroy()
            raise RaftStartError(f"cannot listen for Raft on {bind_addr or self_addr}: address in use?") from None

    # -- the FSM -----------------------------------------------------------------------------
    @replicated
    def _apply_entry(self, blob: bytes) -> bytes:
        index = self.raftLastApplied + 1
        if index <= self._store.applied_index:
            return b""  # applied before a restart: replay must not apply it twice
        try:
            command = commands.decode(blob)
        except commands.CodecError:
            # Only our own encoder writes entries, so this is a newer manager's command (or
            # corruption). Skipping it would make this manager's state diverge from its peers'.
            log.critical("Raft entry %d is not a command this manager understands; upgrade it", index, exc_info=True)
            os._exit(70)
        results = self._persist(index, command)
        # The index lets the proposer (possibly a follower) wait until its own store has it.
        indexed = [msgspec.structs.replace(r, index=index) for r in results]
        return commands.encode_result(indexed if isinstance(command, commands.Batch) else indexed[0])

    def _persist(self, index: int, command: Command | commands.Batch) -> list[Result]:
        """Apply a committed entry to the store. It can be neither skipped (the state would
        diverge from the log) nor raise (PySyncObj would retry it forever, wedged). With the
        map or the disk full, the failed transaction left the disk and the live state at the
        previous entry: wait here, serving reads and refusing writes, and retry. A full disk
        frees up by itself; a full map needs a restart with a larger --state-map-size, which
        replays this entry (ADR 22). Any other failure stops the manager: after a failed
        fsync, only what is on disk can be trusted, and a restart resumes from it."""
        if self._store.batching:
            return self._persist_in_batch(index, command)
        waited = False
        while True:
            try:
                results = self._write(index, command)
            except Exception as exc:
                if not self._out_of_space(exc):  # a broken disk: only what is on it can be trusted
                    log.critical("cannot persist Raft entry %d; stopping the manager", index, exc_info=True)
                    os._exit(70)
                if not waited:
                    reason = self._stall_reason(index, exc)
                    log.critical("%s", reason)
                    self.capacity.set_stalled(reason)
                    waited = True
                if self._stopping.wait(PERSIST_RETRY_PERIOD):
                    raise _Stopping(f"stopped while Raft entry {index} waited for space") from None
                continue
            self._entry_by_entry = False
            if waited:
                log.warning("Raft entry %d persisted; the manager applies entries again", index)
                self.capacity.set_stalled(None)
                # Its election timeout ran out while it waited, without a tick to see the
                # leader's heartbeats: hear from the leader before calling an election that
                # would only unseat it. (PySyncObj's private deadline, as in ADR 16.)
                self._SyncObj__raftElectionDeadline = max(
                    self._SyncObj__raftElectionDeadline, raft_clock() + RAFT_MAX_TIMEOUT
                )
            return results

    def _persist_in_batch(self, index: int, command: Command | commands.Batch) -> list[Result]:
        """`_persist` inside the store's batch: a failed write drops the batch, whose
        transaction cannot be committed, and `_applying` sees to the rest."""
        try:
            return self._write(index, command)
        except Exception as exc:
            self._store.abandon_batch()
            raise _BatchFailed(index) from exc

    def _write(self, index: int, command: Command | commands.Batch) -> list[Result]:
        if isinstance(command, commands.Batch):
            return self._store.commit_each(index, command.commands, commands.apply)
        result, changes = commands.apply(self._store.state, command)
        self._store.commit(index, changes, command)
        return [result]

    @contextmanager
    def _applying(self) -> Iterator[None]:
        """Apply a slice of entries in one transaction of the store (ADR 89); their proposers
        are answered once it is written. If it cannot be, the disk and the live state lack the
        whole slice: apply it again from the disk's index, an entry at a time, through
        `_persist`, which waits for space, and answer each proposer once its entry is written."""
        if self._entry_by_entry:
            yield
            return
        try:
            with self._store.batch():
                yield
        except (_BatchFailed, lmdb.Error) as exc:
            cause = exc.__cause__ if isinstance(exc, _BatchFailed) else exc
            if not isinstance(cause, Exception) or not self._out_of_space(cause):
                index = self.raftLastApplied + 1
                log.critical("cannot persist Raft entry %d; stopping the manager", index, exc_info=True)
                os._exit(70)
            on_disk = self._store.applied_index
            log.warning("cannot persist the entries after %d (%s); applying them one by one", on_disk, cause)
            self._SyncObj__raftLastApplied = on_disk
            self._entry_by_entry = True

    def _out_of_space(self, exc: Exception) -> bool:
        """Whether persisting failed for want of space, so that a retry may succeed. LMDB
        reports a short write, which a full disk causes, as EIO: a failure on a disk with
        hardly any space left is taken for the disk being full. A PanicError means LMDB could
        not write its meta page; the environment is then unusable until it is reopened."""
        if isinstance(exc, lmdb.MapFullError | lmdb.DiskError):
            return True
        if not isinstance(exc, lmdb.Error) or isinstance(exc, lmdb.PanicError):
            return False
        try:
            return self.capacity.disk_full()
        except OSError:
            return False

    def _stall_reason(self, index: int, exc: Exception) -> str:
        where = self._store.env.path()
        if isinstance(exc, lmdb.MapFullError):
            size = format_size(self._store.env.info()["map_size"])
            return (
                f"the state store's map ({size}) is full: Raft entry {index} cannot be applied; "
                "restart this manager with a larger --state-map-size (it replays the entry)"
            )
        return f"the disk holding {where} is full: Raft entry {index} waits for free space to be applied"

    def destroy(self) -> None:
        self._stopping.set()  # an apply waiting for space gives up; the entry is replayed
        super().destroy()
        self._SyncObj__pipeNotifier.notify()  # the thread stops now, not after its poller's wait

    def _peer_links(self) -> dict[str, bool]:
        for _ in range(5):  # PySyncObj's thread may be resizing the set we copy
            try:
                others = list(self.otherNodes)
                break
            except RuntimeError:
                continue
        else:
            others = list(self.otherNodes)
        return {node.id: self.isNodeConnected(node) for node in others}

    def _commit_alone_now(self) -> None:
        """A manager that is its whole quorum commits what it appended in a tick at the start of
        the next one, which would come a tick period later: wake the poller so that it comes now
        (a tick callback, on the Raft thread). Once per appended index, so an entry that cannot
        commit yet (a past term's, until this term's no-op) never spins the thread."""
        if self._SyncObj__otherNodes or not self._isLeader():
            return
        last = self._SyncObj__getCurrentLogIndex()
        if last > self._woken_for and self.raftCommitIndex < last:
            self._woken_for = last
            self._SyncObj__pipeNotifier.notify()

    # -- status ------------------------------------------------------------------------------
    def _measure_tick(self) -> None:
        """Record how late the Raft thread runs (a tick callback, on that thread, ADR 52), and
        say what a stall was made of: collecting garbage stops every thread, and applying
        entries is the tick's own work; the rest is waiting for the CPU or the GIL (ADR 83)."""
        now = raft_clock()
        gap = now - self._last_tick if self._last_tick else 0.0
        collecting, applying = sum(gcpolicy.seconds_spent()), self.applying_seconds
        collected, applied = collecting - self._tick_marks[0], applying - self._tick_marks[1]
        self._last_tick, self._tick_marks = now, (collecting, applying)
        if not gap:
            return
        metrics.RAFT_TICK_GAP.observe(gap)
        if gap > RAFT_MIN_TIMEOUT:
            log.warning(
                "the Raft thread did not run for %.2fs (%.2fs of it collecting garbage, %.2fs applying entries; "
                "a loaded machine?): a leader may be elected",
                gap,
                collected,
                applied,
            )

    def _on_state_changed(self, old: int, new: int) -> None:
        leader = _RAFT_STATES.get(new) == "leader"
        self._forget_retry_points()  # a role change: the followers' answers start afresh
        if leader or _RAFT_STATES.get(old) == "leader":
            with logsetup.context(term=self.raftCurrentTerm):
                log.info("Raft: %s in term %d", "leader" if leader else "no longer the leader", self.raftCurrentTerm)
        if leader:
            self._leader_event.set()
        else:
            self._leader_event.clear()
        for listener in self._leadership_listeners:
            listener(leader)

    def on_leadership(self, listener) -> None:
        """Call `listener(is_leader)` from the Raft thread whenever this node's role changes."""
        self._leadership_listeners.append(listener)

    @property
    def is_leader(self) -> bool:
        return self._leader_event.is_set()

    def wait_leader(self, timeout: float) -> bool:
        return self._leader_event.wait(timeout)

    def status(self) -> RaftStatus:
        # getStatus walks PySyncObj's dicts, which its thread may be resizing: retry if so.
        for _ in range(5):
            try:
                raw = self.getStatus()
                break
            except RuntimeError:
                continue
        else:
            raw = self.getStatus()
        peers = {
            key.removeprefix("partner_node_status_server_"): value == 2
            for key, value in raw.items()
            if key.startswith("partner_node_status_server_")
        }
        leader = raw.get("leader")
        return RaftStatus(
            state=_RAFT_STATES.get(raw["state"], "unknown"),
            leader=leader.id if leader is not None else "",
            term=raw["raft_term"],
            commit_index=raw["commit_idx"],
            applied_index=self._store.applied_index,
            has_quorum=bool(raw["has_quorum"]),
            peers=peers,
            self_addr=raw["self"].id,
            log_entries=len(self._journal),
            log_resident_bytes=self._journal.resident_bytes,
        )


def _check_log_against_store(log: journal.LmdbJournal, snapshot_path: Path, store: Store) -> None:
    """Repair an interrupted compaction, then refuse to start if the log no longer reaches
    what the store applied: skipping "already applied" indexes would then drop new writes."""
    snapshot_index = 0
    if snapshot_path.exists():
        snapshot = msgspec.msgpack.decode(snapshot_path.read_bytes(), type=SnapshotFile)
        last, previous = snapshot.entries
        log.align_to_snapshot(previous, last)
        snapshot_index = last[1]
    log_end = max(log.last_index(), snapshot_index)
    if store.applied_index > log_end:
        raise RaftStartError(
            f"the state has applied Raft entry {store.applied_index} but the log ends at {log_end}; "
            "refusing to start rather than lose writes (restore this manager from a healthy peer)"
        )
