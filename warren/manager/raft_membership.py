"""Changing the Raft membership and handing leadership over, mixed into RaftNode (ADR 15): the
event loop's side of PySyncObj's dynamic membership and leadership transfer, which call back on
the Raft thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pysyncobj import FAIL_REASON

from warren.aio import wait_within
from warren.manager.ports import ProposalError, RaftStatus
from warren.manager.raft_proposals import FAILURES


class Membership:
    """Mixed into RaftNode."""

    # What this uses of RaftNode and SyncObj (declared for the type checker only).
    addNodeToCluster: Callable[..., Any]
    removeNodeFromCluster: Callable[..., Any]
    transferLeadership: Callable[..., Any]
    status: Callable[[], RaftStatus]

    async def change_membership(self, action: str, raft_addr: str, timeout: float = 10.0) -> None:
        """Add or remove one member (`action` is "add" or "remove") and wait until the change is
        committed. One change at a time: a second one before the first commits is refused."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def on_done(_result: object, reason: int) -> None:
            loop.call_soon_threadsafe(_resolve_once, future, reason)

        change = self.addNodeToCluster if action == "add" else self.removeNodeFromCluster
        change(raft_addr, callback=on_done)
        try:
            reason = await wait_within(future, timeout)
        except TimeoutError:
            raise ProposalError("unknown", f"the membership change did not commit within {timeout:g}s") from None
        if reason != FAIL_REASON.SUCCESS:
            code, message = FAILURES.get(reason, ("unknown", f"failed (reason {reason})"))
            raise ProposalError(code, f"the membership change failed: {message}")

    async def transfer_leadership(self, timeout: float = 5.0) -> str:
        """Hand leadership to the most caught-up connected member; returns its Raft address."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def on_done(_result: object, reason: int) -> None:
            loop.call_soon_threadsafe(_resolve_once, future, reason)

        self.transferLeadership(callback=on_done)
        reason = await wait_within(future, timeout)
        if reason != FAIL_REASON.SUCCESS:
            raise ProposalError("unavailable", "no other manager is caught up enough to take over leadership; retry")
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            status = self.status()
            if status.leader and status.leader != status.self_addr:
                return status.leader
            await asyncio.sleep(0.02)
        raise ProposalError("unavailable", "leadership did not move in time; retry")


def _resolve_once(future: asyncio.Future[int], reason: int) -> None:
    """Give `future` its outcome unless it already has one (a membership or leadership change)."""
    if not future.done():
        future.set_result(reason)
