"""Appending to the Raft journal, mixed into RaftNode: the entries a leader appends in a tick,
and those a follower receives in one message, are written together, with two fsyncs for all of
them instead of two each (ADR 90).

A leader sends its new entries to its followers before they are on its own disk; Raft allows it,
so long as the leader counts itself towards a commit only once they are written. PySyncObj
counts at the start of a tick, and the entries of a tick are written before its end. A follower
writes what it received before it acknowledges it.

Like the other mixins, this overrides PySyncObj's private, name-mangled methods, so it must come
before `SyncObj` among a class's bases.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pysyncobj import FAIL_REASON
from pysyncobj.node import Node

from warren.manager.journal import LmdbJournal, UnwrittenEntries
from warren.manager.raft_peers import FOLLOWER, LEADER

log = logging.getLogger("warren.manager.raft")


class JournalAppends:
    """Mixed into a SyncObj subclass, which sets `_journal` before SyncObj's constructor."""

    # What this uses of SyncObj's state (PySyncObj has no types): for the type checker only.
    _journal: LmdbJournal
    _SyncObj__raftState: int
    _SyncObj__raftLeader: Node | None
    _SyncObj__commandsWaitingCommit: dict[int, list[tuple[int, Callable[..., None]]]]
    _SyncObj__setState: Callable[[int], None]
    _SyncObj__commandsQueue: Any  # PySyncObj's FastQueue

    def _checkCommandsToApply(self) -> None:
        """PySyncObj's step that appends the proposals a leader holds (a follower forwards
        them instead): a leader's appends of the tick are written together, once sent."""
        if self._SyncObj__raftState != LEADER:
            super()._checkCommandsToApply()  # type: ignore[misc]
            return
        try:
            with self._journal.appending_together():
                self._holding_appends = True
                try:
                    super()._checkCommandsToApply()  # type: ignore[misc]
                finally:
                    self._holding_appends = False
                if self._append_held:
                    self._SyncObj__sendAppendEntries()
        except UnwrittenEntries as unwritten:
            self._step_down(unwritten)

    _holding_appends = False
    _append_held = False

    def _SyncObj__sendAppendEntries(self) -> None:
        """PySyncObj sends an append after each entry it adds. Inside `_checkCommandsToApply`,
        while more proposals are queued, the send waits for them: one append carries them all.
        The last one goes at once, and the GIL its send lets go may bring more proposals in."""
        if self._holding_appends and self._more_proposals_queued():
            self._append_held = True
            return
        self._append_held = False
        super()._SyncObj__sendAppendEntries()  # type: ignore[misc]

    def _more_proposals_queued(self) -> bool:
        return bool(self._SyncObj__commandsQueue._FastQueue__queue)

    def _step_down(self, unwritten: UnwrittenEntries) -> None:
        """This leader sent entries that its own journal could not write (the disk or the map
        is full, ADR 22), and dropped them. It must never give those indexes other entries in
        this term, so it stops leading. The followers may still commit them under the next
        leader: their proposers here are told that the outcome is unknown."""
        log.error("%s; stepping down as the Raft leader", unwritten)
        waiting = self._SyncObj__commandsWaitingCommit
        for index in range(unwritten.first_index, unwritten.first_index + unwritten.count):
            for _term, callback in waiting.pop(index, []):
                callback(None, FAIL_REASON.UNKNOWN_OUTCOME)
        self._SyncObj__setState(FOLLOWER)
        self._SyncObj__raftLeader = None

    def _SyncObj__onMessageReceived(self, node: Node, message: dict[str, Any]) -> None:
        if message.get("type") != "append_entries":
            super()._SyncObj__onMessageReceived(node, message)  # type: ignore[misc]
            return
        try:
            with self._journal.appending_together():
                super()._SyncObj__onMessageReceived(node, message)  # type: ignore[misc]
        except UnwrittenEntries as unwritten:
            # Not acknowledged (see `_SyncObj__sendNextNodeIdx`): the leader sends them again.
            log.error("%s: writes wait for room in the state store (ADR 22)", unwritten)

    def _SyncObj__sendNextNodeIdx(
        self, node: Node, reset: bool = False, nextNodeIdx: int | None = None, success: bool = False
    ) -> None:
        """A follower's answer to an append: what it received is written first."""
        self._journal.write_appends()  # raises UnwrittenEntries: no answer goes
        super()._SyncObj__sendNextNodeIdx(node, reset=reset, nextNodeIdx=nextNodeIdx, success=success)  # type: ignore[misc]
