"""How full the manager's LMDB map and its disk are, and the refusal of writes before either is.

LMDB fails a transaction that needs a page beyond its map (MDB_MAP_FULL) or that the disk has no
room for (ENOSPC). A Raft entry that is committed must still be applied on every manager, so
writes are refused while they can still be refused: before they are proposed, as soon as what is
in use, plus what this manager has proposed and not yet applied, plus the new entry's cost, would
cut into a reserve (ADR 22). The reserve absorbs entries other managers proposed, the Raft
journal's growth, and the copy-on-write pages of a transaction.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from warren.text import format_size

MIN_RESERVE = 8 << 20
RESERVE_FRACTION = 20  # the map's reserve is 1/20 (5%) of it, and at least MIN_RESERVE
MAX_DISK_RESERVE = 256 << 20  # disk space only runs out for a while: a smaller reserve there
# What an entry of N bytes costs the store: the journal holds it, the state about as much again
# (a command carries the objects it writes), plus copy-on-write branch and meta pages.
ENTRY_PAGES_OVERHEAD = 16 * 4096
# A proposal's charge ends when its callback runs; PySyncObj never calls back for a proposal it
# dropped (a leader whose journal could not append it), so a charge also ends after this long,
# well past any proposal's timeout.
PENDING_TTL = 60.0


def map_reserve(map_size: int) -> int:
    return max(map_size // RESERVE_FRACTION, MIN_RESERVE)


def disk_reserve(map_size: int) -> int:
    return min(map_reserve(map_size), MAX_DISK_RESERVE)


def entry_cost(entry_bytes: int) -> int:
    """Bytes an entry of `entry_bytes` may take in the store until it is applied."""
    return 2 * entry_bytes + ENTRY_PAGES_OVERHEAD


@dataclass(frozen=True)
class Usage:
    map_size: int  # bytes of address space LMDB may use
    used_bytes: int  # pages in use by the Raft journal and the state (free pages excluded)
    file_bytes: int  # the data file's high-water mark (LMDB reuses freed pages below it)
    disk_free_bytes: int  # free on the data directory's filesystem, for an unprivileged writer


def refusal(usage: Usage, pending: int, cost: int, where: str) -> str | None:
    """Why a new entry costing `cost` must be refused, with what to do, or None to accept it.
    `pending`: the cost of entries this manager proposed and has not applied yet."""
    limit = usage.map_size - map_reserve(usage.map_size)
    if usage.used_bytes + pending + cost > limit:
        percent = 100 * usage.used_bytes // usage.map_size
        return (
            f"the state store is {percent}% full ({format_size(usage.used_bytes)} of "
            f"{format_size(usage.map_size)}): writes are refused to keep room for entries already "
            "committed; restart the managers with a larger --state-map-size"
        )
    # The file only grows into free disk space when no freed page inside it is reusable, but
    # which are is not known here: count the whole cost.
    reserve = disk_reserve(usage.map_size)
    if usage.disk_free_bytes < reserve + pending + cost:
        return (
            f"the disk holding {where} is full ({format_size(usage.disk_free_bytes)} free, "
            f"{format_size(reserve)} is kept in reserve): free space on it; writes resume by themselves"
        )
    return None


def measure(env: lmdb.Environment, directory: Path, handles: dict[bytes, Any] | None = None) -> Usage:
    """The environment's use, from its B-tree statistics (read transactions, no data read).
    `handles` caches the named databases' handles: LMDB forbids opening them from concurrent
    transactions, so after the first call none is opened again; callers serialise calls."""
    handles = {} if handles is None else handles
    with env.begin() as txn:
        names = [bytes(key) for key, _ in txn.cursor()]  # named databases are keys of the main one
    for name in names:
        if name not in handles:  # the first call only (StoreCapacity makes it before Raft starts)
            handles[name] = env.open_db(name, create=False)
    info = env.info()
    page = env.stat()["psize"]
    with env.begin() as txn:
        pages = 2 + _pages([env.stat()])  # the two meta pages and the main database
        pages += _pages(txn.stat(handles[name]) for name in names)
    disk = os.statvfs(directory)
    return Usage(
        map_size=info["map_size"],
        used_bytes=pages * page,
        file_bytes=(info["last_pgno"] + 1) * page,
        disk_free_bytes=disk.f_bavail * disk.f_frsize,
    )


def _pages(stats: Iterable[Mapping[str, Any]]) -> int:
    return sum(s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"] for s in stats)


class StoreCapacity:
    """The capacity check the proposing manager runs, and what its apply path reports back."""

    def __init__(self, env: lmdb.Environment, directory: Path) -> None:
        self._env = env
        self._directory = directory
        self._lock = threading.Lock()
        self._measuring = threading.Lock()
        self._handles: dict[bytes, Any] = {}
        self._pending: dict[int, tuple[int, float]] = {}  # charge id -> (cost, expiry)
        self._ids = itertools.count()
        self._stalled: str | None = None  # why the apply path is waiting, if it is

    def usage(self) -> Usage:
        with self._measuring:  # proposals, the metrics endpoint and the apply path all measure
            return measure(self._env, self._directory, self._handles)

    def refusal(self, cost: int, usage: Usage | None = None) -> str | None:
        """Why an entry costing `cost` must not be proposed now, or None. `usage`: a measure the
        caller took already."""
        stalled = self._stalled
        if stalled is not None:
            return stalled
        return refusal(usage or self.usage(), self.pending, cost, str(self._directory))

    def refuses_writes(self, usage: Usage | None = None) -> bool:
        """Whether even the smallest entry would be refused now."""
        return self.refusal(entry_cost(0), usage) is not None

    def disk_full(self) -> bool:
        """Less than the disk reserve is free."""
        usage = self.usage()
        return usage.disk_free_bytes < disk_reserve(usage.map_size)

    def reserve(self, cost: int) -> int:
        """An entry costing `cost` was proposed: charge it until release(the returned id), once
        it is applied or failed."""
        with self._lock:
            charge = next(self._ids)
            self._pending[charge] = (cost, time.monotonic() + PENDING_TTL)
        return charge

    def release(self, charge: int) -> None:
        with self._lock:
            self._pending.pop(charge, None)

    @property
    def pending(self) -> int:
        """The cost of the entries proposed here and not applied yet."""
        now = time.monotonic()
        with self._lock:
            for charge in [c for c, (_, expiry) in self._pending.items() if expiry < now]:
                del self._pending[charge]
            return sum(cost for cost, _ in self._pending.values())

    @property
    def stalled(self) -> str | None:
        return self._stalled

    def set_stalled(self, reason: str | None) -> None:
        self._stalled = reason
