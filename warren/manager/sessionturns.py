"""Sessions take turns with the rest of the event loop (ADR 91).

A commit that gives work to many nodes wakes their sessions together. Each one then computes
its message (its tasks' diff, the endpoints' delta) in one step of the loop, and asyncio runs
every step that is ready in one pass. At 100 nodes that was 70 steps, 30-40 ms of CPU, in one
pass: an API call that arrived meanwhile waited for all of them, twice or three times over,
since a call takes several passes. `SessionTurns` lets sessions work only a few milliseconds
per pass of the loop; the others wait, in order, for the next passes, and whatever arrived
meanwhile runs in between.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

# Session work per pass of the loop: a few sessions' steps at 100 nodes (about 0.5 ms each).
TURN_BUDGET = 0.004
# A first guess at one turn's cost, learned from the turns taken (a moving average).
FIRST_GUESS = 0.0005


class SessionTurns:
    """At most about `budget` seconds of session work in one pass of the event loop."""

    def __init__(self, budget: float = TURN_BUDGET) -> None:
        self._budget = budget
        self._cost = FIRST_GUESS
        self._spent = 0.0  # in the current pass
        self._pass_open = False  # a `_next_pass` is scheduled
        self._waiting: deque[asyncio.Future[None]] = deque()

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for this session's turn, then do its (synchronous) work inside."""
        if self._waiting or self._spent >= self._budget:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            await waiter
        self._open_pass()
        started = time.perf_counter()
        try:
            yield
        finally:
            took = time.perf_counter() - started
            self._spent += took
            self._cost += (took - self._cost) / 16

    def _open_pass(self) -> None:
        """Count this pass's work until the loop's next pass: `call_soon` runs there, since a
        pass runs only the callbacks that were ready when it began."""
        if not self._pass_open:
            self._pass_open = True
            asyncio.get_running_loop().call_soon(self._next_pass)

    def _next_pass(self) -> None:
        """A new pass: let in as many waiting sessions as its budget holds, at least one."""
        self._pass_open = False
        self._spent = 0.0
        let_in = max(1, int(self._budget / max(self._cost, 1e-6)))
        while self._waiting and let_in > 0:
            waiter = self._waiting.popleft()
            if not waiter.done():  # a cancelled one is a session that ended
                waiter.set_result(None)
                let_in -= 1
        if self._waiting:  # let the rest in later, even if no session runs in between
            self._open_pass()

    @property
    def waiting(self) -> int:
        return len(self._waiting)
