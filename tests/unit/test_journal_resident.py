"""The journal holds in memory the commands of applied entries only up to RESIDENT_BYTES (ADR 91):
older ones are read back from LMDB when PySyncObj asks for them, with the same bytes, and what
is not applied yet always stays in memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from warren.manager import journal as journal_module
from warren.manager.journal import LmdbJournal
from warren.manager.store import open_environment


@pytest.fixture
def env(tmp_path: Path) -> Iterator[lmdb.Environment]:
    opened = open_environment(tmp_path / "db", metasync=False)
    yield opened
    opened.close()


def _command(idx: int) -> bytes:
    return bytes([idx % 251]) * 100  # 100 bytes, distinct by index


def _log(env: lmdb.Environment, tmp_path: Path, entries: int, applied: list[int]) -> LmdbJournal:
    log = LmdbJournal(env, tmp_path, applied=lambda: applied[0])
    for idx in range(1, entries + 1):
        log.add(_command(idx), idx, 1)
    return log


def _held(log: LmdbJournal) -> list[int]:
    """The indexes whose commands are in memory."""
    return [idx for command, idx, _ in log._entries if command is not None]


def test_applied_commands_past_the_budget_are_left_on_disk_and_read_back_the_same(
    env: lmdb.Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "RESIDENT_BYTES", 1000)  # ten commands
    applied = [30]
    log = _log(env, tmp_path, 40, applied)
    log.shed()
    # 40 held, 4,000 bytes: the 30 oldest applied ones go until 1,000 bytes are left.
    assert _held(log) == list(range(31, 41))
    assert log[0] == (_command(1), 1, 1)
    assert log[5:8] == [(_command(i), i, 1) for i in range(6, 9)]
    assert log[:] == [(_command(i), i, 1) for i in range(1, 41)]
    assert log[-1] == (_command(40), 40, 1)


def test_entries_not_applied_stay_in_memory_whatever_they_weigh(
    env: lmdb.Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "RESIDENT_BYTES", 0)
    applied = [5]
    log = _log(env, tmp_path, 20, applied)
    log.shed()
    assert _held(log) == list(range(6, 21))
    applied[0] = 12
    log.onOneSecondTimer()  # the Raft thread's timer sheds too
    assert _held(log) == list(range(13, 21))


def test_deletes_keep_the_count_of_bytes_held(
    env: lmdb.Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "RESIDENT_BYTES", 500)
    applied = [10]
    log = _log(env, tmp_path, 20, applied)
    log.shed()
    assert _held(log) == list(range(11, 21)) and log.resident_bytes == 1000  # 11-20 are not applied
    log.deleteEntriesTo(3)  # a compaction: entries 1-3 go
    assert log[0] == (_command(4), 4, 1) and log.resident_bytes == 1000
    log.deleteEntriesFrom(12)  # a follower's log cut from entry 16 on
    assert log.resident_bytes == 500 and log.last_index() == 15
    for idx in range(16, 19):  # sent again by a new leader
        log.add(_command(idx), idx, 2)
    assert log.resident_bytes == 800 and log[-1] == (_command(18), 18, 2)
    applied[0] = 16
    log.shed()
    assert _held(log) == list(range(14, 19)) and log.resident_bytes == 500
    assert log[:] == [(_command(i), i, 1 if i < 16 else 2) for i in range(4, 19)]
    log.clear()
    assert log.resident_bytes == 0 and len(log) == 0


def test_a_restart_holds_only_the_budget_of_applied_commands(
    env: lmdb.Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "RESIDENT_BYTES", 1000)
    _log(env, tmp_path, 40, [0])
    reopened = LmdbJournal(env, tmp_path, applied=lambda: 40)
    assert _held(reopened) == list(range(31, 41))
    assert reopened[:] == [(_command(i), i, 1) for i in range(1, 41)]


def test_an_entry_missing_from_the_disk_is_a_clear_error(
    env: lmdb.Environment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "RESIDENT_BYTES", 0)
    log = _log(env, tmp_path, 3, [3])
    log.shed()
    raft_log = env.open_db(b"raft_log")
    with env.begin(write=True) as txn:
        txn.delete((1).to_bytes(8, "big"), db=raft_log)
    with pytest.raises(LookupError, match="no entry 1 on disk"):
        _ = log[0]
