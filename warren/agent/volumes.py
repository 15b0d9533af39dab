"""The volume driver port, and its one implementation: local directories (ADR 40).

A driver gives a volume's data a host path that the runtimes bind-mount into the task; the
runtimes know nothing of volumes. Calls block (the agent runs them in its thread pool).

Another driver plugs in behind the same three calls: an NFS driver would mount the export on a
directory of its own in `path` (and unmount it when no task holds it), a block driver would
attach, format once and mount the device there. Such volumes are not tied to one node, so the
manager would stop binding them to their first task's node (warren.mounts, ADR 40).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Protocol

from warren.agent.runtime import MountSpec, RuntimeFailure
from warren.model import Mount, MountType
from warren.mounts import VOLUME_NAME_RE

log = logging.getLogger(__name__)


class VolumeError(Exception):
    """A volume cannot be provided; the message says why (shown by `service ps`)."""


class VolumeDriver(Protocol):
    name: str

    def path(self, name: str, options: dict[str, str]) -> str:
        """The host path holding volume `name`'s data, made on first use."""
        ...

    def remove(self, name: str) -> None:
        """Delete the volume and its data (idempotent)."""
        ...

    def list(self) -> list[str]:
        """The volumes this node holds."""
        ...


class LocalVolumes:
    """Each volume is a directory, `<root>/<name>/data`, owned by root and world-readable like
    Docker's `_data`; it lives until `warren volume rm`."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self._root = Path(root)

    def _dir(self, name: str) -> Path:
        if not VOLUME_NAME_RE.fullmatch(name):
            raise VolumeError(f"invalid volume name {name!r}")
        return self._root / name

    def path(self, name: str, options: dict[str, str]) -> str:
        data = self._dir(name) / "data"
        try:
            self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
            data.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise VolumeError(f"cannot create volume {name} in {self._root}: {exc}") from exc
        return str(data)

    def remove(self, name: str) -> None:
        directory = self._dir(name)
        if directory.exists():
            shutil.rmtree(directory)
            log.info("volume %s removed (its data with it)", name)

    def list(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self._root) if e.is_dir() and VOLUME_NAME_RE.fullmatch(e.name))
        except FileNotFoundError:
            return []


def resolve_mounts(mounts: tuple[Mount, ...], volumes: VolumeDriver | None) -> tuple[MountSpec, ...]:
    """A task's mounts as the runtimes take them: a volume becomes the bind of its directory.
    A bind's host path must exist (as in Swarm): a missing one fails the task for good."""
    resolved = []
    for m in mounts:
        if m.type is MountType.VOLUME:
            if volumes is None:
                raise RuntimeFailure(f"volume {m.source}: this agent has no volume driver", permanent=True)
            try:
                source = volumes.path(m.source, dict(m.volume_options))
            except VolumeError as exc:
                raise RuntimeFailure(str(exc)) from exc
            resolved.append(MountSpec("bind", m.target, source, m.readonly))
        elif m.type is MountType.BIND:
            if not os.path.exists(m.source):
                raise RuntimeFailure(f"bind mount source path does not exist: {m.source}", permanent=True)
            resolved.append(MountSpec("bind", m.target, m.source, m.readonly))
        else:
            resolved.append(MountSpec("tmpfs", m.target, "", m.readonly, m.tmpfs_size, m.tmpfs_mode))
    return tuple(resolved)
