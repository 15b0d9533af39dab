"""Mounts and named volumes (ADR 40): the rules on a service's mounts, and which volumes a task
needs. Pure: the scheduler, the reconciler, the API and the commands all ask here.

A local volume lives on one node and holds one task's data: a service mounting one runs at
most one replica and is not global (ADR 40 says why this, and not a volume per slot).
"""

from __future__ import annotations

import posixpath
import re
from typing import TYPE_CHECKING

from warren.model import Mount, MountType, ServiceMode, ServiceSpec, Task
from warren.text import has_control, shown

if TYPE_CHECKING:  # the managers' side: an agent reads mounts, not the cluster state
    from warren.state import ClusterState

VOLUME_DRIVERS = ("local",)
MAX_MOUNTS = 64
MAX_PATH = 1024
MAX_VOLUME_OPTIONS = 32
MAX_TMPFS_MODE = 0o7777
# Driver options the local driver knows (none yet: a directory has no size or type). Any other
# option is refused rather than silently ignored.
LOCAL_OPTIONS: tuple[str, ...] = ()
# Docker's volume name rule: a letter or digit, then letters, digits, '_', '.' or '-'.
VOLUME_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class MountError(ValueError):
    """A mount or volume an operator gave breaks a rule; str() is the one-line message."""


def check_volume_name(name: str) -> None:
    if not VOLUME_NAME_RE.fullmatch(name):
        raise MountError(
            f"invalid volume name {shown(name)}: use 1-63 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )


def check_volume_options(driver: str, options: dict[str, str]) -> None:
    if driver not in VOLUME_DRIVERS:
        raise MountError(f"unknown volume driver {shown(driver)} (known: {', '.join(VOLUME_DRIVERS)})")
    if len(options) > MAX_VOLUME_OPTIONS:
        raise MountError(f"too many volume options ({len(options)}, at most {MAX_VOLUME_OPTIONS})")
    for key in options:
        if key not in LOCAL_OPTIONS:
            raise MountError(f"the {driver} volume driver takes no option {shown(key)}")


def _check_path(what: str, path: str) -> None:
    if not path.startswith("/"):
        raise MountError(f"{what} must be an absolute path (got {shown(path)})")
    if len(path) > MAX_PATH or has_control(path):
        raise MountError(f"invalid {what} {shown(path)}")
    if posixpath.normpath(path) != path and path != "/":
        raise MountError(f"{what} {shown(path)} is not in normal form (write {shown(posixpath.normpath(path))})")


def check_mount(mount: Mount) -> None:
    _check_path("a mount target", mount.target)
    if mount.target == "/":
        raise MountError("a mount target cannot be / (the task's root)")
    if mount.type is MountType.VOLUME:
        if not mount.source:
            raise MountError(f"a volume mount at {mount.target} needs a source (the volume's name)")
        check_volume_name(mount.source)
        check_volume_options("local", mount.volume_options)
    elif mount.volume_options:
        raise MountError(f"volume-opt is for volume mounts only (the {mount.type.value} mount at {mount.target})")
    if mount.type is MountType.BIND:
        if not mount.source:
            raise MountError(f"a bind mount at {mount.target} needs a source (a host path)")
        _check_path("a bind mount's source", mount.source)
    if mount.type is MountType.TMPFS:
        if mount.source:
            raise MountError(f"a tmpfs mount takes no source (the tmpfs at {mount.target})")
        if mount.tmpfs_size < 0:
            raise MountError(f"tmpfs-size cannot be negative (the tmpfs at {mount.target})")
        if not 0 <= mount.tmpfs_mode <= MAX_TMPFS_MODE:
            raise MountError(f"tmpfs-mode must be octal permission bits, at most 7777 (got {mount.tmpfs_mode:o})")
    elif mount.tmpfs_size or mount.tmpfs_mode:
        raise MountError(f"tmpfs-size and tmpfs-mode are for tmpfs mounts only (the mount at {mount.target})")


def check_mounts(spec: ServiceSpec) -> None:
    """Every mount valid, no two at one target, and a volume only where one task uses it."""
    if len(spec.mounts) > MAX_MOUNTS:
        raise MountError(f"too many mounts ({len(spec.mounts)}, at most {MAX_MOUNTS})")
    targets: set[str] = set()
    for mount in spec.mounts:
        check_mount(mount)
        if mount.target in targets:
            raise MountError(f"two mounts at {mount.target}")
        targets.add(mount.target)
    names = volume_names(spec)
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise MountError(f"volume {shown(twice)} is mounted twice: mount it once")
    if names:
        check_volume_scale(spec, spec.replicas)


def check_volume_scale(spec: ServiceSpec, replicas: int) -> None:
    """A local volume lives on one node and holds one task's data (ADR 40)."""
    names = volume_names(spec)
    if not names:
        return
    if spec.mode is ServiceMode.GLOBAL:
        raise MountError(
            f"service {spec.name} mounts volume {names[0]}, which lives on one node: "
            "a global service cannot mount a local volume (use a bind mount)"
        )
    if replicas > 1:
        raise MountError(
            f"service {spec.name} mounts volume {names[0]}, which holds one task's data: "
            f"it runs at most 1 replica, not {replicas} (use one service per replica, each with its own volume)"
        )


def volume_names(spec: ServiceSpec) -> tuple[str, ...]:
    return tuple(m.source for m in spec.mounts if m.type is MountType.VOLUME)


def mount_texts(spec: ServiceSpec) -> list[str]:
    """The strings of the mounts, for the spec's size bound."""
    texts = []
    for m in spec.mounts:
        texts += [m.target, m.source, *m.volume_options, *m.volume_options.values()]
    return texts


def users(state: ClusterState, name: str) -> list[str]:
    """What keeps volume `name` from being removed: services mounting it, tasks still holding it."""
    found = [f"service {s.spec.name}" for s in state.services.values() if name in volume_names(s.spec)]
    if found:
        return sorted(found)
    holding = [t for t in state.tasks.values() if _holds(t, name)]
    return sorted(f"task {t.service_name}.{t.slot or t.node_id[:12]} ({t.id[:12]})" for t in holding)


def _holds(task: Task, name: str) -> bool:
    return not task.state.terminal and task.node_id != "" and name in volume_names(task.spec)
