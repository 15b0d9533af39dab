"""Waiting with a time limit, one way everywhere.

Python 3.11's `asyncio.wait_for` can swallow a cancellation: when the awaited future completes
in the same loop turn as the task running wait_for is cancelled, it returns the result instead
of raising CancelledError (fixed in 3.12). A loop around it then keeps running after its session
was cancelled, and whoever awaits the cancelled task waits for ever. `asyncio.timeout()` awaits
in the caller's own task and counts cancellations (`uncancel`), so it never loses one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

_T = TypeVar("_T")


async def wait_within(awaitable: Awaitable[_T], seconds: float | None) -> _T:
    """`await awaitable`, raising TimeoutError after `seconds` (None: no limit), as
    asyncio.wait_for does, except that a cancellation of the caller is never swallowed."""
    async with asyncio.timeout(seconds):
        return await awaitable
