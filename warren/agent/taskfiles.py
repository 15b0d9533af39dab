"""Secrets and configs on a worker (ADR 38): held in memory, written only to a tmpfs.

The values arrive with the specs that name them (the dispatcher sends them only to the agent of
a task that uses them) and stay in `FileVault`, in this process's memory: never in the agent's
cache, its logs, or a container's bundle. Before a task's container is created, `TaskFiles`
mounts a tmpfs of its own at `<data>/secrets/<task id>` (root only), writes the task's files
there with their owner and mode, and the runtime bind-mounts each file read-only at its target.
The tmpfs is unmounted once the task's container is removed; at start, the agent unmounts
those of tasks it no longer knows (left by an agent killed -9). A task the agent re-adopts keeps
its tmpfs: an exec task's health check binds its files again.

An agent restarted while cut off from the managers holds no values: a task that needs one
waits, saying which, until a session brings them (`MissingFiles`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
from collections.abc import Iterable
from pathlib import Path

from warren.agent.runtime import MountedFile, RuntimeFailure
from warren.model import FileRef, Task

log = logging.getLogger(__name__)

TMPFS_SLACK = 64 * 1024  # bytes above the files' total: inodes and block rounding


class MissingFiles(RuntimeFailure):
    """A task needs values this agent does not hold (it restarted while cut off)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(
            f"waiting for {', '.join(names)}: this node does not hold "
            f"{'it' if len(names) == 1 else 'them'} (its agent restarted while cut off from the managers); "
            "retrying once connected"
        )


class FileVault:
    """Secret and config values by (kind, name), in memory only. Thread-safe: the session
    fills it on the event loop, the controllers read it from the runtime's threads."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def hold(self, files: Iterable[tuple[str, str, bytes]]) -> None:
        with self._lock:
            for kind, name, data in files:
                self._values[(kind, name)] = data

    def get(self, kind: str, name: str) -> bytes | None:
        with self._lock:
            return self._values.get((kind, name))

    def keep_only(self, wanted: set[tuple[str, str]]) -> None:
        """Forget values no task of the assignment set names any more."""
        with self._lock:
            for key in [k for k in self._values if k not in wanted]:
                del self._values[key]


def names_of(task: Task) -> set[tuple[str, str]]:
    spec = task.spec
    return {("secret", r.source) for r in spec.secrets} | {("config", r.source) for r in spec.configs}


def _run(*argv: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeFailure(f"{argv[0]} failed: {exc}") from exc
    if done.returncode != 0:
        raise RuntimeFailure(f"{' '.join(argv[:3])} failed: {done.stderr.strip() or done.returncode}")


class TaskFiles:
    """Each task's secrets and configs on its own tmpfs. Blocking: run in the agent's pool."""

    def __init__(self, root: Path, vault: FileVault) -> None:
        self.root = root
        self.vault = vault

    def prepare(self, task: Task) -> tuple[MountedFile, ...]:
        """Mount the task's tmpfs (again: a second call rewrites it) and fill it."""
        refs: list[tuple[str, FileRef]] = [("secret", r) for r in task.spec.secrets]
        refs += [("config", r) for r in task.spec.configs]
        if not refs:
            return ()
        values = {(kind, r.source): self.vault.get(kind, r.source) for kind, r in refs}
        missing = sorted(f"{kind} {name}" for (kind, name), data in values.items() if data is None)
        if missing:
            raise MissingFiles(missing)
        directory = self.root / task.id
        self.release(task.id)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        size = sum(len(v or b"") for v in values.values()) + TMPFS_SLACK * (1 + len(refs))
        _run(
            "mount", "-t", "tmpfs", "-o", f"size={size},mode=0700,nosuid,nodev,noexec", "warren-secrets", str(directory)
        )
        mounted: list[MountedFile] = []
        try:
            for n, (kind, ref) in enumerate(refs):
                path = directory / f"{n}-{kind}-{ref.source}"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(values[(kind, ref.source)] or b"")
                os.chown(path, ref.uid, ref.gid)
                os.chmod(path, ref.mode)
                mounted.append(MountedFile(str(path), ref.target))
        except OSError as exc:
            self.release(task.id)
            raise RuntimeFailure(f"cannot write the task's secrets and configs: {exc}") from exc
        return tuple(mounted)

    def release(self, task_id: str) -> None:
        """Unmount and remove the task's tmpfs (idempotent)."""
        directory = self.root / task_id
        if os.path.ismount(directory):
            try:
                _run("umount", str(directory))
            except RuntimeFailure:
                _run("umount", "-l", str(directory))  # busy: detach now, freed when unused
        with contextlib.suppress(OSError):
            directory.rmdir()

    def sweep(self, keep: Iterable[str] = ()) -> None:
        """Unmount every task's tmpfs left under the root but those of the tasks in `keep`."""
        if not self.root.is_dir():
            return
        kept = set(keep)
        for entry in self.root.iterdir():
            if entry.name in kept:
                continue
            try:
                self.release(entry.name)
            except RuntimeFailure as exc:
                log.warning("cannot unmount the secrets of task %s: %s", entry.name, exc)
        with contextlib.suppress(OSError):
            self.root.rmdir()  # only if empty
