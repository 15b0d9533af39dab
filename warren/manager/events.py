"""Fan-out of committed changes from the Raft apply thread to asyncio subscribers.

The store calls `publish` on the Raft thread, which must never block; subscribers (the
orchestrator, each dispatcher session, later the event stream) read their own queue on the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from warren.state import Change

log = logging.getLogger(__name__)

Event = tuple[int, list[Change] | None]  # (applied index, changes or None = resynchronise)


QUEUE_LIMIT = 10_000


class EventHub:
    """A subscriber that falls QUEUE_LIMIT events behind (a stalled stream) gets its queue
    replaced by one "resynchronise" event (changes None) instead of growing without bound."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: set[asyncio.Queue[Event]] = set()
        self._listeners: list[Callable[[Event], None]] = []

    def publish(self, index: int, changes: list[Change] | None) -> None:
        """Thread-safe; called by the store after each commit."""
        self._loop.call_soon_threadsafe(self._deliver, (index, changes))

    def listen(self, listener: Callable[[Event], None]) -> None:
        """Call `listener(event)` on the loop for each commit, once it is queued for the
        subscribers: it must be quick (it runs once per commit, not once per subscriber). A
        listener that fails is logged; the subscribers have the commit all the same."""
        self._listeners.append(listener)

    def _deliver(self, event: Event) -> None:
        self._enqueue(event)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("a commit listener failed")

    def _enqueue(self, event: Event) -> None:
        for queue in self._queues:
            if queue.qsize() >= QUEUE_LIMIT:
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait((event[0], None))
            else:
                queue.put_nowait(event)

    @contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[Event]]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)
