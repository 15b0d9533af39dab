"""The chain of execs that starts an exec-runtime task (ADR 17): network namespace, a mount
namespace with the node's resolv.conf, cgroups and user; also the task's environment and the
executable it runs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

from warren.agent.runtime import ContainerSpec, MountedFile, MountSpec, RuntimeFailure
from warren.model import Ulimit
from warren.runtime.exec.mounts import shim_args

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # Docker's default
# Joins each cgroup named before "--", then execs the rest: the process is limited from its first instruction.
CGROUP_SHIM = (
    'for f; do [ "$f" = -- ] && break; echo $$ > "$f" || echo "warren: cannot join cgroup $f" >&2; shift; done; '
    'shift; exec "$@"'
)
# Bind-mounts $2 read-only over /etc/resolv.conf with the mount binary $1, then execs the rest.
# Read-only: the file is the agent's, shared by every task on the node.
RESOLV_SHIM = (
    '"$1" --bind -o ro -- "$2" /etc/resolv.conf || '
    '{ echo "warren: cannot mount $2 over /etc/resolv.conf" >&2; exit 125; }; '
    'shift 2; exec "$@"'
)


# Sets the UTS namespace's hostname to $2 with the hostname binary $1, then execs the rest.
HOSTNAME_SHIM = '"$1" "$2" || { echo "warren: cannot set the hostname $2" >&2; exit 125; }; shift 2; exec "$@"'


def tool(name: str) -> str:
    """An absolute path for a helper of the exec chain: the task's own PATH may not find it."""
    return shutil.which(name) or f"/usr/bin/{name}"


def exec_chain(
    argv: list[str],
    exe: str,
    *,
    procs: list[str],
    netns: str,
    resolv_conf: str,
    user: tuple[int, int] | None,
    mounts: Sequence[MountSpec] = (),
    files: tuple[MountedFile, ...] = (),
    groups: Sequence[int] = (),
    rlimits: Sequence[Ulimit] = (),
    hostname: str = "",
) -> tuple[list[str], str, tuple[int, int] | None]:
    """(argv, executable, user for Popen) that run `argv` in the task's cgroups (`procs`, their
    cgroup.procs files), network namespace and resolv.conf, as `user` (uid, gid) with the
    supplementary `groups` (--group-add), resource limits `rlimits` (--ulimit) and `hostname`.

    Outermost first: nsenter (network), unshare (a mount namespace for resolv.conf, the task's
    `mounts` and its secret and config `files`; a UTS one for the hostname), the resolv shim, the
    mounts shim (the mounts, then the files, each a read-only bind: a file may sit in one of the
    mounts), the hostname shim, the cgroup shim, prlimit (limits), setpriv (user, groups), the
    task. None of them forks, so the pid Popen returns ends up being the task's. Entering
    namespaces, joining cgroups and raising a hard limit need root, so a user change moves from
    Popen to setpriv, the last step, whenever there is such a step.
    """
    mounts = [*mounts, *(MountSpec("bind", f.target, f.source, readonly=True) for f in files)]
    if not procs and not netns and not resolv_conf and not groups and not rlimits and not hostname and not mounts:
        return argv, exe, user
    if user is not None or groups:
        ids = [f"--reuid={user[0]}", f"--regid={user[1]}"] if user is not None else []
        group_flag = "--groups=" + ",".join(str(g) for g in groups) if groups else "--clear-groups"
        argv = [tool("setpriv"), *ids, group_flag, "--", *argv]
    if rlimits:
        argv = [tool("prlimit"), *(f"--{u.name}={u.soft}:{u.hard}" for u in rlimits), "--", *argv]
    if procs:
        argv = ["/bin/sh", "-c", CGROUP_SHIM, "warren-exec", *procs, "--", *argv]
    if hostname:
        argv = ["/bin/sh", "-c", HOSTNAME_SHIM, "warren-hostname", tool("hostname"), hostname, *argv]
    if mounts:  # binds and tmpfs (ADR 40), then files (ADR 38), in the mount namespace made below
        argv = [*shim_args(mounts, tool("mount")), *argv]
    if resolv_conf:
        argv = ["/bin/sh", "-c", RESOLV_SHIM, "warren-resolv", tool("mount"), resolv_conf, *argv]
    if resolv_conf or mounts or hostname:
        # rslave, not private: the host's later unmounts still reach the task, so a long-lived task
        # does not pin the host's filesystems; nothing mounted in here propagates to the host.
        mount_ns = ["--mount", "--propagation", "slave"] if resolv_conf or mounts else []
        argv = [tool("unshare"), *mount_ns, *(["--uts"] if hostname else []), "--", *argv]
    if netns:
        argv = [tool("nsenter"), f"--net={netns}", "--", *argv]
    return argv, argv[0], None


def task_env(spec: ContainerSpec) -> dict[str, str]:
    env = {"HOSTNAME": spec.hostname, **spec.env} if spec.hostname else dict(spec.env)  # as Docker sets it
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def check_executable(name: str, env: dict[str, str], cwd: str) -> str:
    """The file execvp would run for `name` with the container's PATH and cwd, or a permanent
    failure that says why not."""
    dirs = [""] if "/" in name else env["PATH"].split(os.pathsep)
    present = [p for p in (os.path.join(cwd, d, name) for d in dirs) if os.path.isfile(p)]
    for path in present:
        if os.access(path, os.X_OK):
            return path
    if present:
        raise RuntimeFailure(f"permission denied: {name} is not executable", permanent=True)
    raise RuntimeFailure(f"executable file not found: {name}", permanent=True)


def make_mount_points(files: tuple[MountedFile, ...], mounts: Sequence[MountSpec] = ()) -> None:
    """An exec task shares the host's filesystem: a file's target must exist to be bound over in
    the task's mount namespace, so a missing one is made, empty, as runc does in a rootfs. The
    value never lands there: the host sees an empty file, the task the tmpfs file. A target
    inside one of the task's `mounts` is left alone: the host's tree is hidden there, and the
    mounts shim makes it in the task's own mount namespace."""
    for f in files:
        target = f.target
        if any(target.startswith(m.target.rstrip("/") + "/") for m in mounts):
            continue
        if os.path.isdir(target):
            raise RuntimeFailure(f"cannot mount a file at {target}: it is a directory on this host", permanent=True)
        if not os.path.exists(target):
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            with open(target, "a"):
                pass
