"""Applying committed Raft entries a slice at a time, patched into PySyncObj 0.3.17 (#15).

PySyncObj applies every committed entry it has in one go, on the thread that also sends the
leader's heartbeats and reads its peers' messages. At 100,000 tasks a backlog of plans held that
thread for 2-3 s: followers heard nothing and called elections (156 in one run), and a leader
that heard no answers stepped down. `BoundedApply` applies entries until APPLY_SLICE has passed,
then lets the tick go on (heartbeats, messages, the election clock) and resumes at the next one.
Raft is unaffected: an entry is applied in order, once, and only after it is committed; only
how far the applied index trails the commit index changes.

Like `PeerLinks`, this overrides a private, name-mangled method, so it must come before `SyncObj`
among a class's bases; the pinned PySyncObj version is what it was written against.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from pysyncobj import FAIL_REASON
from pysyncobj.monotonic import monotonic as raft_clock
from pysyncobj.syncobj import SyncObjExceptionWrongVer

from warren.manager import metrics
from warren.manager.raft_peers import LEADER

log = logging.getLogger("warren.manager.raft")

# Applying stops once this much time has passed in one tick, after the entry in hand: far below
# the 1 s election timeout, and twice the 50 ms heartbeat period.
APPLY_SLICE = 0.1
# Entries read from the journal at once: a backlog can be thousands, each up to 1 MiB.
READ_AHEAD = 16
# An applied entry's index, term and result, and the callbacks of its proposers.
_Answer = tuple[int, int, Any, list[tuple[int, Callable[..., None]]]]


class BoundedApply:
    """Mixed into a SyncObj subclass, before SyncObj."""

    # SyncObj's state that this reads and writes (PySyncObj has no types): for the type checker.
    _SyncObj__raftCommitIndex: int
    _SyncObj__raftLastApplied: int
    _SyncObj__commandsWaitingCommit: dict[int, list[tuple[int, Callable[..., None]]]]
    _SyncObj__getEntries: Callable[..., list[tuple[bytes, int, int]]]
    _SyncObj__doApplyCommand: Callable[[bytes], Any]
    _SyncObj__selfCodeVersion: int
    _SyncObj__raftState: int
    _SyncObj__sendAppendEntries: Callable[[], None]
    # Seconds spent applying entries so far: the Raft thread's stall report says how much of a
    # stall it was (ADR 83).
    applying_seconds = 0.0

    def _SyncObj__applyLogEntries(self) -> bool:
        """Apply committed entries for at most about APPLY_SLICE. A leader first tells its
        followers the new commit index, so that they apply while it does: PySyncObj told them
        once the leader had applied, and a follower's proposer waits for its own manager to
        apply the entry (ADR 58). Returns whether the followers still need telling: never."""
        if self._SyncObj__raftCommitIndex <= self._SyncObj__raftLastApplied:
            return False
        if self._SyncObj__raftState == LEADER:
            self._SyncObj__sendAppendEntries()
        started = raft_clock()
        try:
            self._apply_until(started + APPLY_SLICE)
        finally:
            took = raft_clock() - started
            self.applying_seconds += took
            metrics.RAFT_APPLY.observe(took)
        return False

    def _applying(self) -> AbstractContextManager[object]:
        """What a slice of entries is applied within (the state store's batch, in RaftNode)."""
        return nullcontext()

    def _apply_until(self, deadline: float) -> None:
        answers: list[_Answer] = []
        try:
            with self._applying():
                while self._SyncObj__raftCommitIndex > self._SyncObj__raftLastApplied:
                    count = min(self._SyncObj__raftCommitIndex - self._SyncObj__raftLastApplied, READ_AHEAD)
                    entries = self._SyncObj__getEntries(self._SyncObj__raftLastApplied + 1, count)
                    if not entries:
                        return  # compacted away: a snapshot brings the state instead
                    for entry in entries:
                        self._apply_one(entry, answers)
                        if raft_clock() >= deadline:
                            return
        finally:
            self._answer(answers)

    def _apply_one(self, entry: tuple[bytes, int, int], answers: list[_Answer]) -> None:
        """PySyncObj's own steps for one entry: apply it, and take those who wait on it, to be
        answered once the slice is on disk (an entry that failed keeps them for its retry)."""
        data, index, term = entry
        try:
            result = self._SyncObj__doApplyCommand(data)
            answers.append((index, term, result, self._SyncObj__commandsWaitingCommit.pop(index, [])))
            self._SyncObj__raftLastApplied += 1
        except SyncObjExceptionWrongVer as exc:
            log.error(
                "Raft entry %d asks for code version %d, this is %d", index, exc.ver, self._SyncObj__selfCodeVersion
            )

    def _answer(self, answers: list[_Answer]) -> None:
        """Answer the proposers of the applied entries. Entries the slice could not write
        were un-applied (`_applying`): their proposers wait for the retry."""
        for index, term, result, subscribers in answers:
            if index > self._SyncObj__raftLastApplied:
                self._SyncObj__commandsWaitingCommit.setdefault(index, []).extend(subscribers)
                continue
            for subscribed_term, callback in subscribers:
                if subscribed_term == term:
                    callback(result, FAIL_REASON.SUCCESS)
                else:
                    callback(None, FAIL_REASON.DISCARDED)
