"""Mounts for exec-runtime tasks (ADR 40): binds (volumes are binds of their directory) and
tmpfs, made in the task's own mount namespace by a shell shim of its exec chain, so the host's
mounts stay as they were. The task shares the host's filesystem: a target must exist there."""

from __future__ import annotations

import os
from collections.abc import Sequence

from warren.agent.runtime import MountSpec, RuntimeFailure

# $1 is the mount binary; then groups of (kind, source, target, options) up to "--"; then the
# command to exec. A read-only bind is a bind remounted read-only (the kernel's only way). A
# bind's missing target (a secret's file inside a tmpfs mounted before it, ADR 38) is made
# first, as runc makes one in a rootfs: a directory for a directory, else an empty file.
MOUNTS_SHIM = (
    'm="$1"; shift; '
    'fail() { echo "warren: cannot mount $1" >&2; exit 125; }; '
    'while [ "$1" != -- ]; do '
    'if [ "$1" = bind ]; then '
    '[ -e "$3" ] || if [ -d "$2" ]; then mkdir -p -- "$3"; else mkdir -p -- "${3%/*}" && : > "$3"; fi '
    '|| fail "$2 on $3 (cannot make its mount point)"; '
    '"$m" --bind -- "$2" "$3" || fail "$2 on $3"; '
    '[ "$4" = ro ] && { "$m" -o remount,bind,ro -- "$3" || fail "$3 read-only"; }; '
    'else "$m" -t tmpfs -o "$4" -- tmpfs "$3" || fail "a tmpfs on $3"; fi; '
    'shift 4; done; shift; exec "$@"'
)


def check_targets(mounts: Sequence[MountSpec]) -> None:
    """Every target exists on the host: the exec runtime does not change the host's tree."""
    for m in mounts:
        if not os.path.isdir(m.target) and not (m.type == "bind" and os.path.isfile(m.target)):
            raise RuntimeFailure(
                f"mount target {m.target} does not exist on this host "
                "(exec tasks run in the host's filesystem: create it first)",
                permanent=True,
            )


def shim_args(mounts: Sequence[MountSpec], mount_binary: str) -> list[str]:
    """The shim's argv up to and including "--": the command follows."""
    args = ["/bin/sh", "-c", MOUNTS_SHIM, "warren-mounts", mount_binary]
    for m in mounts:
        if m.type == "bind":
            args += ["bind", m.source, m.target, "ro" if m.readonly else "rw"]
        else:
            options = [f"mode={m.tmpfs_mode or 0o1777:o}", "nosuid", "nodev"]
            options += [f"size={m.tmpfs_size}"] if m.tmpfs_size else []
            options += ["ro"] if m.readonly else []
            args += ["tmpfs", "", m.target, ",".join(options)]
    return [*args, "--"]
