"""`--watch` on the list commands (ADR 63): redraw the table as the state changes.

The event stream (ADR 45) says when to redraw; each burst of events becomes one re-list, at most
one every MIN_GAP seconds. While the stream is down (its manager went away and it is
reconnecting), the table is polled every POLL seconds instead. On a terminal each frame replaces
the last (ANSI clear, and a poll keeps the ages fresh); into a pipe or a file, frames that changed
are appended after a timestamped separator, so a script can read them. Ctrl-C exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, TextIO

from warren.cli.errors import CliError, Exit

MIN_GAP = 0.5  # seconds between two redraws: at most 2 a second, however many events come
POLL = 2.0  # seconds between re-lists when no event can wake us (and on a terminal, for the ages)
GIVE_UP = 30.0  # seconds of no manager answering before the watch exits (one line, exit 5)
RETRY = 1.0  # seconds between two attempts to open the event stream again
# The stream starts this far back, so that a change committed between the first listing and the
# stream's opening still wakes the watch, even with a CLI clock up to this far ahead of the
# managers' (events carry the proposing manager's clock, ADR 45). The replayed events cost one
# extra redraw at the start.
CLOCK_SKEW = 60.0
CLEAR = "\x1b[H\x1b[2J"

Filters = Sequence[tuple[str, str]]


def check_watch_args(args: argparse.Namespace) -> None:
    """A watch draws tables; a JSON feed of changes is `warren events --format json`."""
    if getattr(args, "watch", False) and getattr(args, "format", "table") == "json":
        raise CliError("--watch draws tables: drop --format json (for a feed of changes: warren events)", Exit.USAGE)


class Feed(Protocol):
    """What wakes the watch: `changed` is set on events; `live` is False while they cannot come."""

    changed: threading.Event

    @property
    def live(self) -> bool: ...

    def close(self) -> None: ...


class EventFeed:
    """The manager's event stream, read by a daemon thread on a client of its own (its channels
    are closed at the end, which ends the stream). A cut stream is opened again after RETRY, on
    whichever manager answers; meanwhile `live` is False and the watch polls."""

    def __init__(self, args: argparse.Namespace, filters: Filters) -> None:
        from warren.cli.client import connect

        self.changed = threading.Event()
        self._live = True
        self._closed = threading.Event()
        self._client = connect(args)
        self._filters = list(filters)
        self._thread = threading.Thread(target=self._follow, name="watch-events", daemon=True)
        self._thread.start()

    @property
    def live(self) -> bool:
        return self._live

    def _follow(self) -> None:
        from warren.api.v1 import control_pb2 as pb

        filters = [pb.EventFilter(key=k, value=v) for k, v in self._filters]
        while not self._closed.is_set():
            # From before the (next) listing: a change between the two still wakes the watch.
            request = pb.StreamEventsRequest(since=time.time() - CLOCK_SKEW, filters=filters)
            try:
                for _ in self._client.stream("StreamEvents", request):
                    self._live = True
                    self.changed.set()
            except Exception:  # a cut stream, or one refused: poll until it opens again
                pass
            if self._closed.is_set():
                return
            self._live = False
            self.changed.set()  # re-list now: events may have been missed while it was down
            self._closed.wait(RETRY)

    def close(self) -> None:
        self._closed.set()
        self._client.close()  # cancels the stream the thread is blocked in
        self._thread.join(timeout=2.0)


def watch(
    args: argparse.Namespace,
    draw: Callable[[], object],
    filters: Filters,
    out: TextIO | None = None,
    feed: Feed | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Redraw `draw` (which prints one table on stdout) until Ctrl-C. `filters` are the event
    filters (ADR 45) of the changes that can alter the table."""
    out = out or sys.stdout
    tty = out.isatty()
    feed = feed if feed is not None else EventFeed(args, filters)
    last_frame: str | None = None
    failing_since: float | None = None
    try:
        while True:
            feed.changed.clear()
            try:
                frame = render(draw)
            except CliError as exc:
                if exc.code != Exit.UNAVAILABLE or last_frame is None:
                    raise  # nothing to watch, or never reached: as the command without --watch
                if failing_since is None:
                    failing_since = clock()
                    sys.stderr.write(f"warren: {exc.message}; retrying for {GIVE_UP:g}s\n")
                    sys.stderr.flush()
                elif clock() - failing_since >= GIVE_UP:
                    raise CliError(f"{exc.message} (gave up watching after {GIVE_UP:g}s)", Exit.UNAVAILABLE) from None
                frame = None
            else:
                failing_since = None
            if frame is not None and (tty or frame != last_frame):
                out.write(_frame(frame, tty, polling=not feed.live))
                out.flush()
                last_frame = frame
            drawn_at = clock()
            _wait_for_change(feed, poll=tty or failing_since is not None)
            time.sleep(max(0.0, drawn_at + MIN_GAP - clock()))  # coalesce a burst of events
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a watch ends
    finally:
        feed.close()


def _wait_for_change(feed: Feed, poll: bool) -> None:
    """Until an event, or POLL seconds when the table must be listed again anyway (`poll`: no
    manager answered, or a terminal shows ages that must move on; or the events cannot come)."""
    while not feed.changed.wait(POLL):
        if poll or not feed.live:
            return


def render(draw: Callable[[], object]) -> str:
    """What `draw` prints, as one string: a frame is written at once, never half."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        draw()
    return buffer.getvalue()


def _frame(table: str, tty: bool, polling: bool) -> str:
    moment = time.strftime("%Y-%m-%d %H:%M:%S")
    note = "  (events unavailable: polling)" if polling else ""
    if tty:
        return f"{CLEAR}{moment}  watching; Ctrl-C exits{note}\n\n{table}"
    return f"--- {moment}{note}\n{table}"
