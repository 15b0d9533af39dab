"""The exec runtime's record of one container (warren.runtime.exec.driver), which survives the
agent, and whether the process it names is still that one (pid reuse)."""

from __future__ import annotations

import msgspec

from warren.agent.runtime import ContainerSpec, ContainerState
from warren.runtime.exec import procfs


class Record(msgspec.Struct):
    """What survives the agent: enough to find, re-adopt and report on one container."""

    runtime_id: str
    spec: ContainerSpec
    log_path: str
    cwd: str
    created_at: float
    state: ContainerState = ContainerState.CREATED
    pid: int = 0
    proc_start: int = 0  # field 22 of /proc/<pid>/stat: start time in clock ticks since boot
    boot_id: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    exit_code: int | None = None
    error: str = ""
    cgroups: list[str] = []
    version: int = 1


def is_ours_and_alive(rec: Record) -> bool:
    """The recorded process still runs: same boot, same pid, same start time, not a zombie."""
    if rec.pid <= 0 or rec.boot_id != procfs.boot_id():
        return False
    st = procfs.proc_stat(rec.pid)
    return st is not None and st[1] == rec.proc_start and st[0] not in ("Z", "X", "x")
