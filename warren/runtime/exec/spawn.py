"""Starting a process as an exec-runtime container runs (warren.runtime.exec.driver): with the
container's environment, working directory, user and groups, joining its cgroups and namespaces
through the chain of execs (warren.runtime.exec.chain), in a session of its own. The driver
starts this way a task's process, an exec health check's command and an operator's exec (ADR 59),
which may have a terminal for its controlling one.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import IO, TypedDict

from warren.agent.runtime import RuntimeFailure
from warren.runtime.exec.chain import check_executable, exec_chain, task_env, tool
from warren.runtime.exec.record import Record
from warren.runtime.exec.users import resolve_groups, resolve_user


class _Credentials(TypedDict, total=False):
    """Popen's arguments to run as another user; none at all to run as the agent's."""

    user: int
    group: int
    extra_groups: list[int]


def spawn(
    rec: Record,
    argv: list[str],
    out: IO[bytes] | int,
    stdin: IO[bytes] | int = subprocess.DEVNULL,
    err: IO[bytes] | int = subprocess.STDOUT,
    terminal: bool = False,
) -> subprocess.Popen[bytes]:
    """Start argv as the container would run it (env, cwd, user, cgroups), in a new session;
    with `terminal`, its stdin (a terminal) becomes the session's controlling terminal."""
    spec = rec.spec
    env = task_env(spec)
    exe = check_executable(argv[0], env, rec.cwd)
    uid, gid = resolve_user(spec.user)
    user = (uid, gid or 0) if uid is not None and uid != os.geteuid() else None
    procs = [str(Path(d) / "cgroup.procs") for d in rec.cgroups]
    argv, exe, user = exec_chain(
        argv,
        exe,
        procs=procs,
        netns=spec.netns,
        resolv_conf=spec.resolv_conf,
        user=user,
        mounts=spec.mounts,
        files=spec.files,
        groups=resolve_groups(spec.options.group_add),
        rlimits=spec.options.ulimits,
        hostname=spec.hostname,
    )
    if terminal:  # setsid(1) execs in place: the child is no group leader, so it need not fork
        argv, exe = [tool("setsid"), "--ctty", *argv], tool("setsid")
    creds: _Credentials = {}
    if user is not None:
        creds = {"user": user[0], "group": user[1], "extra_groups": []}
    try:
        return subprocess.Popen(
            argv,
            executable=exe,
            env=env,
            cwd=rec.cwd,
            stdin=stdin,
            stdout=out,
            stderr=err,
            start_new_session=not terminal,
            close_fds=True,
            **creds,
        )
    except FileNotFoundError as exc:
        raise RuntimeFailure(f"executable file not found: {argv[0]}", permanent=True) from exc
    except PermissionError as exc:
        raise RuntimeFailure(f"cannot start {argv[0]}: {exc.strerror or exc}", permanent=True) from exc
    except OSError as exc:
        raise RuntimeFailure(f"cannot start {argv[0]}: {exc}") from exc
