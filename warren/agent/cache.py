"""The agent's local LMDB cache: its assignment set and what it did with each task.

Written before the agent acts (before prepare, start, stop, remove), so an agent restarted after
kill -9 knows which tasks it held, which container it made for each, which state it last
reported and how often it restarted a task while the managers were unreachable. The container
labels (`warren.task.id`) stay the ground truth for what exists; the cache says what it means.

Values are msgpack-encoded msgspec structs under a schema version (never pickle). Commits are
not fsynced: a process crash loses nothing (the data is in the page cache), and after a power
loss the agent re-adopts by label and the managers' COMPLETE set settles the rest.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

import lmdb
import msgspec

from warren.agent.decisions import LocalState
from warren.model import Task

log = logging.getLogger(__name__)

SCHEMA_VERSION = b"1"
MAP_SIZE = 1 << 30  # address space only; the file grows with use


_task_enc = msgspec.msgpack.Encoder()
_task_dec = msgspec.msgpack.Decoder(Task)
_local_dec = msgspec.msgpack.Decoder(LocalState)


class TaskCache(Protocol):
    """What the worker needs of a cache: AgentCache on a real node, MemoryCache on a simulated
    one (`warren sim`, which never resumes after a crash)."""

    def tasks(self) -> dict[str, Task]: ...
    def local_states(self) -> dict[str, LocalState]: ...
    def replace_tasks(self, tasks: dict[str, Task], keep: set[str] | frozenset[str] = frozenset()) -> None: ...
    def put_tasks(self, tasks: list[Task] | tuple[Task, ...]) -> None: ...
    def put_local(self, task_id: str, state: LocalState) -> None: ...
    def forget(self, task_id: str) -> None: ...


class MemoryCache:
    """The TaskCache of a simulated node: dicts, nothing written."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._local: dict[str, LocalState] = {}

    def tasks(self) -> dict[str, Task]:
        return dict(self._tasks)

    def local_states(self) -> dict[str, LocalState]:
        return dict(self._local)

    def replace_tasks(self, tasks: dict[str, Task], keep: set[str] | frozenset[str] = frozenset()) -> None:
        self._tasks = {**{k: v for k, v in self._tasks.items() if k in keep and k not in tasks}, **tasks}

    def put_tasks(self, tasks: list[Task] | tuple[Task, ...]) -> None:
        self._tasks.update((task.id, task) for task in tasks)

    def put_local(self, task_id: str, state: LocalState) -> None:
        self._local[task_id] = state

    def forget(self, task_id: str) -> None:
        self._local.pop(task_id, None)
        self._tasks.pop(task_id, None)


class AgentCache:
    """Tasks and local states by task id. Not thread-safe: the agent's event loop owns it."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._env = lmdb.open(
            str(path), subdir=False, map_size=MAP_SIZE, max_dbs=4, sync=False, metasync=False, mode=0o600
        )
        for extra in (path, Path(f"{path}-lock")):
            if extra.exists():
                os.chmod(extra, 0o600)
        self._tasks = self._env.open_db(b"tasks")
        self._local = self._env.open_db(b"local")
        self._meta = self._env.open_db(b"meta")
        with self._env.begin(write=True) as txn:
            schema = txn.get(b"schema", db=self._meta)
            if schema not in (None, SCHEMA_VERSION):
                log.warning("agent cache has schema %r, expected %r: starting empty", schema, SCHEMA_VERSION)
                txn.drop(self._tasks, delete=False)
                txn.drop(self._local, delete=False)
            txn.put(b"schema", SCHEMA_VERSION, db=self._meta)

    def close(self) -> None:
        self._env.close()

    # -- reads ---------------------------------------------------------------------------------
    def tasks(self) -> dict[str, Task]:
        return self._load(self._tasks, _task_dec)

    def local_states(self) -> dict[str, LocalState]:
        return self._load(self._local, _local_dec)

    def _load(self, db: lmdb._Database, decoder: msgspec.msgpack.Decoder[Any]) -> dict[str, Any]:
        found = {}
        with self._env.begin(db=db) as txn:
            for key, value in txn.cursor():
                try:
                    found[key.decode()] = decoder.decode(value)
                except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                    log.warning("dropping unreadable cache entry %r: %s", key, exc)
        return found

    # -- writes --------------------------------------------------------------------------------
    def replace_tasks(self, tasks: dict[str, Task], keep: set[str] | frozenset[str] = frozenset()) -> None:
        """Make the cached assignment set exactly `tasks` (a COMPLETE message), keeping the
        entries in `keep`: tasks that left the set but whose containers are not removed yet."""
        with self._env.begin(write=True) as txn:
            cursor = txn.cursor(db=self._tasks)
            names = [key.decode() for key in cursor.iternext(values=False)]
            stale = [name.encode() for name in names if name not in tasks and name not in keep]
            for key in stale:
                txn.delete(key, db=self._tasks)
            for task_id, task in tasks.items():
                txn.put(task_id.encode(), _task_enc.encode(task), db=self._tasks)

    def put_tasks(self, tasks: list[Task] | tuple[Task, ...]) -> None:
        """Add or replace tasks (an INCREMENTAL message). Removed tasks stay until forget()."""
        with self._env.begin(write=True) as txn:
            for task in tasks:
                txn.put(task.id.encode(), _task_enc.encode(task), db=self._tasks)

    def put_local(self, task_id: str, state: LocalState) -> None:
        with self._env.begin(write=True) as txn:
            txn.put(task_id.encode(), _task_enc.encode(state), db=self._local)

    def forget(self, task_id: str) -> None:
        """The task is gone for good: its container is removed and the managers dropped it."""
        with self._env.begin(write=True) as txn:
            txn.delete(task_id.encode(), db=self._local)
            txn.delete(task_id.encode(), db=self._tasks)
