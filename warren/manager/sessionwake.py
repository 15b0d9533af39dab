"""Waking a session in its pause when a commit gives its node work (ADR 85).

A session waits its pause after each message (ADR 73, `sessionpace.Pauses`). The bell is rung
once per commit, on the loop, with the nodes the commit gives work (`CommitDigest.work`): only
their sessions wake, not every session at every commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


class WorkBell:
    """Per node, the wake-up of its open session."""

    def __init__(self) -> None:
        self._sessions: dict[str, tuple[str, asyncio.Event]] = {}  # node id -> (session id, its wake-up)

    def open(self, node_id: str, session_id: str) -> asyncio.Event:
        """The wake-up of a new session of `node_id` (which supersedes any earlier one)."""
        wake = asyncio.Event()
        self._sessions[node_id] = (session_id, wake)
        return wake

    def close(self, node_id: str, session_id: str) -> None:
        if (entry := self._sessions.get(node_id)) is not None and entry[0] == session_id:
            del self._sessions[node_id]

    def ring(self, node_ids: Iterable[str]) -> None:
        for node_id in node_ids:
            if (entry := self._sessions.get(node_id)) is not None:
                entry[1].set()


async def pause(wake: asyncio.Event, early_from: float, until: float) -> None:
    """Wait until the loop's clock reads `until`, or until `wake` is set at or after `early_from`
    (`Pauses.after_message` gives both; `early_from` comes first). The session clears `wake` as it
    takes in the commits it answers."""
    loop = asyncio.get_running_loop()
    if (before := early_from - loop.time()) > 0:
        await asyncio.sleep(before)
    if wake.is_set():
        return
    try:
        async with asyncio.timeout_at(until):
            await wake.wait()
    except TimeoutError:
        pass
