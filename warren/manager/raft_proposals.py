"""Proposing to the Raft log, mixed into RaftNode: group commit with a bound on the entries in
flight (ADR 51), the store's capacity checked before an entry is proposed (ADR 22), and
read-your-writes (ADR 58).

Proposals made while an event loop is busy go together as one Batch entry: one Raft round and one
fsync for all of them. At most MAX_IN_FLIGHT of a manager's entries are in flight at once.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from pysyncobj import FAIL_REASON

from warren import commands
from warren.commands import Command, Result
from warren.manager import metrics
from warren.manager.capacity import StoreCapacity, entry_cost
from warren.manager.ports import ProposalError
from warren.manager.store import Store

# Commands per Batch entry: big enough to amortise a Raft round and an fsync, small enough
# that one entry stays well below PySyncObj's message size.
MAX_BATCH = 1024
# And bytes per Batch entry (ADR 20): a follower forwards its batch to the leader as one
# message, which the transport bounds. A single larger command still goes, alone.
MAX_BATCH_BYTES = 1 << 20
# Group commit (ADR 51): at most this many of a manager's entries are in flight at once, and the
# proposals made meanwhile wait and go together in the next one. Without the bound, each proposal
# the event loop saw alone became an entry of its own, with its own journal and state fsyncs on
# the Raft thread, and concurrent writers queued behind one another instead of sharing entries.
MAX_IN_FLIGHT = 2
# PySyncObj never calls back for an entry that a deposed leader dropped: after this long, an
# entry no longer holds its slot (its proposer still waits for its own timeout).
IN_FLIGHT_TIMEOUT = 1.0


# PySyncObj's reasons for a failed proposal, as the API's status and what to do.
FAILURES = {
    FAIL_REASON.QUEUE_FULL: ("unavailable", "the manager is overloaded (Raft queue full); retry"),
    FAIL_REASON.MISSING_LEADER: ("unavailable", "no Raft leader: an election is in progress or quorum is lost"),
    FAIL_REASON.DISCARDED: ("unavailable", "the write was discarded by a new leader; retry"),
    FAIL_REASON.NOT_LEADER: ("unavailable", "leadership changed before the write committed; retry"),
    FAIL_REASON.LEADER_CHANGED: ("unavailable", "leadership changed before the write committed; retry"),
    FAIL_REASON.REQUEST_DENIED: ("unavailable", "the leader refused the write"),
    FAIL_REASON.UNKNOWN_OUTCOME: ("unknown", "the outcome of the write is unknown; check before retrying"),
}


class Proposals:
    """Mixed into RaftNode; call `_init_proposals` in its constructor."""

    # What this uses of RaftNode (declared for the type checker only).
    _store: Store
    capacity: StoreCapacity
    _apply_entry: Callable[..., Any]  # PySyncObj's @replicated method: (blob, callback=...)
    _peer_links: Callable[[], dict[str, bool]]

    def _init_proposals(self) -> None:
        # Proposals for the next entry, with their encoded size: each is encoded once to be
        # measured, and once more inside its Batch.
        self._queued: list[tuple[Command, int, asyncio.Future, float]] = []
        self._group = _GroupCommit()

    def propose(self, command: Command, timeout: float = 5.0) -> Result:
        """Replicate `command` and wait for it to be applied here. Blocking; never call it from
        the Raft thread (a watcher or callback) or it deadlocks."""
        blob = commands.encode(command)
        if (too_large := commands.oversize_message(command, len(blob))) is not None:
            raise ProposalError("resource_exhausted", too_large)
        done = threading.Event()
        outcome: list = []
        charge = self._reserve_capacity(len(blob))

        def on_done(result: bytes | None, reason: int) -> None:
            self.capacity.release(charge)
            outcome.append((result, reason))
            done.set()

        self._apply_entry(blob, callback=on_done)
        if not done.wait(timeout):
            raise ProposalError("unknown", f"the write did not commit within {timeout:g}s (no quorum?)")
        return self._outcome(*outcome[0])

    async def propose_async(self, command: Command, timeout: float = 5.0) -> Result:
        """Replicate `command` and wait until it is applied here. Proposals made while the
        event loop is busy are sent together as one Batch entry (group commit): one Raft round
        and one fsync for all of them."""
        size = len(commands.encode(command))
        if (too_large := commands.oversize_message(command, size)) is not None:
            raise ProposalError("resource_exhausted", too_large)
        self.check_quorum()
        loop = asyncio.get_running_loop()
        if self._group.loop is not loop:  # a new event loop (tests): nothing of the old one is waited for
            self._group, self._queued = _GroupCommit(loop), []
        future: asyncio.Future = loop.create_future()
        self._queued.append((command, size, future, loop.time()))
        self._flush_soon(loop)
        try:
            # asyncio.timeout, not wait_for: no task and no shield per proposal (ADR 58). A
            # proposal cancelled meanwhile still goes; settling skips its finished future.
            async with asyncio.timeout(timeout):
                result, reason = await future
        except TimeoutError:
            raise ProposalError("unknown", f"the write did not commit within {timeout:g}s (no quorum?)") from None
        outcome = self._outcome(result, reason)
        # Read-your-writes here (ADR 58): answer once this manager has applied the entry, so that
        # the proposer's next read on it sees the write. PySyncObj calls back a follower's
        # proposal when the follower applies it, so this does not wait today; it keeps the
        # promise if that changes.
        if self._store.applied_index < outcome.index:
            await self._wait_applied(outcome.index, timeout)
        return outcome

    async def _wait_applied(self, index: int, timeout: float) -> None:
        """Wait, bounded, until this manager's store has applied Raft entry `index`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._store.applied_index < index:
            if asyncio.get_running_loop().time() > deadline:
                raise ProposalError("unavailable", "this manager is not catching up with the leader")
            await asyncio.sleep(0.002)

    def _flush_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send what is queued on the next turn of the loop, if an entry may go now; otherwise
        the entry in flight that settles first sends it."""
        group = self._group
        if self._queued and not group.flush_scheduled and group.in_flight < MAX_IN_FLIGHT:
            group.flush_scheduled = True
            loop.call_soon(self._send_queued, loop)

    def _send_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        self._group.flush_scheduled = False
        if self._group.loop is not loop or not self._queued or self._group.in_flight >= MAX_IN_FLIGHT:
            return
        taken = _batch_length(self._queued)
        queued, self._queued = self._queued[:taken], self._queued[taken:]
        self._flush_soon(loop)  # more than one entry's worth, and a free slot
        now = loop.time()
        for *_, queued_at in queued:
            metrics.RAFT_PROPOSAL.labels("queued").observe(now - queued_at)
        try:
            self._send(loop, [command for command, *_ in queued], [future for _, _, future, _ in queued])
        except ProposalError as exc:
            # No room for writes; read barriers (no-ops, a few bytes) still go, as one entry, so
            # that consistent reads keep working. Nothing goes while the apply path waits.
            barriers = [future for command, _, future, _ in queued if isinstance(command, commands.Noop)]
            send_barriers = bool(barriers) and self.capacity.stalled is None
            for command, _, future, _ in queued:
                if not future.done() and not (send_barriers and isinstance(command, commands.Noop)):
                    future.set_exception(ProposalError(exc.code, exc.message))
            if send_barriers:
                self._send(loop, [commands.Noop()], barriers, check_capacity=False)

    def _send(
        self, loop: asyncio.AbstractEventLoop, to_send: list[Command], futures: list, check_capacity: bool = True
    ) -> None:
        """Propose `to_send` as one entry; with one command, every future gets its outcome."""

        group = self._group

        def free_slot() -> None:
            if group.release(slot):
                self._flush_soon(loop)

        sent_at = loop.time()
        applied_at = sent_at

        def settle(outcomes: list[tuple[bytes | None, int]]) -> None:
            metrics.RAFT_PROPOSAL.labels("replicated").observe(applied_at - sent_at)
            metrics.RAFT_PROPOSAL.labels("answered").observe(loop.time() - applied_at)
            for future, outcome in zip(futures, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
            free_slot()

        blob = commands.encode(to_send[0] if len(to_send) == 1 else commands.Batch(tuple(to_send)))
        charge = self._reserve_capacity(len(blob)) if check_capacity else -1
        slot = group.take()
        loop.call_later(IN_FLIGHT_TIMEOUT, free_slot)

        if len(to_send) == 1:

            def on_done(result: bytes | None, reason: int) -> None:
                nonlocal applied_at
                applied_at = time.monotonic()
                self.capacity.release(charge)
                loop.call_soon_threadsafe(settle, [(result, reason)] * len(futures))

        else:

            def on_done(result: bytes | None, reason: int) -> None:
                nonlocal applied_at
                applied_at = time.monotonic()
                self.capacity.release(charge)
                each: list[tuple[bytes | None, int]]
                if reason == FAIL_REASON.SUCCESS and result:
                    each = [(commands.encode_result(r), reason) for r in commands.decode_results(result)]
                else:
                    each = [(result, reason)] * len(futures)
                loop.call_soon_threadsafe(settle, each)

        self._apply_entry(blob, callback=on_done)

    def _reserve_capacity(self, entry_bytes: int) -> int:
        """Refuse an entry the store may not have room for (ADR 22), before it is proposed: once
        committed, every manager must apply it. Returns the charge to release once it is applied."""
        cost = entry_cost(entry_bytes)
        reason = self.capacity.refusal(cost)
        if reason is not None:
            raise ProposalError("resource_exhausted", reason)
        return self.capacity.reserve(cost)

    def check_quorum(self) -> None:
        """Fail fast, before proposing, when this manager cannot reach a majority: the write
        could not commit, and a client waiting out a timeout learns less than this message."""
        others = self._peer_links()
        reachable, total = 1 + sum(others.values()), 1 + len(others)
        if reachable * 2 <= total:
            raise ProposalError("unavailable", f"no quorum: {reachable} of {total} managers reachable")

    async def read_barrier(self, timeout: float = 5.0) -> int:
        """Make the next local read linearizable: commit a no-op through the leader, then wait
        until this manager has applied it. Returns the no-op's index."""
        result = await self.propose_async(commands.Noop(), timeout)  # waits until applied here
        return result.index

    @staticmethod
    def _outcome(result: bytes | None, reason: int) -> Result:
        if reason != FAIL_REASON.SUCCESS:
            code, message = FAILURES.get(reason, ("unknown", f"write failed (reason {reason})"))
            raise ProposalError(code, message)
        if not result:
            raise ProposalError("unknown", "the write was applied before a restart; its result is gone")
        return commands.decode_result(result)


class _GroupCommit:
    """The entries of one event loop's proposals that are in flight (ADR 51)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop
        self.flush_scheduled = False
        self._slots: set[int] = set()
        self._ids = itertools.count()

    @property
    def in_flight(self) -> int:
        return len(self._slots)

    def take(self) -> int:
        slot = next(self._ids)
        self._slots.add(slot)
        return slot

    def release(self, slot: int) -> bool:
        """Free `slot`; False if it was free already (settled, or timed out)."""
        if slot not in self._slots:
            return False
        self._slots.remove(slot)
        return True


def _batch_length(queued: list[tuple[Command, int, asyncio.Future, float]]) -> int:
    """How many of the queued (command, encoded size, future, queued at) proposals go into the
    next entry: at most MAX_BATCH commands and MAX_BATCH_BYTES of them, and always at least one."""
    size = 0
    for count, (_, command_size, *_) in enumerate(queued[:MAX_BATCH]):
        size += command_size
        if size > MAX_BATCH_BYTES and count > 0:
            return count
    return min(len(queued), MAX_BATCH)
