"""Task log rotation by copy-truncate (ADR 62): sizes stay bounded, the copies shift and drop,
the arrival-time index goes along, and a follow reader goes on in the new file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from warren.agent.logfiles import TaskLogReader, TimeIndex
from warren.agent.logrotation import Rotation, rotate_if_due, rotated, task_files
from warren.agent.logs import LogAgent


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _append(fd: int, first: int, count: int) -> int:
    for i in range(first, first + count):
        os.write(fd, f"line {i:06d} {'x' * 40}\n".encode())
    return first + count


def test_a_log_past_max_size_is_copied_and_truncated_with_its_index(tmp_path: Path) -> None:
    path = tmp_path / "t1.log"
    writer = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # as the runtimes open it
    index = TimeIndex(tmp_path / "t1.idx")
    rotation = Rotation(max_size=4096, max_files=3)
    try:
        n = _append(writer, 0, 50)
        index.observe(path.stat().st_size, 100.0)
        assert not rotate_if_due(path, index, rotation, 101.0)  # under max_size: nothing
        n = _append(writer, n, 50)  # now over 4 KiB
        size = path.stat().st_size
        assert rotate_if_due(path, index, rotation, 102.0)
        assert path.stat().st_size == 0
        assert rotated(path, 1).stat().st_size == size
        assert rotated(path, 1).read_bytes().startswith(b"line 000000")
        copy = TimeIndex(rotated(tmp_path / "t1.idx", 1))
        assert copy.records(0, copy.count) == [(size // 2, 100.0), (size, 102.0)]  # when each byte came
        copy.close()
        assert index.count == 0 and index.generation == 1
        # O_APPEND: the writer's next line lands at the start of the truncated file
        _append(writer, n, 1)
        assert path.read_bytes().startswith(f"line {n:06d}".encode())
    finally:
        os.close(writer)
        index.close()


def test_copies_shift_and_the_oldest_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "t2.log"
    writer = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    rotation = Rotation(max_size=4096, max_files=3)
    try:
        n = 0
        for _ in range(5):
            n = _append(writer, n, 100)
            assert rotate_if_due(path, None, rotation, 0.0)
        names = sorted(p.name for p in task_files(path))
        assert names == ["t2.log.1", "t2.log.2"]  # max_files counts the live file
        newest = int(rotated(path, 1).read_bytes().split(b"\n")[0].split()[1])
        older = int(rotated(path, 2).read_bytes().split(b"\n")[0].split()[1])
        assert (older, newest) == (300, 400)
    finally:
        os.close(writer)


def test_one_file_only_truncates(tmp_path: Path) -> None:
    path = tmp_path / "t3.log"
    path.write_bytes(b"y\n" * 5000)
    assert rotate_if_due(path, None, Rotation(max_size=4096, max_files=1), 0.0)
    assert path.stat().st_size == 0 and task_files(path) == []


def test_a_file_far_past_max_size_keeps_only_its_newest_lines(tmp_path: Path) -> None:
    """The agent was down while the task wrote: the copy holds max_size bytes from a line start."""
    path = tmp_path / "t4.log"
    with open(path, "wb") as f:
        for i in range(10_000):
            f.write(f"line {i:06d} {'x' * 40}\n".encode())
    assert rotate_if_due(path, None, Rotation(max_size=8192, max_files=2), 0.0)
    copy = rotated(path, 1).read_bytes()
    assert len(copy) <= 8192
    assert copy.startswith(b"line ") and copy.endswith(b"line 009999 " + b"x" * 40 + b"\n")


def test_the_agent_poll_keeps_a_chatty_log_bounded_and_a_follower_reads_on(tmp_path: Path) -> None:
    clock = Clock()
    agent = LogAgent(tmp_path, running=lambda: ["t5"], clock=clock, rotation=Rotation(4096, 3))
    path = agent.log_path("t5")
    writer = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    reader = TaskLogReader(path, lambda: agent.index("t5"), tail=-1, since=0.0, follow=True, clock=clock)
    seen: list[bytes] = []
    try:
        n = 0
        for _ in range(40):
            n = _append(writer, n, 20)  # ~1 KiB a poll
            clock.now += 0.1
            lines, offset = reader.read(10_000, 1 << 20)
            reader.commit(offset)
            seen += [line.data for line in lines]
            agent.stamp()
            total = sum(
                p.stat().st_size for p in [path, *task_files(path)] if p.name.endswith(".log") or ".log." in p.name
            )
            assert total <= 3 * 4096 + 2048
        lines, offset = reader.read(10_000, 1 << 20)
        seen += [line.data for line in lines]
        assert len(task_files(path)) == 4  # .log.1, .log.2 and their indexes
        # the follower read every line, in order: it reads each poll, before the rotation
        assert [int(s.split()[1]) for s in seen] == list(range(n))
    finally:
        os.close(writer)
        agent.close()


def test_sweep_removes_the_copies_of_a_deleted_task(tmp_path: Path) -> None:
    agent = LogAgent(tmp_path, rotation=Rotation(4096, 3))
    path = agent.log_path("t6")
    path.write_bytes(b"z\n" * 4000)
    assert rotate_if_due(path, agent.index("t6"), agent.rotation or Rotation(), 0.0)
    assert task_files(path)
    agent.sweep()
    assert task_files(path)  # the task's live log is still there
    path.unlink()
    agent.sweep()
    assert task_files(path) == []
    agent.close()


def _numbers(reader: TaskLogReader, rounds: int = 50) -> list[int]:
    out: list[int] = []
    for _ in range(rounds):
        lines, offset = reader.read(10_000, 1 << 20)
        reader.commit(offset)
        out += [int(line.data.split()[1]) for line in lines]
        if reader.finished:
            break
    return out


def test_a_tail_the_live_file_cannot_fill_starts_in_the_copy(tmp_path: Path) -> None:
    path = tmp_path / "t7.log"
    writer = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    index = TimeIndex(tmp_path / "t7.idx")
    try:
        n = _append(writer, 0, 100)
        assert rotate_if_due(path, index, Rotation(4096, 3), 5.0)
        n = _append(writer, n, 2)
        reader = TaskLogReader(path, lambda: index, tail=5, since=0.0, follow=False)
        assert _numbers(reader) == [97, 98, 99, 100, 101]
        assert reader.earlier is None  # the copy's reader and index were closed once read
        reader = TaskLogReader(path, lambda: index, tail=2, since=0.0, follow=False)
        assert _numbers(reader) == [100, 101] and reader.earlier is None  # the live file sufficed
    finally:
        os.close(writer)
        index.close()


def test_readers_caught_by_a_rotation_read_the_rest_from_the_copy(tmp_path: Path) -> None:
    path = tmp_path / "t8.log"
    writer = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    index = TimeIndex(tmp_path / "t8.idx")
    try:
        n = _append(writer, 0, 10)
        follower = TaskLogReader(path, lambda: index, tail=-1, since=0.0, follow=True)
        history = TaskLogReader(path, lambda: index, tail=-1, since=0.0, follow=False)
        assert _numbers(follower, rounds=1) == list(range(10))
        n = _append(writer, n, 90)  # the follower lags 90 lines behind
        assert rotate_if_due(path, index, Rotation(4096, 3), 5.0)
        n = _append(writer, n, 5)
        assert _numbers(follower, rounds=5) == list(range(10, 105))  # no gap, no repeat
        assert _numbers(history) == list(range(10))  # what was there when it was asked, once
    finally:
        os.close(writer)
        index.close()


def test_the_rotation_settings_survive_the_agent_re_execution(tmp_path: Path) -> None:
    """`worker start` re-executes the agent with options_argv: the limits must come through."""
    from warren.agent import settings
    from warren.agent.options import AgentOptions, options_argv, parse_options

    options = AgentOptions(tmp_path, [], log_max_size=300_000, log_max_files=5)
    again = parse_options(options_argv(options))
    assert (again.log_max_size, again.log_max_files) == (300_000, 5)
    saved = settings.resolve(tmp_path, log_max_size=8192, log_max_files=1)
    assert (saved.log_max_size, saved.log_max_files) == (8192, 1)
    for size, files in ((1024, 3), (8192, 0), (8192, 101)):
        with pytest.raises(settings.SettingsError, match="--log-max"):
            settings.resolve(tmp_path, log_max_size=size, log_max_files=files)


def test_history_and_long_tails_read_every_copy_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "t9.log"
    writer = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    index = TimeIndex(tmp_path / "t9.idx")
    try:
        n = 0
        for _ in range(3):  # three rotations of 100 lines: .log.3 is dropped (max 4 files: .1 .. .3)
            n = _append(writer, n, 100)
            assert rotate_if_due(path, index, Rotation(4096, 4), 5.0)
        n = _append(writer, n, 10)
        everything = TaskLogReader(path, lambda: index, tail=-1, since=0.0, follow=False)
        assert _numbers(everything) == list(range(310))
        long_tail = TaskLogReader(path, lambda: index, tail=150, since=0.0, follow=False)
        assert _numbers(long_tail) == list(range(160, 310))  # 10 live, 100 in .1, 40 in .2
        assert long_tail.earlier is None and everything.earlier is None
    finally:
        os.close(writer)
        index.close()
