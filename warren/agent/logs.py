"""The agent's half of log streaming (ADR 14): serve the managers' log subscriptions from the
task log files, and remember when each line arrived.

Files. A runtime appends a task's stdout and stderr, interleaved, to `logs/<task id>.log`.
Next to it the agent keeps `logs/<task id>.idx`, the arrival-time index: fixed 16-byte records
(end offset, Unix time), each meaning "the bytes of the log before `end`, not covered by an
earlier record, were first seen at `time`". While the agent runs it looks at every running
task's log every POLL seconds and appends a record when the file grew, so a line's timestamp is
the poll that first saw its newline: at most POLL late, and stable when read again days later.
Output written while the agent was down gets the time the agent first saw it after starting.
Only the last record lives in memory; lookups read the file. The index goes with the log.

Subscriptions. `LogAgent.serve` keeps a LogSubscriptions stream open for the session. Each
subscription reads its tasks' logs (the last `tail` lines, or all), then, with follow, polls
for growth every POLL seconds, and publishes lines in batches (at most MAX_LOG_BATCH lines and
MAX_LOG_BATCH_BYTES; lines longer than MAX_LOG_LINE in pieces). A file's read position moves
only once its batch was accepted, so a subscription re-sent after a reconnect resumes where it
was instead of repeating its tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import types_pb2 as pb
from warren.backoff import Backoff
from warren.validate import MAX_LOG_BATCH, MAX_LOG_BATCH_BYTES, MAX_LOG_LINE

log = logging.getLogger(__name__)

POLL = 0.1  # seconds between looks at a growing log (and between index stamps)
PARTIAL_FLUSH = 1.0  # a last line without its newline is sent once the file stopped growing this long
SWEEP_EVERY = 10.0  # seconds between clean-ups of indexes whose log is gone
FORGET_AFTER = 60.0  # a subscription not re-sent this long after its stream ended is dropped
MAX_SUBSCRIPTIONS = 256
MAX_TASKS = 10_000  # task ids in one subscription
PUBLISH_TIMEOUT = 15.0
PUBLISH_RETRIES = (0.2, 0.5, 1.0, 2.0)
TAIL_BLOCK = 64 * 1024
RECORD = struct.Struct("<Qd")  # index record: end offset, arrival time
TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # a file name, never a path


# -- the arrival-time index ----------------------------------------------------------------------
class TimeIndex:
    """When each byte of one log file was first seen (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        size = os.fstat(self._fd).st_size
        self.count = size // RECORD.size
        if size % RECORD.size:  # a torn last record (killed mid-write): drop it
            os.ftruncate(self._fd, self.count * RECORD.size)
        self.covered, self.last_time = self.record(self.count - 1) if self.count else (0, 0.0)

    def record(self, i: int) -> tuple[int, float]:
        end, at = RECORD.unpack(os.pread(self._fd, RECORD.size, i * RECORD.size))
        return end, at

    def records(self, first: int, n: int) -> list[tuple[int, float]]:
        if self._fd < 0:
            return []
        data = os.pread(self._fd, n * RECORD.size, first * RECORD.size)
        return [RECORD.unpack_from(data, k * RECORD.size) for k in range(len(data) // RECORD.size)]

    def observe(self, size: int, now: float) -> None:
        """The log is `size` bytes long at `now`: stamp the bytes not seen before."""
        if self._fd < 0:
            return  # closed by a sweep (its log went away)
        if size < self.covered:  # truncated or replaced: the old times describe other bytes
            os.ftruncate(self._fd, 0)
            self.count, self.covered = 0, 0
        if size > self.covered:
            now = max(now, self.last_time)  # never backwards, even if the clock is stepped back
            os.pwrite(self._fd, RECORD.pack(size, now), self.count * RECORD.size)
            self.count += 1
            self.covered, self.last_time = size, now

    def find(self, offset: int) -> int:
        """The index of the record covering byte `offset` (`count` if none does yet)."""
        lo, hi = 0, self.count if self._fd >= 0 else 0
        while lo < hi:
            mid = (lo + hi) // 2
            if self.record(mid)[0] > offset:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def close(self) -> None:
        """Close the file; later calls do nothing (the fd number may belong to another file)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


class IndexCursor:
    """Arrival times for increasing offsets: one binary search, then reads forward in blocks."""

    BLOCK = 512  # records read at once

    def __init__(self, index: TimeIndex, offset: int, block: int = BLOCK) -> None:
        self.index = index
        self.block = block
        self._i = index.find(offset)
        self._first = 0
        self._block: list[tuple[int, float]] = []

    def time_of(self, offset: int) -> float | None:
        """When byte `offset` was first seen; None if the index does not cover it."""
        while self._i < self.index.count:
            if not self._first <= self._i < self._first + len(self._block):
                self._first, self._block = self._i, self.index.records(self._i, self.block)
                if not self._block:
                    return None
            end, at = self._block[self._i - self._first]
            if end > offset:
                return at
            self._i += 1
        return None


# -- reading a log file ----------------------------------------------------------------------------
def tail_offset(fd: int, size: int, n: int, block: int = TAIL_BLOCK) -> int:
    """Where the last `n` lines of the file's first `size` bytes start (-1: all, from 0), reading
    back `block` bytes at a time. A last line without its newline counts as a line."""
    if n < 0:
        return 0
    if n == 0 or size == 0:
        return size
    pos = size - 1 if os.pread(fd, 1, size - 1) == b"\n" else size  # that newline ends the last line
    found = 0
    while pos > 0:
        start = max(0, pos - block)
        chunk = os.pread(fd, pos - start, start)
        at = len(chunk)
        while (at := chunk.rfind(b"\n", 0, at)) >= 0:
            found += 1
            if found == n:
                return start + at + 1
        pos = start
    return 0


@dataclass(frozen=True)
class Line:
    data: bytes
    timestamp: float


class TaskLogReader:
    """One task's log as lines with arrival times, from a position that moves only on commit().

    Without follow, reading stops at the file's size when the reader was made, and a missing
    file means nothing to read. With follow, reading goes on as the file grows, and a file that
    is missing yet (a task not started) or replaced is read from its beginning when it shows up.
    Lines older than `since` are skipped."""

    def __init__(
        self,
        path: Path,
        index_for: Callable[[], TimeIndex | None] | None,
        tail: int,
        since: float,
        follow: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.since = since
        self.follow = follow
        self.clock = clock
        self.index: TimeIndex | None = None
        self.gone = False  # the file does not exist (now)
        self.offset = 0
        self.limit: int | None = None
        self._index_for = index_for
        self._inode: int | None = None
        self._cursor: IndexCursor | None = None
        self._stalled: tuple[int, float] | None = None  # (size, since when) with a partial line left
        fd = self._open()
        if fd is None:
            self.limit = None if follow else 0
            return
        try:
            size = os.fstat(fd).st_size
            self._observe(size)
            self.offset = tail_offset(fd, size, tail)
        finally:
            os.close(fd)
        if not follow:
            self.limit = size

    def _open(self) -> int | None:
        """The log, opened; None (and `gone`) if it does not exist."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            self.gone, self.index, self._cursor = True, None, None  # the index goes with the log
            return None
        inode = os.fstat(fd).st_ino
        if self._inode is not None and (inode != self._inode or self.gone):  # a new file: from its start
            self.offset, self._cursor = 0, None
        self._inode, self.gone = inode, False
        if self.index is None and self._index_for is not None:
            self.index = self._index_for()
        return fd

    @property
    def finished(self) -> bool:
        """Nothing more will come (no follow): read to the end, or the file is gone."""
        return self.gone or (self.limit is not None and self.offset >= self.limit)

    def commit(self, offset: int) -> None:
        self.offset = offset

    def _observe(self, size: int) -> None:
        if self.index is not None:
            self.index.observe(size, self.clock())

    def _time(self, offset: int) -> float:
        if self.index is None:
            return self.clock()
        if self._cursor is None or self._cursor.index is not self.index:
            self._cursor = IndexCursor(self.index, offset)
        at = self._cursor.time_of(offset)
        if at is None:  # truncated under us: the index restarted
            self._cursor = IndexCursor(self.index, offset)
            at = self._cursor.time_of(offset)
        return at if at is not None else self.clock()

    def read(self, max_lines: int, max_bytes: int) -> tuple[list[Line], int]:
        """Lines from the current position, and the position after them (for commit)."""
        if max_lines <= 0 or (self.gone and not self.follow):
            return [], self.offset
        fd = self._open()
        if fd is None:
            return [], self.offset
        try:
            size = os.fstat(fd).st_size
            self._observe(size)
            if size < self.offset:  # truncated: start again from its beginning
                self.offset, self._cursor = 0, None
            end = size if self.limit is None else min(size, self.limit)
            chunk = os.pread(fd, min(max_bytes, end - self.offset), self.offset) if end > self.offset else b""
        finally:
            os.close(fd)
        return self._split(chunk, at_end=self.offset + len(chunk) >= end, size=size, max_lines=max_lines)

    def _split(self, chunk: bytes, at_end: bool, size: int, max_lines: int) -> tuple[list[Line], int]:
        lines: list[Line] = []
        pos = 0
        base = self.offset
        while pos < len(chunk) and len(lines) < max_lines:
            newline = chunk.find(b"\n", pos, pos + MAX_LOG_LINE + 1)
            if newline >= 0 and newline - pos <= MAX_LOG_LINE:
                piece, nxt, last = chunk[pos:newline], newline + 1, newline
            elif len(chunk) - pos >= MAX_LOG_LINE:  # too long for one message: send it in pieces
                piece, nxt, last = chunk[pos : pos + MAX_LOG_LINE], pos + MAX_LOG_LINE, pos + MAX_LOG_LINE - 1
            elif at_end and self._flush_partial(size):
                piece, nxt, last = chunk[pos:], len(chunk), len(chunk) - 1
            else:
                break  # the rest of this line has not been written yet
            at = self._time(base + last)
            if at >= self.since:
                lines.append(Line(piece, at))
            pos = nxt
        return lines, base + pos

    def _flush_partial(self, size: int) -> bool:
        """Send a last line without its newline? At the end of a read without follow, yes; with
        follow, once the file stopped growing for PARTIAL_FLUSH seconds."""
        if not self.follow:
            return True
        now = self.clock()
        if self._stalled is None or self._stalled[0] != size:
            self._stalled = (size, now)
            return False
        return now - self._stalled[1] >= PARTIAL_FLUSH


# -- serving subscriptions ---------------------------------------------------------------------------
class _Stop(Exception):
    """Stop serving this subscription (the manager said so, or refused it)."""


@dataclass
class _Served:
    """One subscription as this agent serves it; outlives a lost stream for FORGET_AFTER."""

    id: str
    follow: bool
    tail: int
    since: float
    readers: dict[str, TaskLogReader] = field(default_factory=dict)
    job: asyncio.Task[None] | None = None
    idle_since: float = 0.0  # monotonic time its stream went away; 0 while served
    turn: int = 0  # which reader goes first in the next batch (fairness)


def check_subscription(msg: dpb.LogSubscription) -> str | None:
    """Why a subscription message cannot be served, or None. Task ids become file names."""
    if not msg.id or len(msg.id) > 128:
        return "bad subscription id"
    if msg.close:
        return None
    if len(msg.task_ids) > MAX_TASKS:
        return f"more than {MAX_TASKS} tasks"
    bad = next((t for t in msg.task_ids if not TASK_ID_RE.fullmatch(t)), None)
    if bad is not None:
        return f"bad task id {bad[:64]!r}"
    if msg.tail < -1:
        return f"bad tail {msg.tail}"
    return None


class LogAgent:
    """Serves log subscriptions from `log_dir`, and stamps the output of running tasks."""

    def __init__(
        self,
        log_dir: Path,
        running: Callable[[], Iterable[str]] = tuple,
        clock: Callable[[], float] = time.time,
        poll: float = POLL,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.running = running
        self.clock = clock
        self.poll = poll
        self._indexes: dict[str, TimeIndex] = {}
        self._subs: dict[str, _Served] = {}

    # -- timestamps ------------------------------------------------------------------------------
    def log_path(self, task_id: str) -> Path:
        return self.log_dir / f"{task_id}.log"

    def index(self, task_id: str) -> TimeIndex | None:
        index = self._indexes.get(task_id)
        if index is None:
            try:
                index = self._indexes[task_id] = TimeIndex(self.log_dir / f"{task_id}.idx")
            except OSError as exc:
                log.warning("task %s: cannot open its log index: %s", task_id, exc)
                return None
        return index

    def stamp(self) -> None:
        """Record the growth of every running task's log."""
        now = self.clock()
        for task_id in self.running():
            if not TASK_ID_RE.fullmatch(task_id):
                continue
            try:
                size = os.stat(self.log_path(task_id)).st_size
            except OSError:
                continue
            index = self.index(task_id)
            if index is not None:
                index.observe(size, now)

    def sweep(self) -> None:
        """Close indexes nobody needs, and delete those whose log is gone."""
        in_use = set(self.running()) | {t for s in self._subs.values() for t in s.readers}
        for task_id in list(self._indexes):
            if task_id not in in_use or not self.log_path(task_id).exists():
                self._indexes.pop(task_id).close()
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.log_dir):
                if entry.name.endswith(".idx") and not self.log_path(entry.name[:-4]).exists():
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    async def run_indexer(self) -> None:
        """Stamp running tasks' output every `poll` seconds, for as long as the agent runs."""
        last_sweep = time.monotonic()
        while True:
            try:
                self.stamp()
                if time.monotonic() - last_sweep >= SWEEP_EVERY:
                    last_sweep = time.monotonic()
                    self.sweep()
            except Exception:
                log.exception("stamping task logs failed")
            await asyncio.sleep(self.poll)

    def close(self) -> None:
        for served in self._subs.values():
            if served.job is not None:
                served.job.cancel()
        self._subs.clear()
        for index in self._indexes.values():
            index.close()
        self._indexes.clear()

    # -- subscriptions ---------------------------------------------------------------------------
    async def serve(self, stub: Any, session_id: str) -> None:
        """Serve log subscriptions for one session. Never returns: the session cancels it. A
        failed stream is reopened; a manager without log support is left alone."""
        backoff = Backoff(0.2, 5.0)
        while True:
            opened = time.monotonic()
            self._prune()
            call = stub.LogSubscriptions(dpb.LogSubscriptionsRequest(session_id=session_id))
            try:
                async for msg in call:
                    self._on_subscription(msg, stub, session_id)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    log.info("the manager does not stream logs: %s", exc.details())
                    await asyncio.Event().wait()  # until the session ends
                log.debug("log subscriptions stream ended: %s %s", exc.code().name, exc.details())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("log subscriptions stream failed")
            finally:
                call.cancel()
                self._pause_all()
            if time.monotonic() - opened > 10:
                backoff.reset()
            await asyncio.sleep(backoff.next())

    def _pause_all(self) -> None:
        """The stream went away: stop serving, but keep read positions for a while."""
        now = time.monotonic()
        for served in self._subs.values():
            if served.job is not None:
                served.job.cancel()
                served.job = None
            served.idle_since = served.idle_since or now

    def _on_subscription(self, msg: dpb.LogSubscription, stub: Any, session_id: str) -> None:
        why = check_subscription(msg)
        if why is not None:
            log.warning("ignoring log subscription %s: %s", msg.id[:64], why)
            return
        self._prune()
        served = self._subs.get(msg.id)
        if msg.close:
            if served is not None:
                self._drop(served)
            return
        if served is None:
            if len(self._subs) >= MAX_SUBSCRIPTIONS:
                log.warning("ignoring log subscription %s: %d already served", msg.id, MAX_SUBSCRIPTIONS)
                return
            served = self._subs[msg.id] = _Served(msg.id, msg.follow, msg.tail, msg.since)
            tail = msg.tail
        else:
            tail = -1  # tasks added to a subscription already served are new: all their lines
        for task_id in msg.task_ids:
            if task_id not in served.readers:
                served.readers[task_id] = TaskLogReader(
                    self.log_path(task_id),
                    functools.partial(self.index, task_id),
                    tail,
                    served.since,
                    served.follow,
                    self.clock,
                )
        served.idle_since = 0.0
        if served.job is None or served.job.done():
            served.job = asyncio.create_task(self._publish_loop(served, stub, session_id), name=f"logs-{msg.id}")

    def _prune(self) -> None:
        """Forget subscriptions whose stream went away long ago and that were not re-sent."""
        now = time.monotonic()
        for sub_id, served in list(self._subs.items()):
            if served.job is None and served.idle_since and now - served.idle_since > FORGET_AFTER:
                del self._subs[sub_id]

    def _drop(self, served: _Served) -> None:
        if served.job is not None and served.job is not asyncio.current_task():
            served.job.cancel()
        self._subs.pop(served.id, None)

    def _collect(self, served: _Served) -> tuple[list[pb.LogMessage], list[tuple[TaskLogReader, int]]]:
        """The next batch: lines from each reader in turn, within the batch limits."""
        messages: list[pb.LogMessage] = []
        commits: list[tuple[TaskLogReader, int]] = []
        budget = MAX_LOG_BATCH_BYTES
        items = list(served.readers.items())
        served.turn = (served.turn + 1) % max(1, len(items))
        for task_id, reader in items[served.turn :] + items[: served.turn]:
            room = MAX_LOG_BATCH - len(messages)
            if room <= 0 or budget < MAX_LOG_LINE:
                break
            lines, offset = reader.read(room, budget)
            if offset != reader.offset:
                commits.append((reader, offset))
            for line in lines:
                messages.append(pb.LogMessage(task_id=task_id, timestamp=line.timestamp, data=line.data))
                budget -= len(line.data)
        return messages, commits

    async def _publish_loop(self, served: _Served, stub: Any, session_id: str) -> None:
        """Read and publish until done (no follow), told to stop, or cancelled. The first call
        goes out at once, even empty: it tells the manager that this node answers."""
        first = True
        try:
            while True:
                messages, commits = self._collect(served)
                ahead = dict(commits)
                done = not served.follow and all(
                    r.gone or (r.limit is not None and ahead.get(r, r.offset) >= r.limit)
                    for r in served.readers.values()
                )
                if messages or first or done:
                    await self._publish(stub, session_id, served.id, messages, done)
                    first = False
                for reader, offset in commits:
                    reader.commit(offset)
                if done:
                    break
                if not commits:
                    await asyncio.sleep(self.poll)
        except _Stop:
            pass
        except Exception:
            log.exception("serving log subscription %s failed", served.id)
        self._drop(served)

    async def _publish(
        self, stub: Any, session_id: str, sub_id: str, messages: list[pb.LogMessage], done: bool
    ) -> None:
        """One PublishLogs call, retried on transient failures; raises _Stop when to give up."""
        request = dpb.PublishLogsRequest(session_id=session_id, subscription_id=sub_id, messages=messages, done=done)
        backoff = Backoff.schedule(PUBLISH_RETRIES)
        while True:
            try:
                reply = await stub.PublishLogs(request, timeout=PUBLISH_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                transient = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                delay = backoff.next()
                if not transient or backoff.exhausted:
                    log.warning(
                        "publishing logs of subscription %s failed: %s %s", sub_id, exc.code().name, exc.details()
                    )
                    raise _Stop from None
                await asyncio.sleep(delay)
                continue
            if reply.stop:
                raise _Stop
            return
