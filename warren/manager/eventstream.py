"""The Control API's event stream (ADR 45): `StreamEvents`, served by any manager from its own
history of events, which every manager writes identically in the transaction of each apply.

A stream replays the history after its starting point, then follows: each commit's wake-up
(the EventHub) reads the history again after the last event sent. The history is the one
source, so a replay that meets the live tail neither skips nor repeats an event.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import grpc

from warren import events
from warren.aio import wait_within
from warren.api import convert
from warren.api.v1 import control_pb2 as cpb
from warren.manager.events import EventHub
from warren.manager.server import ApiError

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PAGE = 500  # events read from the history at a time
MAX_FILTERS = 64
LATEST_TIME = 1e11  # a time past this (year 5138) is a typo, not a plan
RECHECK = 1.0  # seconds between looks at the history when no wake-up comes (a lost one, --until)


class EventHistory(Protocol):
    """What the Store keeps of the events (ADR 45)."""

    @property
    def last_event(self) -> events.Event | None: ...

    @property
    def events_pruned(self) -> tuple[int, int] | None: ...

    def events_after(self, after: tuple[int, int] | None, limit: int = 1000) -> list[events.Event]: ...


@dataclass(frozen=True)
class EventQuery:
    after: tuple[int, int] | None  # a resume: the events after this one
    since: float  # 0: from now (unless a resume)
    until: float  # 0: follow forever
    chosen: events.EventFilter


def parse_query(request: cpb.StreamEventsRequest) -> EventQuery:
    """The request's fields, checked; ApiError(INVALID_ARGUMENT) names the bad one."""
    after = None
    if request.after:
        try:
            after = events.parse_id(request.after)
        except ValueError as exc:
            raise ApiError(INVALID, str(exc)) from None
    for name, value in (("since", request.since), ("until", request.until)):
        if not math.isfinite(value) or value < 0 or value > LATEST_TIME:
            raise ApiError(INVALID, f"{name} must be a Unix time in seconds (got {value!r})")
    if after is not None and request.since:
        raise ApiError(INVALID, "give either after (a resume from an event id) or since, not both")
    if request.until and request.since and request.until < request.since:
        raise ApiError(INVALID, "until is before since")
    if len(request.filters) > MAX_FILTERS:
        raise ApiError(INVALID, f"at most {MAX_FILTERS} filters")
    try:
        chosen = events.parse_filters([(f.key, f.value) for f in request.filters])
    except ValueError as exc:
        raise ApiError(INVALID, str(exc)) from None
    return EventQuery(after, request.since, request.until, chosen)


class EventFeed:
    """Events from this manager's history, replayed then followed."""

    def __init__(self, history: EventHistory, hub: EventHub) -> None:
        self._history = history
        self._hub = hub

    async def follow(self, query: EventQuery) -> AsyncIterator[events.Event]:
        with self._hub.subscribe() as wakeups:  # before the first read: no commit is missed
            cursor = query.after
            last = self._history.last_event
            # `since` selects from the history as it stood when the stream opened; what commits
            # later is live and always sent: a client whose clock runs ahead of the managers'
            # would otherwise miss it.
            opened_at = last.key if last is not None else None
            if cursor is None and not query.since:
                cursor = opened_at
            while True:
                while not wakeups.empty():  # this read covers them; a slow reader holds none
                    wakeups.get_nowait()
                self._check_no_gap(cursor, query.after)
                page = self._history.events_after(cursor, PAGE)
                for event in page:
                    cursor = event.key
                    if query.until and event.time > query.until:
                        return
                    live = opened_at is None or event.key > opened_at
                    if (live or event.time >= query.since) and query.chosen.matches(event):
                        yield event
                if len(page) == PAGE:
                    continue
                wait = RECHECK
                if query.until:
                    left = query.until - time.time()
                    if left <= 0:
                        return
                    wait = min(wait, left)
                with contextlib.suppress(TimeoutError):
                    await wait_within(wakeups.get(), wait)

    def _check_no_gap(self, cursor: tuple[int, int] | None, asked: tuple[int, int] | None) -> None:
        """Refuse to go on past events this manager no longer has: a silent gap would look like
        a quiet cluster."""
        pruned = self._history.events_pruned
        if pruned is None or (cursor is not None and cursor >= pruned):
            return
        if cursor is None:
            return  # from the start of the history (--since): whatever it holds, in order
        start = events.format_id(*pruned)
        if asked is not None and cursor == asked:
            raise ApiError(
                grpc.StatusCode.OUT_OF_RANGE,
                f"event {events.format_id(*asked)} is older than this manager's history, which starts after "
                f"{start}: events in between are gone; start again with --since",
            )
        raise ApiError(
            grpc.StatusCode.OUT_OF_RANGE,
            f"this stream fell behind the history (it now starts after {start}): events were lost; start again",
        )


class EventsControl:
    """StreamEvents, for ControlService (which sets `_events`)."""

    _events: EventFeed | None

    async def StreamEvents(self, request: cpb.StreamEventsRequest, context: object) -> AsyncIterator[cpb.Event]:
        if self._events is None:
            raise ApiError(grpc.StatusCode.UNIMPLEMENTED, "this manager does not serve events")
        query = parse_query(request)
        async for event in self._events.follow(query):
            yield convert.event_to_pb(event)
