"""A task's log file and its arrival-time index (ADR 14), read as lines with the time each
first showed up; the agent's log subscriptions (warren.agent.logs) serve them.

A runtime appends a task's stdout and stderr, interleaved, to `logs/<task id>.log`. Next to it
the agent keeps `logs/<task id>.idx`, the arrival-time index: fixed 16-byte records (end offset,
Unix time), each meaning "the bytes of the log before `end`, not covered by an earlier record,
were first seen at `time`". While the agent runs it looks at every running task's log every
poll and appends a record when the file grew, so a line's timestamp is the poll that first saw
its newline: at most a poll late, and stable when read again days later. Output written while
the agent was down gets the time the agent first saw it after starting. Only the last record
lives in memory; lookups read the file. The index goes with the log.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from warren.validate import MAX_LOG_LINE

PARTIAL_FLUSH = 1.0  # a last line without its newline is sent once the file stopped growing this long
TAIL_BLOCK = 64 * 1024
RECORD = struct.Struct("<Qd")  # index record: end offset, arrival time


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
        self.generation = 0  # how often the log started again (rotated or truncated) since opened

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
            self.restart()
        if size > self.covered:
            now = max(now, self.last_time)  # never backwards, even if the clock is stepped back
            os.pwrite(self._fd, RECORD.pack(size, now), self.count * RECORD.size)
            self.count += 1
            self.covered, self.last_time = size, now

    def restart(self) -> None:
        """The log starts again from its first byte (rotated, ADR 62): forget every record."""
        if self._fd < 0:
            return
        os.ftruncate(self._fd, 0)
        self.count, self.covered = 0, 0
        self.generation += 1

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


def rotated(path: Path, n: int) -> Path:
    """The n-th older copy of a log or index (ADR 62): <task>.log.1 is the newest copy."""
    return path.with_name(f"{path.name}.{n}")


def count_lines(fd: int, size: int, block: int = TAIL_BLOCK) -> int:
    """Lines in the file's first `size` bytes (a last line without its newline counts)."""
    count, pos, last = 0, 0, b"\n"
    while pos < size:
        chunk = os.pread(fd, min(block, size - pos), pos)
        if not chunk:
            break
        count += chunk.count(b"\n")
        last = chunk[-1:]
        pos += len(chunk)
    return count + (last != b"\n")


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
    Lines older than `since` are skipped.

    Rotation (ADR 62) moves the log's bytes to <task>.log.1 and starts the file again. A tail
    that the live file cannot fill takes its first lines from that copy, and a reader caught by
    a rotation reads the rest of what it had not read from the copy, then goes on in the new
    file: `earlier` is a reader on the copy, read (and committed) first."""

    def __init__(
        self,
        path: Path,
        index_for: Callable[[], TimeIndex | None] | None,
        tail: int,
        since: float,
        follow: bool,
        clock: Callable[[], float] = time.time,
        copy: tuple[Path, int] | None = None,
    ) -> None:
        self.path = path
        # A rotated copy's reader: the live log's path and which copy `path` is (n of .log.n).
        self._live, self._copy = copy if copy is not None else (path, 0)
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
        self._generation = -1  # the index's generation when last read: another means a rotation
        self.earlier: TaskLogReader | None = None
        self.owns_index = False  # a rotated copy's reader opened its index itself: close() closes it
        fd = self._open()
        if fd is None:
            self.limit = None if follow else 0
            return
        try:
            size = os.fstat(fd).st_size
            self._observe(size)
            self._rotated()
            self.offset = tail_offset(fd, size, tail)
            short = tail - count_lines(fd, size) if tail > 0 and self.offset == 0 else 0
        finally:
            os.close(fd)
        if not follow:
            self.limit = size
        if short > 0 or tail < 0:  # the rest of the tail, or all the history, is in the copies
            self._read_copy_first(tail=short if tail > 0 else -1, offset=None, limit=None)

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
        return self.finished_at(self.offset)

    def finished_at(self, offset: int) -> bool:
        """`finished`, once the position is `offset`."""
        if self.earlier is not None:
            return False
        return self.gone or (self.limit is not None and offset >= self.limit)

    def _read_copy_first(self, tail: int, offset: int | None, limit: int | None) -> None:
        """Read the next older rotated copy before going on: its last `tail` lines (and, if it
        has fewer, the copy before it first, and so on), or from `offset` up to `limit`."""
        n = self._copy + 1
        copy = rotated(self._live, n)
        if not copy.exists():
            return
        index_file = rotated(self._live.with_suffix(".idx"), n)

        def index() -> TimeIndex | None:
            if not index_file.exists():
                return None
            try:
                return TimeIndex(index_file)
            except OSError:
                return None

        older = tail if offset is None else 0  # from an offset: this copy only
        earlier = TaskLogReader(copy, index, older, self.since, follow=False, clock=self.clock, copy=(self._live, n))
        earlier.owns_index = True
        if offset is not None:
            earlier.offset = min(offset, earlier.limit or 0)
        if limit is not None and earlier.limit is not None:
            earlier.limit = min(earlier.limit, limit)
        self.earlier = earlier

    def close(self) -> None:
        """Release what the reader holds open: a rotated copy's reader and index."""
        if self.earlier is not None:
            self.earlier.close()
            self.earlier = None
        if self.owns_index and self.index is not None:
            self.index.close()
            self.index = None

    def commit(self, offset: int) -> None:
        self.offset = offset

    def _observe(self, size: int) -> None:
        if self.index is not None:
            self.index.observe(size, self.clock())

    def _rotated(self) -> bool:
        """Whether the log was rotated since the last read (ADR 62); if so, the position goes
        to the start of the new file."""
        generation = self.index.generation if self.index is not None else 0
        changed = self._generation not in (-1, generation)
        self._generation = generation
        if changed:
            self.offset, self._cursor = 0, None
        return changed

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
        """Lines from the current position, and the position after them (for commit). The
        rotated copy read first (`earlier`) commits as it reads: its lines do not come twice."""
        if self.earlier is not None:
            lines, offset = self.earlier.read(max_lines, max_bytes)
            self.earlier.commit(offset)
            if self.earlier.finished:
                self.close()
            if lines:
                return lines, self.offset
        if max_lines <= 0 or (self.gone and not self.follow):
            return [], self.offset
        fd = self._open()
        if fd is None:
            return [], self.offset
        try:
            size = os.fstat(fd).st_size
            self._observe(size)
            behind, limit = self.offset, self.limit
            if self._rotated():  # what it had not read yet is in the copy now: read it first
                self.close()
                self._read_copy_first(tail=-1, offset=behind, limit=limit)
                if not self.follow:
                    self.limit = 0  # and nothing of the new file: it came after the request
                if self.earlier is not None:
                    return [], self.offset  # the next read starts with the copy
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
