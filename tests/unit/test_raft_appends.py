"""Appends written together (warren/manager/journal.py, raft_appends.py, ADR 90): a leader's
entries of a tick in one transaction, once they are sent; a follower's before it answers; and
entries that cannot be written dropped, with the leader stepping down."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest
from pysyncobj import FAIL_REASON, SyncObj
from pysyncobj.fast_queue import FastQueue

from warren.manager.journal import LmdbJournal, UnwrittenEntries
from warren.manager.raft import RaftNode
from warren.manager.raft_appends import JournalAppends
from warren.manager.raft_peers import FOLLOWER, LEADER
from warren.manager.store import open_environment


@pytest.fixture
def env(tmp_path: Path) -> Iterator[lmdb.Environment]:
    opened = open_environment(tmp_path / "db", metasync=False)
    yield opened
    opened.close()


def _on_disk(env: lmdb.Environment) -> list[int]:
    """The indexes of the entries the disk holds, read in a transaction of its own."""
    with env.begin(db=env.open_db(b"raft_log")) as txn:
        return [int.from_bytes(key, "big") for key, _value in txn.cursor()]


def test_appends_made_together_reach_the_disk_in_one_transaction_on_the_way_out(
    env: lmdb.Environment, tmp_path: Path
) -> None:
    journal = LmdbJournal(env, tmp_path)
    journal.add(b"a", 1, 1)
    transactions = env.info()["last_txnid"]
    with journal.appending_together():
        journal.add(b"b", 2, 1)
        with journal.appending_together():  # nested: the outer one writes
            journal.add(b"c", 3, 1)
        assert journal.last_index() == 3  # in the log at once, for PySyncObj to send
        assert _on_disk(env) == [1]
    assert _on_disk(env) == [1, 2, 3] and env.info()["last_txnid"] == transactions + 1
    assert [entry[:2] for entry in LmdbJournal(env, tmp_path)[:]] == [(b"a", 1), (b"b", 2), (b"c", 3)]


def test_write_appends_writes_what_was_appended_so_far(env: lmdb.Environment, tmp_path: Path) -> None:
    journal = LmdbJournal(env, tmp_path)
    with journal.appending_together():
        journal.add(b"a", 1, 1)
        journal.write_appends()  # what a follower does before it answers
        assert _on_disk(env) == [1]
        journal.add(b"b", 2, 1)
    assert _on_disk(env) == [1, 2]


def test_appends_that_cannot_be_written_are_dropped_from_the_log(
    env: lmdb.Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = LmdbJournal(env, tmp_path)
    journal.add(b"a", 1, 1)

    def full(*args: Any, **kwargs: Any) -> None:
        raise lmdb.MapFullError("mdb_put: MDB_MAP_FULL")

    with pytest.raises(UnwrittenEntries) as unwritten, journal.appending_together():
        journal.add(b"b", 2, 1)
        journal.add(b"c", 3, 1)
        monkeypatch.setattr(journal, "_env", _FailingPuts(env, full))
    assert (unwritten.value.first_index, unwritten.value.count) == (2, 2)
    assert journal.last_index() == 1 and _on_disk(env) == [1]


class _FailingPuts:
    """An environment whose write transactions fail at their first put."""

    def __init__(self, env: lmdb.Environment, fail: Any) -> None:
        self._env, self._fail = env, fail

    def begin(self, write: bool = False, **kwargs: Any) -> Any:
        txn = self._env.begin(write=write, **kwargs)
        return _FailingTxn(txn, self._fail) if write else txn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


class _FailingTxn:
    def __init__(self, txn: lmdb.Transaction, fail: Any) -> None:
        self._txn, self.put = txn, fail

    def __enter__(self) -> _FailingTxn:
        return self

    def __exit__(self, *exc: object) -> None:
        self._txn.abort()


class _Member(JournalAppends):
    """SyncObj's side of the mixin, recorded: what it appended, sent and answered, in order."""

    def __init__(self, journal: LmdbJournal, env: lmdb.Environment, state: int) -> None:
        self._journal = journal
        self._env = env
        self._SyncObj__raftState = state
        self._SyncObj__raftLeader = None
        self._SyncObj__commandsWaitingCommit: dict[int, list[tuple[int, Any]]] = {}
        self._SyncObj__commandsQueue = FastQueue(0)
        self.arriving: list[bytes] = []  # proposals that arrive while the first one is appended
        self.events: list[tuple[str, list[int]]] = []  # (what, the disk's indexes at the time)

    def _SyncObj__setState(self, state: int) -> None:  # type: ignore[override]
        self._SyncObj__raftState = state


class _Base:
    """Stands for SyncObj after the mixin in the method resolution order."""

    def _checkCommandsToApply(self: Any) -> None:
        while True:  # as PySyncObj does: each queued proposal appended, then sent
            try:
                command = self._SyncObj__commandsQueue.get_nowait()
            except queue.Empty:
                return
            self._journal.add(command, self._journal.last_index() + 1, 1)
            self._SyncObj__sendAppendEntries()
            for late in self.arriving:  # put in by the event loop while the send let the GIL go
                self._SyncObj__commandsQueue.put_nowait(late)
            self.arriving = []

    def _SyncObj__sendAppendEntries(self: Any) -> None:
        self.events.append(("send", _on_disk(self._env)))

    def _SyncObj__onMessageReceived(self: Any, node: object, message: dict[str, Any]) -> None:
        for i, command in enumerate(message.get("entries", [])):
            self._journal.add(command, message["prevLogIdx"] + 1 + i, 1)
        self._SyncObj__sendNextNodeIdx(node, success=True)

    def _SyncObj__sendNextNodeIdx(self: Any, node: object, **kwargs: Any) -> None:
        self.events.append(("answer", _on_disk(self._env)))


class _Recorded(_Member, _Base):
    pass


def test_a_leader_sends_a_ticks_entries_in_one_append_before_they_are_written(
    env: lmdb.Environment, tmp_path: Path
) -> None:
    leader = _Recorded(LmdbJournal(env, tmp_path), env, LEADER)
    for command in (b"a", b"b", b"c"):
        leader._SyncObj__commandsQueue.put_nowait(command)
    leader._checkCommandsToApply()
    assert leader.events == [("send", [])]  # one append for the three queued, before the fsync
    assert _on_disk(env) == [1, 2, 3]
    leader._checkCommandsToApply()  # nothing new: no append beyond the heartbeats
    assert leader.events == [("send", [])]


def test_a_leader_sends_the_last_queued_entry_at_once(env: lmdb.Environment, tmp_path: Path) -> None:
    """Its send lets the GIL go, and proposals that come meanwhile are appended in the same tick."""
    leader = _Recorded(LmdbJournal(env, tmp_path), env, LEADER)
    leader._SyncObj__commandsQueue.put_nowait(b"a")
    leader.arriving = [b"b"]
    leader._checkCommandsToApply()
    assert leader.events == [("send", []), ("send", [])] and _on_disk(env) == [1, 2]


def test_a_follower_answers_an_append_once_its_entries_are_written(env: lmdb.Environment, tmp_path: Path) -> None:
    follower = _Recorded(LmdbJournal(env, tmp_path), env, FOLLOWER)
    follower._SyncObj__onMessageReceived("leader", {"type": "append_entries", "prevLogIdx": 0, "entries": [b"a", b"b"]})
    assert follower.events == [("answer", [1, 2])]


def test_a_follower_that_cannot_write_an_append_does_not_answer_it(
    env: lmdb.Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = LmdbJournal(env, tmp_path)
    follower = _Recorded(journal, env, FOLLOWER)

    def full(*args: Any, **kwargs: Any) -> None:
        raise lmdb.DiskError("mdb_put: no space left on device")

    monkeypatch.setattr(journal, "_env", _FailingPuts(env, full))
    follower._SyncObj__onMessageReceived("leader", {"type": "append_entries", "prevLogIdx": 0, "entries": [b"a"]})
    assert follower.events == [] and journal.last_index() == 0  # the leader sends it again


def test_a_leader_that_cannot_write_what_it_sent_steps_down(
    env: lmdb.Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = LmdbJournal(env, tmp_path)
    leader = _Recorded(journal, env, LEADER)
    leader._SyncObj__raftLeader = "me"
    heard: list[tuple[Any, int]] = []
    leader._SyncObj__commandsWaitingCommit = {1: [(1, lambda res, err: heard.append((res, err)))]}

    def full(*args: Any, **kwargs: Any) -> None:
        raise lmdb.MapFullError("mdb_put: MDB_MAP_FULL")

    monkeypatch.setattr(journal, "_env", _FailingPuts(env, full))
    leader._SyncObj__commandsQueue.put_nowait(b"a")
    leader._checkCommandsToApply()
    # The followers may have it and commit it under the next leader: the outcome is unknown.
    assert heard == [(None, FAIL_REASON.UNKNOWN_OUTCOME)]
    assert leader._SyncObj__raftState == FOLLOWER and leader._SyncObj__raftLeader is None
    assert journal.last_index() == 0


def test_the_raft_node_appends_through_it() -> None:
    # SyncObj calls these through self, by their mangled names: ours must be found first, and
    # SyncObj must still have what they replace (the pinned version).
    for name in ("_checkCommandsToApply", "_SyncObj__sendAppendEntries", "_SyncObj__sendNextNodeIdx"):
        assert getattr(RaftNode, name) is getattr(JournalAppends, name)
        assert hasattr(SyncObj, name)
    assert RaftNode.__mro__.index(JournalAppends) < RaftNode.__mro__.index(SyncObj)
    # How it sees that more proposals are queued: PySyncObj's FastQueue and its deque.
    import inspect

    assert "self.__commandsQueue = FastQueue(" in inspect.getsource(SyncObj)
    assert hasattr(FastQueue(0), "_FastQueue__queue")
