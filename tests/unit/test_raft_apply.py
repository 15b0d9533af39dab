"""Committed entries are applied a slice at a time, in order, each once (warren/manager/raft_apply.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pysyncobj import FAIL_REASON, SyncObj

from warren.manager import raft_apply
from warren.manager.raft import RaftNode
from warren.manager.raft_apply import APPLY_SLICE, BoundedApply


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Log(BoundedApply):
    """A stand-in for SyncObj's state: a log of entries (data, index, term), each taking `cost`
    seconds of the fake clock to apply."""

    def __init__(self, clock: _Clock, entries: int, cost: float) -> None:
        self.clock = clock
        self.cost = cost
        self.log = [(f"e{i}".encode(), i, 1 if i < 30 else 2) for i in range(1, entries + 1)]
        self._SyncObj__raftCommitIndex = 0
        self._SyncObj__raftLastApplied = 0
        self._SyncObj__commandsWaitingCommit = {}
        self._SyncObj__selfCodeVersion = 0
        self._SyncObj__raftState = 0  # a follower
        self.applied: list[bytes] = []
        self.reads: list[int] = []
        self.sent_at: list[int] = []  # how many entries were applied at each append sent
        self.fail_at: int | None = None  # the entry whose apply raises

    def _SyncObj__sendAppendEntries(self) -> None:  # type: ignore[override]
        self.sent_at.append(len(self.applied))

    def _SyncObj__getEntries(self, start: int, count: int) -> list[tuple[bytes, int, int]]:  # type: ignore[override]
        self.reads.append(count)
        return self.log[start - 1 : start - 1 + count]

    def _SyncObj__doApplyCommand(self, data: bytes) -> Any:  # type: ignore[override]
        if self.fail_at is not None and data == f"e{self.fail_at}".encode():
            raise OSError("the disk failed")
        self.clock.now += self.cost
        self.applied.append(data)
        return data.upper()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(raft_apply, "raft_clock", fake)
    return fake


def test_a_backlog_is_applied_a_slice_per_tick_in_order_and_once(clock: _Clock) -> None:
    node = _Log(clock, entries=40, cost=0.03)
    node._SyncObj__raftCommitIndex = 40
    per_tick = []
    while node._SyncObj__raftLastApplied < 40:
        before = len(node.applied)
        started = clock.now
        node._SyncObj__applyLogEntries()
        per_tick.append(len(node.applied) - before)
        assert clock.now - started < APPLY_SLICE + node.cost  # the tick goes on after one slice
    assert node.applied == [e[0] for e in node.log]
    assert per_tick == [4] * 10  # 4 entries of 30 ms pass the 100 ms slice
    assert max(node.reads) <= raft_apply.READ_AHEAD
    assert node.sent_at == []  # a follower tells no one


def test_a_leader_tells_its_followers_the_commit_index_before_it_applies(clock: _Clock) -> None:
    """So that they apply while it does; PySyncObj's own send after the apply is not needed."""
    node = _Log(clock, entries=40, cost=0.03)
    node._SyncObj__raftState = 2  # the leader
    node._SyncObj__raftCommitIndex = 6
    assert node._SyncObj__applyLogEntries() is False  # PySyncObj sends nothing more
    assert node.sent_at == [0] and len(node.applied) == 4
    node._SyncObj__applyLogEntries()  # the rest of the backlog: the followers knew already
    assert node.sent_at == [0, 4] and len(node.applied) == 6
    node._SyncObj__applyLogEntries()  # nothing new committed: no send of ours
    assert node.sent_at == [0, 4]


def test_nothing_past_the_commit_index_is_applied(clock: _Clock) -> None:
    node = _Log(clock, entries=40, cost=0.0)
    node._SyncObj__raftCommitIndex = 7
    node._SyncObj__applyLogEntries()
    assert node._SyncObj__raftLastApplied == 7 and node.applied == [e[0] for e in node.log[:7]]


def test_proposers_hear_of_their_entry_once_it_is_applied(clock: _Clock) -> None:
    node = _Log(clock, entries=40, cost=0.06)
    heard: list[tuple[int, Any, int]] = []
    node._SyncObj__commandsWaitingCommit = {
        2: [(1, lambda res, err: heard.append((2, res, err)))],
        31: [(1, lambda res, err: heard.append((31, res, err)))],  # proposed in term 1, entry is term 2's
    }
    node._SyncObj__raftCommitIndex = 40
    node._SyncObj__applyLogEntries()
    assert heard == [(2, b"E2", FAIL_REASON.SUCCESS)]  # entry 2 only: the slice ended at entry 2
    while node._SyncObj__raftLastApplied < 40:
        node._SyncObj__applyLogEntries()
    assert heard[1:] == [(31, None, FAIL_REASON.DISCARDED)]
    assert node._SyncObj__commandsWaitingCommit == {}


def test_an_entry_that_fails_to_apply_keeps_its_proposers_for_the_retry(clock: _Clock) -> None:
    node = _Log(clock, entries=10, cost=0.0)
    heard: list[tuple[Any, int]] = []
    node._SyncObj__commandsWaitingCommit = {3: [(1, lambda res, err: heard.append((res, err)))]}
    node._SyncObj__raftCommitIndex = 10
    node.fail_at = 3
    with pytest.raises(OSError):
        node._SyncObj__applyLogEntries()
    assert node._SyncObj__raftLastApplied == 2 and heard == []
    node.fail_at = None
    node._SyncObj__applyLogEntries()
    assert heard == [(b"E3", FAIL_REASON.SUCCESS)] and node._SyncObj__raftLastApplied == 10


def test_the_raft_node_applies_through_it() -> None:
    # SyncObj calls self.__applyLogEntries(), i.e. self._SyncObj__applyLogEntries: ours must be
    # the one found first, and SyncObj must still have the method it replaces (the pinned version).
    assert RaftNode._SyncObj__applyLogEntries is BoundedApply._SyncObj__applyLogEntries  # type: ignore[attr-defined]
    assert hasattr(SyncObj, "_SyncObj__applyLogEntries")
    for name in ("raftCommitIndex", "raftLastApplied", "commandsWaitingCommit", "selfCodeVersion", "raftState"):
        assert f"self.__{name}" in _syncobj_source()
    for method in ("getEntries", "doApplyCommand", "sendAppendEntries"):
        assert hasattr(SyncObj, f"_SyncObj__{method}")


def _syncobj_source() -> str:
    import inspect

    return inspect.getsource(SyncObj)


def test_the_time_spent_applying_is_counted_for_the_stall_report(clock: _Clock) -> None:
    """The Raft thread's stall report says how much of a stall was applying entries (ADR 83)."""
    node = _Log(clock, entries=10, cost=0.03)
    node._SyncObj__raftCommitIndex = 10
    node._SyncObj__applyLogEntries()
    node._SyncObj__applyLogEntries()
    node._SyncObj__applyLogEntries()
    assert node.applying_seconds == pytest.approx(10 * 0.03)
    node._SyncObj__applyLogEntries()  # nothing left to apply: no time counted
    assert node.applying_seconds == pytest.approx(10 * 0.03)


def test_a_stall_report_says_how_much_was_collecting_garbage_and_applying(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    from warren.manager import raft

    now, collecting = [10.0], [(0.5, 0.25, 1.0)]
    monkeypatch.setattr(raft, "raft_clock", lambda: now[0])
    monkeypatch.setattr(raft.gcpolicy, "seconds_spent", lambda: collecting[0])
    thread = SimpleNamespace(_last_tick=0.0, _tick_marks=(0.0, 0.0), applying_seconds=3.0)
    RaftNode._measure_tick(thread)  # type: ignore[arg-type]  # the first tick: marks only
    assert thread._tick_marks == (1.75, 3.0) and not caplog.records
    now[0], collecting[0], thread.applying_seconds = 12.5, (0.5, 0.25, 2.95), 3.4
    with caplog.at_level("WARNING", logger="warren.manager.raft"):
        RaftNode._measure_tick(thread)  # type: ignore[arg-type]
    assert "did not run for 2.50s (1.95s of it collecting garbage, 0.40s applying entries" in caplog.text
