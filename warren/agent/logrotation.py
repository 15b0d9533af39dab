"""Task log rotation (ADR 62): a chatty task can no longer fill the node's disk.

The runtime writes `logs/<task>.log` itself (containerd's shim through a file:// URI, the exec
runtime's child through an inherited descriptor), both with O_APPEND, and keeps writing while the
agent is down. So the agent rotates by copy-truncate, from its log poll (LogAgent.stamp): once
the file is over `max_size`, its bytes are copied to `<task>.log.1` (older copies move to .2 ...
up to max_files - 1; the oldest goes), and the file is truncated to zero. O_APPEND puts the
writer's next write at the new end, so the file simply starts again. The arrival-time index
(ADR 14) goes along: its records are copied to `<task>.idx.1` with the copy, and the live index
starts again with the file.

What it costs: bytes written between the last look at the size and the truncate are lost (a
window of microseconds, and only while a rotation happens); the copy reads and writes max_size
bytes per rotation. A file that grew far past max_size while the agent was down keeps only its
newest max_size bytes (from a line start) in the copy, so the disk stays bounded by
max_size x max_files plus what one poll lets a task write.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from warren.agent.logfiles import RECORD, TimeIndex, rotated

DEFAULT_MAX_SIZE = 10 * 1024 * 1024  # as warren.agent.settings's defaults
DEFAULT_MAX_FILES = 3
COPY_BLOCK = 1024 * 1024
CATCH_UP_ROUNDS = 3  # copies of what was appended during the copy, before truncating


@dataclass(frozen=True)
class Rotation:
    """At most `max_files` files per task (the live one and max_files - 1 copies), each rotated
    once over `max_size` bytes."""

    max_size: int = DEFAULT_MAX_SIZE
    max_files: int = DEFAULT_MAX_FILES


def index_path(log_path: Path) -> Path:
    return log_path.with_suffix(".idx")


def task_files(log_path: Path) -> list[Path]:
    """Every rotated copy of a task's log and index that exists (to delete with the task)."""
    found = []
    for base in (log_path, index_path(log_path)):
        prefix = base.name + "."
        with contextlib.suppress(OSError):
            found += [e for e in base.parent.iterdir() if e.name.startswith(prefix) and e.name[len(prefix) :].isdigit()]
    return found


def remove_task_logs(log_path: Path) -> None:
    """Delete everything a task leaves in logs/ (its live log, index and their rotated copies),
    once the task is gone. The log store's sweep would find the index and the copies orphaned,
    but only up to its period later."""
    for path in (log_path, index_path(log_path), *task_files(log_path)):
        with contextlib.suppress(OSError):
            path.unlink()


def rotate_if_due(log_path: Path, index: TimeIndex | None, rotation: Rotation, now: float) -> bool:
    """Copy-truncate `log_path` if it is over rotation.max_size; whether it did."""
    try:
        fd = os.open(log_path, os.O_RDWR)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        if size <= rotation.max_size:
            return False
        _rotate(fd, log_path, size, index, rotation, now)
    finally:
        os.close(fd)
    return True


def _rotate(fd: int, log_path: Path, size: int, index: TimeIndex | None, rotation: Rotation, now: float) -> None:
    keep = rotation.max_files > 1
    if keep:
        _shift(log_path, rotation.max_files)
        start = _line_start(fd, size - rotation.max_size) if size > rotation.max_size * 2 else 0
        copy = rotated(log_path, 1)
        tmp = copy.with_name(copy.name + ".tmp")
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            end = _copy(fd, out, start, size)
            for _ in range(CATCH_UP_ROUNDS):  # what the task wrote meanwhile goes with the copy
                grown = os.fstat(fd).st_size
                if grown <= end:
                    break
                end = _copy(fd, out, end, grown)
        finally:
            os.close(out)
    else:
        start, end = 0, os.fstat(fd).st_size
    if index is not None:
        index.observe(end, now)  # every byte copied has its arrival time before it moves
    os.ftruncate(fd, 0)
    if keep:
        os.replace(tmp, copy)
        if index is not None:
            _copy_index(index, rotated(index_path(log_path), 1), start, end)
    if index is not None:
        index.restart()


def _shift(log_path: Path, max_files: int) -> None:
    """Make room for a new .1: .1 -> .2 ..., dropping the copies past max_files - 1."""
    idx = index_path(log_path)
    for path in task_files(log_path):
        n = int(path.name.rsplit(".", 1)[1])
        if n >= max_files - 1:
            with contextlib.suppress(OSError):
                path.unlink()
    for n in range(max_files - 2, 0, -1):
        for base in (log_path, idx):
            with contextlib.suppress(FileNotFoundError):
                os.replace(rotated(base, n), rotated(base, n + 1))


def _line_start(fd: int, offset: int) -> int:
    """The first line start at or after `offset` (the copy of an oversized file starts there)."""
    chunk = os.pread(fd, 64 * 1024, offset - 1) if offset > 0 else b"\n"
    newline = chunk.find(b"\n")
    return offset + newline if newline >= 0 else offset


def _copy(src: int, dst: int, start: int, end: int) -> int:
    """Append bytes [start, end) of `src` to `dst`; the offset reached."""
    pos = start
    while pos < end:
        data = os.pread(src, min(COPY_BLOCK, end - pos), pos)
        if not data:
            break
        os.write(dst, data)
        pos += len(data)
    return pos


def _copy_index(index: TimeIndex, path: Path, start: int, end: int) -> None:
    """The records of bytes [start, end), re-based to the copy's offsets."""
    records = index.records(0, index.count)
    data = bytearray()
    for record_end, at in records:
        if record_end > start:
            data += RECORD.pack(min(record_end, end) - start, at)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(OSError):
        tmp.write_bytes(bytes(data))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
