"""The Raft node and its LMDB store in-process: a committed entry that finds the disk (a small
tmpfs) or the map full waits, instead of stopping the manager, and is applied once space returns
or after a restart with a larger map (ADR 22)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from tests.fixtures.tmpfs import fill, tmpfs
from tests.integration.harness import free_port
from tests.waiting import wait_for
from warren import commands
from warren.manager.ports import ProposalError
from warren.manager.raft import RaftNode
from warren.manager.store import Store, open_environment
from warren.model import Service, ServiceSpec

pytestmark = pytest.mark.integration

MAP_SIZE = 32 << 20


class Member:
    def __init__(self, data: Path, port: int, map_size: int = MAP_SIZE) -> None:
        self.store = Store(open_environment(data / "db", map_size))
        self.raft = RaftNode(f"127.0.0.1:{port}", [], data, "test-secret", self.store)
        assert self.raft.wait_leader(10)

    def close(self) -> None:
        self.raft.destroy_synchronous()
        self.store.env.close()


def _service(i: int, fat: bool = False) -> commands.CreateService:
    """A service; a fat one carries about 1 MiB of environment, so that its entry and its state
    each need fresh pages at the end of the LMDB file."""
    env = {f"V{k}": f"{i:04d}{k:04d}" * 500 for k in range(256)} if fat else {}
    return commands.CreateService(Service(id=f"id{i}", spec=ServiceSpec(name=f"s{i}", image="x", env=env)))


class Outcome:
    """The callback of an entry proposed directly, as one forwarded by another manager is: this
    manager's capacity check never saw it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: commands.Result | None = None
        self.reason: int | None = None

    def __call__(self, result: bytes | None, reason: int) -> None:
        self.result = commands.decode_result(result) if result else None
        self.reason = reason
        self.done.set()


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", 24 << 20) as path:
        yield path


def test_an_entry_that_finds_the_disk_full_waits_and_is_applied_once_space_returns(disk: Path) -> None:
    member = Member(disk, free_port())
    try:
        assert member.raft.propose(_service(0)).ok
        # Room for the entry in the journal, not for its state as well.
        fill(disk / "filler", leave=int(1.5 * (1 << 20)))
        outcome = Outcome()
        member.raft._apply_entry(commands.encode(_service(1, fat=True)), callback=outcome)
        wait_for(lambda: member.raft.capacity.stalled, message="the apply to wait for disk space")
        assert "is full" in member.raft.capacity.stalled
        assert not outcome.done.is_set()
        with member.store.read() as state:  # reads go on, and see no half-applied entry
            assert sorted(state.services) == ["id0"]
        with pytest.raises(ProposalError) as refused:  # writes are refused, with the reason
            member.raft.propose(_service(2))
        assert refused.value.code == "resource_exhausted"
        assert "disk" in refused.value.message

        (disk / "filler").unlink()
        assert outcome.done.wait(10), "the entry was not applied once space returned"
        assert outcome.result is not None and outcome.result.ok
        assert member.raft.capacity.stalled is None
        assert member.raft.propose(_service(2)).ok
        with member.store.read() as state:
            assert sorted(state.services) == ["id0", "id1", "id2"]
    finally:
        member.close()


def test_a_manager_stopped_while_an_entry_waits_for_space_applies_it_after_a_restart(disk: Path) -> None:
    port = free_port()
    member = Member(disk, port)
    try:
        assert member.raft.propose(_service(0)).ok
        fill(disk / "filler", leave=int(1.5 * (1 << 20)))
        member.raft._apply_entry(commands.encode(_service(1, fat=True)), callback=Outcome())
        wait_for(lambda: member.raft.capacity.stalled, message="the apply to wait for disk space")
    finally:
        member.close()  # returns: the waiting apply gives up, leaving the entry in the journal

    (disk / "filler").unlink()
    again = Member(disk, port)
    try:
        wait_for(lambda: "id1" in again.store.state.services, message="the committed entry to be replayed")
        assert again.raft.propose(_service(2)).ok
        assert sorted(again.store.state.services) == ["id0", "id1", "id2"]
    finally:
        again.close()


def _leave_room_in_the_map(env: lmdb.Environment, room: int) -> None:
    """Fill the map, from the end of its file, until `room` bytes are left: what an older
    manager, or a store that grew on a larger map, leaves behind."""
    page = env.stat()["psize"]
    end = (env.info()["last_pgno"] + 1) * page
    with env.begin(write=True) as txn:
        txn.put(b"filler", b"\0" * (MAP_SIZE - end - room), db=env.open_db(b"test_filler", txn=txn))


def test_an_entry_that_finds_the_map_full_waits_and_a_restart_with_a_larger_map_applies_it(tmp_path: Path) -> None:
    port = free_port()
    member = Member(tmp_path, port)
    try:
        assert member.raft.propose(_service(0)).ok
        _leave_room_in_the_map(member.store.env, int(1.5 * (1 << 20)))  # the entry fits, not its state too
        outcome = Outcome()
        member.raft._apply_entry(commands.encode(_service(1, fat=True)), callback=outcome)
        wait_for(lambda: member.raft.capacity.stalled, message="the apply to wait for room in the map")
        assert "larger --state-map-size" in member.raft.capacity.stalled
        with member.store.read() as state:
            assert sorted(state.services) == ["id0"]
        with pytest.raises(ProposalError, match="larger --state-map-size"):
            member.raft.propose(_service(2))
        assert not outcome.done.wait(1.0)  # it keeps waiting: only a larger map helps
    finally:
        member.close()

    again = Member(tmp_path, port, map_size=2 * MAP_SIZE)
    try:
        wait_for(lambda: "id1" in again.store.state.services, message="the committed entry to be replayed")
        assert again.raft.capacity.stalled is None
        assert again.raft.propose(_service(2)).ok
        assert sorted(again.store.state.services) == ["id0", "id1", "id2"]
    finally:
        again.close()
