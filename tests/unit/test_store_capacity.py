"""The capacity rules (ADR 22), the saved map size, and a store whose failed group commit leaves
its live state as the disk has it. Real LMDB environments in temporary directories."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import lmdb
import pytest

from warren import commands
from warren.manager import capacity, settings
from warren.manager.capacity import Usage
from warren.manager.store import Store, open_environment
from warren.model import Service, ServiceSpec

MiB = 1 << 20
GiB = 1 << 30


def _usage(used: int, map_size: int = 8 * GiB, disk_free: int = 100 * GiB) -> Usage:
    return Usage(map_size=map_size, used_bytes=used, file_bytes=used, disk_free_bytes=disk_free)


def test_the_reserve_is_a_twentieth_of_the_map_and_at_least_8_mib() -> None:
    assert capacity.map_reserve(8 * GiB) == 8 * GiB // 20
    assert capacity.map_reserve(32 * MiB) == 8 * MiB
    assert capacity.disk_reserve(8 * GiB) == 256 * MiB  # capped: a full disk frees up by itself
    assert capacity.disk_reserve(32 * MiB) == 8 * MiB


def test_writes_are_refused_once_the_entry_would_cut_into_the_reserve_with_what_to_do() -> None:
    limit = 8 * GiB - capacity.map_reserve(8 * GiB)
    assert capacity.refusal(_usage(limit - 2 * MiB), pending=0, cost=MiB, where="/d") is None
    assert capacity.refusal(_usage(limit - 2 * MiB), pending=MiB, cost=MiB, where="/d") is None
    reason = capacity.refusal(_usage(limit - 2 * MiB), pending=MiB + 1, cost=MiB, where="/d")
    assert reason == (
        "the state store is 94% full (7.6GiB of 8GiB): writes are refused to keep room for entries already "
        "committed; restart the managers with a larger --state-map-size"
    )
    # A smaller entry still fits where a larger one does not.
    assert capacity.refusal(_usage(limit - MiB), pending=0, cost=MiB // 2, where="/d") is None
    assert capacity.refusal(_usage(limit - MiB), pending=0, cost=2 * MiB, where="/d") is not None


def test_writes_are_refused_when_the_disk_has_less_than_its_reserve_and_the_entry_free() -> None:
    reserve = capacity.disk_reserve(8 * GiB)
    fits = _usage(MiB, disk_free=reserve + 2 * MiB)
    assert capacity.refusal(fits, pending=0, cost=MiB, where="/var/lib/warren/db") is None
    reason = capacity.refusal(fits, pending=MiB + 1, cost=MiB, where="/var/lib/warren/db")
    assert reason == (
        "the disk holding /var/lib/warren/db is full (258MiB free, 256MiB is kept in reserve): free space on it; "
        "writes resume by themselves"
    )


def test_an_entry_costs_twice_its_size_and_a_few_pages() -> None:
    assert capacity.entry_cost(0) == capacity.ENTRY_PAGES_OVERHEAD
    assert capacity.entry_cost(MiB) == 2 * MiB + capacity.ENTRY_PAGES_OVERHEAD


def test_measure_counts_the_pages_in_use_and_not_the_freed_ones(tmp_path: Path) -> None:
    env = open_environment(tmp_path / "db", 64 * MiB)
    db = env.open_db(b"raft_log")
    empty = capacity.measure(env, tmp_path / "db")
    assert empty.map_size == 64 * MiB
    with env.begin(write=True) as txn:
        for i in range(100):
            txn.put(i.to_bytes(8, "big"), b"x" * 40_000, db=db)  # overflow pages: 10 each
    full = capacity.measure(env, tmp_path / "db")
    assert 4 * MiB > full.used_bytes - empty.used_bytes > 100 * 40_000
    with env.begin(write=True) as txn:
        txn.drop(db, delete=False)
    emptied = capacity.measure(env, tmp_path / "db")
    assert emptied.used_bytes < empty.used_bytes + 64 * 1024
    assert emptied.file_bytes >= full.file_bytes  # the file keeps its size; LMDB reuses the pages
    assert emptied.disk_free_bytes > 0
    env.close()


def test_the_map_size_is_saved_and_a_given_one_replaces_it(tmp_path: Path) -> None:
    assert settings.resolve(tmp_path).state_map_size == 8 * GiB  # the default
    settings.save(tmp_path, settings.resolve(tmp_path, state_map_size=64 * MiB))
    assert json.loads((tmp_path / settings.SETTINGS_FILE).read_text()) == {"state_map_size": 64 * MiB}
    assert settings.resolve(tmp_path).state_map_size == 64 * MiB
    assert settings.resolve(tmp_path, state_map_size=128 * MiB).state_map_size == 128 * MiB


@pytest.mark.parametrize("size", [0, MiB, 32 * MiB - 1, (1 << 46) + 1])
def test_a_map_size_out_of_range_is_refused_with_the_range(tmp_path: Path, size: int) -> None:
    with pytest.raises(ValueError, match="the state map size must be between 32MiB and 64TiB"):
        settings.resolve(tmp_path, state_map_size=size)


@pytest.mark.parametrize("content", ["{", '{"state_map_size": "big"}', '{"state_map_size": 1}', "[]"])
def test_a_bad_settings_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    (tmp_path / settings.SETTINGS_FILE).write_text(content)
    with pytest.raises(settings.SettingsError, match=settings.SETTINGS_FILE):
        settings.resolve(tmp_path)


def _create(i: int, env_bytes: int = 0) -> commands.CreateService:
    env = {f"V{k}": "x" * 4000 for k in range(env_bytes // 4000)}
    return commands.CreateService(Service(id=f"id{i}", spec=ServiceSpec(name=f"s{i}", image="x", env=env)))


def test_a_group_commit_that_finds_the_map_full_leaves_the_live_state_as_the_disk_has_it(tmp_path: Path) -> None:
    """The group commit applies each command to the live state before the transaction commits;
    when the commit fails, those changes must not stay visible, or a retry would see them twice
    and readers would see writes that are on no disk."""
    store = Store(open_environment(tmp_path / "db", 4 * MiB))  # below the CLI's minimum: a unit test
    store.commit_each(1, [_create(0)], commands.apply)
    with pytest.raises(lmdb.MapFullError):
        store.commit_each(2, [_create(i, env_bytes=800_000) for i in range(1, 8)], commands.apply)
    assert sorted(store.state.services) == ["id0"]
    assert store.applied_index == 1
    assert sorted(store.state.service_names) == ["s0"]  # indexes too: they are rebuilt from the disk

    store.env.set_mapsize(32 * MiB)  # what a restart with a larger map does
    results = store.commit_each(2, [_create(i, env_bytes=800_000) for i in range(1, 8)], commands.apply)
    assert all(r.ok for r in results)  # each applied once: no "already exists"
    assert len(store.state.services) == 8
    store.env.close()


def test_a_proposal_is_charged_until_released_or_until_it_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PySyncObj never calls back for a proposal its leader dropped: such a charge must not
    refuse writes forever."""
    env = open_environment(tmp_path / "db", 64 * MiB)
    store_capacity = capacity.StoreCapacity(env, tmp_path / "db")
    first = store_capacity.reserve(MiB)
    store_capacity.reserve(2 * MiB)
    assert store_capacity.pending == 3 * MiB
    store_capacity.release(first)
    assert store_capacity.pending == 2 * MiB
    later = time.monotonic() + capacity.PENDING_TTL + 1
    monkeypatch.setattr(capacity, "time", SimpleNamespace(monotonic=lambda: later))
    assert store_capacity.pending == 0
    env.close()


def test_a_waiting_apply_refuses_every_write_with_its_reason(tmp_path: Path) -> None:
    env = open_environment(tmp_path / "db", 64 * MiB)
    store_capacity = capacity.StoreCapacity(env, tmp_path / "db")
    assert store_capacity.refusal(capacity.entry_cost(0)) is None and not store_capacity.refuses_writes()
    store_capacity.set_stalled("the disk holding /d is full: Raft entry 7 waits for free space to be applied")
    assert store_capacity.refusal(0) == store_capacity.stalled
    assert store_capacity.refuses_writes()
    env.close()
