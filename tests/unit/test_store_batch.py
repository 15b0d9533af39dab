"""The store's batch: the entries of a Raft tick in one transaction, watchers told once they are
on disk, and nothing of an abandoned batch kept (warren/manager/store.py, ADR 89)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.core_sim import node
from warren import commands
from warren.manager.store import Store, open_environment
from warren.state import Change


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(open_environment(tmp_path / "db", metasync=False))
    yield opened
    opened.env.close()


def _on_disk(store: Store) -> int:
    """The applied index the disk holds, read in a transaction of its own."""
    with store.env.begin() as txn:
        raw = txn.get(b"applied_index", db=store._meta)
    return int(raw) if raw else 0


def _commit(store: Store, index: int, name: str) -> None:
    command = commands.RegisterNode(node(name))
    result, changes = commands.apply(store.state, command)
    assert result.ok, result
    store.commit(index, changes, command)


def test_a_batch_writes_its_entries_in_one_transaction_and_notifies_once_they_are_on_disk(store: Store) -> None:
    heard: list[tuple[int, int]] = []  # (index, what the disk held when the watcher heard of it)

    def watcher(index: int, changes: list[Change] | None) -> None:
        heard.append((index, _on_disk(store)))

    store.watch(watcher)
    transactions = store.env.info()["last_txnid"]
    with store.batch():
        _commit(store, 1, "n1")
        store.commit_each(2, [commands.RegisterNode(node("n2")), commands.RegisterNode(node("n3"))], commands.apply)
        # The live state moves at each entry; the disk and the watchers wait for the batch.
        assert sorted(store.state.nodes) == ["n1", "n2", "n3"] and store.applied_index == 2
        assert _on_disk(store) == 0 and heard == []
    assert heard == [(1, 2), (2, 2)]
    assert store.env.info()["last_txnid"] == transactions + 1  # one commit, one fsync
    assert [e.actor_id for e in store.events_after(None) if e.action == "join"] == ["n1", "n2", "n3"]


def test_an_abandoned_batch_leaves_the_disk_and_the_live_state_as_they_were(store: Store) -> None:
    _commit(store, 1, "n1")
    events_before = store.events_after(None)
    heard: list[int] = []
    store.watch(lambda index, changes: heard.append(index))
    transactions = store.env.info()["last_txnid"]
    with store.batch():
        _commit(store, 2, "n2")
        assert "n2" in store.state.nodes
        store.abandon_batch()  # what `_persist_in_batch` does after a write of the batch failed
        assert sorted(store.state.nodes) == ["n1"] and store.applied_index == 1
    assert store.env.info()["last_txnid"] == transactions and heard == []
    assert store.events_after(None) == events_before and store.last_event == events_before[-1]
    _commit(store, 2, "n2")  # the entry applied again, as the Raft node does, entry by entry
    assert sorted(store.state.nodes) == ["n1", "n2"] and _on_disk(store) == 2 and heard == [2]


def test_a_batch_commits_what_was_applied_when_something_else_fails_inside(store: Store) -> None:
    """A proposer's callback that raises must not undo entries that are applied and answered."""
    with pytest.raises(RuntimeError), store.batch():
        _commit(store, 1, "n1")
        raise RuntimeError("the event loop is closed")
    assert _on_disk(store) == 1 and sorted(store.state.nodes) == ["n1"]


def test_a_snapshot_taken_during_a_batch_has_the_batch_s_events_once(store: Store) -> None:
    _commit(store, 1, "n1")
    with store.batch():
        _commit(store, 2, "n2")
        during = store.dump()
    after = store.dump()
    assert during.applied_index == after.applied_index == 2
    assert during.events == after.events
    assert [e.key for e in during.events] == sorted({e.key for e in during.events})  # none twice
