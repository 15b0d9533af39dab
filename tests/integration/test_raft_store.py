"""The Raft node and its LMDB store in-process: log compaction, snapshots, restart and replay."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from tests.integration.harness import free_port
from tests.waiting import wait_for
from warren import commands
from warren.manager import journal
from warren.manager import raft as raft_module
from warren.manager.raft import RAFT_MIN_TIMEOUT, RaftNode, RaftStartError
from warren.manager.raft_snapshots import SnapshotFile
from warren.manager.store import Store, open_environment
from warren.model import Service, ServiceSpec

pytestmark = pytest.mark.integration


class Member:
    def __init__(self, data: Path, port: int, elect_now: bool = False) -> None:
        self.data = data
        self.store = Store(open_environment(data / "db"))
        self.raft = RaftNode(f"127.0.0.1:{port}", [], data, "test-secret", self.store, elect_now=elect_now)
        assert self.raft.wait_leader(10)

    def close(self) -> None:
        self.raft.destroy_synchronous()  # its thread must be gone before the journal closes
        self.store.env.close()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def member(tmp_path: Path, port: int) -> Iterator[Member]:
    m = Member(tmp_path / "a", port)
    yield m
    m.close()


def test_a_lone_member_creating_its_cluster_elects_itself_without_waiting(tmp_path: Path, port: int) -> None:
    """No other member exists to hear from or to depose, so the election timeout would only
    delay the new cluster: a member that waited it out could not lead before RAFT_MIN_TIMEOUT."""
    data = tmp_path / "a"
    store = Store(open_environment(data / "db"))
    raft = RaftNode(f"127.0.0.1:{port}", [], data, "test-secret", store, elect_now=True)
    try:
        assert raft.wait_leader(RAFT_MIN_TIMEOUT * 0.75)
        assert _create(raft, 0).ok
    finally:
        raft.destroy_synchronous()
        store.env.close()


def test_a_lone_member_commits_at_once_not_when_its_poller_next_times_out(
    tmp_path: Path, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone member commits an entry in the tick after the one that appended it. The poller
    would wait a whole tick period for that tick: with a period of a minute, no write could
    commit within its 5 s timeout, nor the thread stop at once, unless they wake it (ADR 82)."""
    monkeypatch.setattr(raft_module, "TICK_PERIOD", 60.0)
    data = tmp_path / "a"
    store = Store(open_environment(data / "db"))
    raft = RaftNode(f"127.0.0.1:{port}", [], data, "test-secret", store, elect_now=True)
    try:
        assert raft.wait_leader(RAFT_MIN_TIMEOUT)
        assert all(_create(raft, i).ok for i in range(20))
        assert len(store.state.services) == 20
    finally:
        raft.destroy_synchronous()
        store.env.close()


def _create(raft: RaftNode, i: int) -> commands.Result:
    return raft.propose(commands.CreateService(Service(id=f"id{i}", spec=ServiceSpec(name=f"s{i}", image="x"))))


def test_compaction_bounds_the_journal_and_restart_restores_everything(member: Member, port: int) -> None:
    for i in range(200):
        assert _create(member.raft, i).ok
    journal_before = member.raft.getStatus()["log_len"]
    assert journal_before >= 200
    member.raft.forceLogCompaction()
    wait_for(lambda: member.raft.getStatus()["log_len"] < 10, message="the journal to be compacted")
    assert (member.data / "raft-snapshot").stat().st_size > 0
    for i in range(200, 220):
        assert _create(member.raft, i).ok
    applied = member.store.applied_index
    member.close()

    again = Member(member.data, port)
    try:
        assert again.store.applied_index >= applied
        assert sorted(again.store.state.services) == sorted(f"id{i}" for i in range(220))
        assert _create(again.raft, 220).ok  # and it keeps working
        assert len(again.store.state.services) == 221
    finally:
        again.close()
        member.raft = again.raft  # the fixture's close() must not close twice
        member.store = again.store
        member.close = lambda: None  # type: ignore[method-assign]


def test_snapshot_restores_an_empty_store(member: Member, tmp_path: Path) -> None:
    """What a follower does with a snapshot sent by the leader: replace its state with it."""
    for i in range(30):
        assert _create(member.raft, i).ok
    member.raft.forceLogCompaction()
    wait_for(lambda: (member.data / "raft-snapshot").exists(), message="a snapshot file")
    snapshot = msgspec.msgpack.decode((member.data / "raft-snapshot").read_bytes(), type=SnapshotFile)
    assert len(snapshot.state.services) == 30
    assert snapshot.cluster == [f"127.0.0.1:{member.raft.selfNode.port}"]

    fresh = Store(open_environment(tmp_path / "fresh"))
    seen: list = []
    fresh.watch(lambda index, changes: seen.append((index, changes)))
    fresh.restore(snapshot.state)
    assert seen == [(snapshot.state.applied_index, None)]  # watchers are told to resynchronise
    assert sorted(fresh.state.services) == sorted(member.store.state.services)
    fresh.env.close()
    reopened = Store(open_environment(tmp_path / "fresh"))  # and it was persisted
    assert reopened.applied_index == snapshot.state.applied_index
    assert reopened.state.service_by_name("s7") is not None
    reopened.env.close()


def test_a_failing_command_is_an_error_result_not_a_wedged_log(member: Member) -> None:
    assert _create(member.raft, 1).ok
    duplicate = _create(member.raft, 1)
    assert not duplicate.ok and duplicate.code == "already_exists"
    assert _create(member.raft, 2).ok  # the log moves on


def test_replay_after_restart_skips_applied_entries(member: Member, port: int) -> None:
    assert _create(member.raft, 0).ok
    for i in range(1, 21):  # each update bumps the version: a replayed one would bump it again
        spec = ServiceSpec(name="s0", image="x", env={"N": str(i)})
        assert member.raft.propose(commands.UpdateService("id0", spec, at=float(i))).ok
    assert member.store.state.services["id0"].version == 21
    member.close()
    again = Member(member.data, port)
    try:
        # The journal still holds every entry: PySyncObj replays them, the store skips them.
        assert again.raft.getStatus()["log_len"] > 20
        service = again.store.state.services["id0"]
        assert (service.version, service.spec.env) == (21, {"N": "20"})
    finally:
        again.close()
        member.close = lambda: None  # type: ignore[method-assign]


def test_crash_between_snapshot_and_journal_trim_loses_nothing(
    member: Member, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PySyncObj renames the snapshot, then trims the journal a tick later: a crash in between
    used to make it clear the journal and silently skip every new write after the restart."""
    for i in range(30):
        assert _create(member.raft, i).ok
    monkeypatch.setattr(journal.LmdbJournal, "deleteEntriesTo", lambda self, entry_to: None)  # "crash" first
    member.raft.forceLogCompaction()
    wait_for(lambda: (member.data / "raft-snapshot").exists(), message="a snapshot file")
    for i in range(30, 40):
        assert _create(member.raft, i).ok
    member.close()
    monkeypatch.undo()

    again = Member(member.data, port)
    try:
        assert len(again.store.state.services) == 40
        for i in range(40, 45):
            assert _create(again.raft, i).ok, "a write after the restart was skipped"
        assert len(again.store.state.services) == 45
    finally:
        again.close()
        member.close = lambda: None  # type: ignore[method-assign]


def test_refuses_to_start_when_the_log_is_behind_the_state(tmp_path: Path, port: int) -> None:
    data = tmp_path / "m"
    m = Member(data, port)
    for i in range(5):
        assert _create(m.raft, i).ok
    m.close()
    env = open_environment(data / "db")
    raft_log = env.open_db(b"raft_log")
    with env.begin(write=True) as txn:
        txn.drop(raft_log, delete=False)  # the log lost what the state applied
    env.close()
    store = Store(open_environment(data / "db"))
    try:
        with pytest.raises(RaftStartError, match="refusing to start"):
            RaftNode(f"127.0.0.1:{port}", [], data, "test-secret", store)
    finally:
        store.env.close()


def test_concurrent_proposals_share_entries_and_keep_their_own_results(member: Member, port: int) -> None:
    """Group commit: proposals made together travel as one Batch entry, are applied in order
    (the second create of a name sees the first), and each caller gets its own result."""

    async def propose_all() -> list[commands.Result]:
        creates = [
            commands.CreateService(Service(id=f"id{i}", spec=ServiceSpec(name=f"s{i % 40}", image="x")))
            for i in range(60)
        ]
        return await asyncio.gather(*(member.raft.propose_async(c) for c in creates))

    before = member.store.applied_index
    results = asyncio.run(propose_all())
    assert [r.ok for r in results] == [True] * 40 + [False] * 20
    assert all(r.code == "already_exists" for r in results[40:])
    assert sorted(member.store.state.services) == sorted(f"id{i}" for i in range(40))
    assert member.store.applied_index - before < 60  # fewer entries than writes
    applied = member.store.applied_index
    member.close()

    again = Member(member.data, port)  # the batch was durable: a restart has all of it
    try:
        assert again.store.applied_index >= applied
        assert sorted(again.store.state.services) == sorted(f"id{i}" for i in range(40))
    finally:
        again.close()
        member.close = lambda: None  # type: ignore[method-assign]


def test_a_follower_log_never_ends_before_what_its_store_applied(tmp_path: Path) -> None:
    """PySyncObj deletes a follower's entries after prevLogIdx on every append and re-adds
    them; a crash in between must not leave applied (committed) entries missing on disk."""
    env = open_environment(tmp_path / "db")
    applied = 8
    log = journal.LmdbJournal(env, tmp_path, applied=lambda: applied)
    for index in range(1, 11):
        log.add(b"cmd%d" % index, index, 1)
    log.deleteEntriesFrom(5)  # positions 5.. = indexes 6..10, as PySyncObj does
    assert log.last_index() == 5  # what PySyncObj sees in memory
    # ... and a crash here: the journal read back holds every applied entry, not the others.
    reopened = journal.LmdbJournal(env, tmp_path)
    assert [entry[1] for entry in reopened[:]] == list(range(1, 9))
    assert reopened[7] == (b"cmd8", 8, 1)
    env.close()


def test_followers_are_never_sent_again_what_they_already_appended(tmp_path: Path) -> None:
    """A leader sends appends back to back; a follower's acceptance of an older one must not make
    it send the newer ones again, which the follower would delete and re-write (ADR 87)."""
    ports = [free_port() for _ in range(3)]
    addrs = [f"127.0.0.1:{p}" for p in ports]
    stores = [Store(open_environment(tmp_path / f"m{i}" / "db")) for i in range(3)]
    nodes = [
        RaftNode(addr, [a for a in addrs if a != addr], tmp_path / f"m{i}", "test-secret", stores[i])
        for i, addr in enumerate(addrs)
    ]
    try:
        wait_for(lambda: any(n.is_leader for n in nodes), timeout=20, message="a leader")
        leader = next(n for n in nodes if n.is_leader)
        rewritten = [0, 0, 0]  # entries each member deleted to write them again
        for i, node in enumerate(nodes):
            log = node._SyncObj__raftLog  # type: ignore[attr-defined]
            log.deleteEntriesFrom = _counting_deletes(log, rewritten, i)

        async def stream() -> None:
            # Waves of concurrent writes: entries leave one after another, faster than the
            # followers answer.
            for wave in range(40):
                names = [f"s{wave}-{i}" for i in range(8)]
                creates = [commands.CreateService(Service(id=n, spec=ServiceSpec(name=n, image="x"))) for n in names]
                assert all(r.ok for r in await asyncio.gather(*(leader.propose_async(c) for c in creates)))

        asyncio.run(stream())
        last = stores[nodes.index(leader)].applied_index
        wait_for(lambda: all(s.applied_index >= last for s in stores), timeout=20, message="every member applied all")
        assert all(len(s.state.services) == 320 for s in stores)
        assert rewritten == [0, 0, 0]
    finally:
        for node in nodes:
            node.destroy_synchronous()
        for store in stores:
            store.env.close()


def _counting_deletes(log: journal.LmdbJournal, counts: list[int], i: int) -> Callable[[int], None]:
    delete = log.deleteEntriesFrom

    def counting(entry_from: int) -> None:
        counts[i] += len(log[entry_from:])
        delete(entry_from)

    return counting
