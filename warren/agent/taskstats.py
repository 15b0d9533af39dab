"""A running task's resource figures, read from its cgroups (v1 or v2) and its network namespace.

Both runtimes are served by one rule: the task's main process (its pid) names its cgroups in
/proc/PID/cgroup (containerd's `cgroupsPath`, or the exec runtime's per-task cgroups), and its
network namespace in /proc/PID/net/dev. A figure whose source the task does not own (its cgroup
in a hierarchy is the agent's own; its network namespace is the agent's) is left out, never
reported as the node's figure under the task's name (ADR 60).

The parsers take a file's text and return numbers, so both cgroup formats are unit-tested with
samples; `TaskStatsReader` does the reading.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from warren.runtime.exec.cgroups import cgroup_dir, own_cgroups, parse_mountinfo, process_cgroups

# cgroup v1 writes "no limit" as the largest page-aligned 64-bit value; anything this large is none.
UNLIMITED = 1 << 62
V1_CONTROLLERS = ("cpuacct", "memory", "blkio")
T = TypeVar("T")


@dataclass(frozen=True)
class NetCounters:
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0


@dataclass(frozen=True)
class TaskStats:
    """None: not known for this task (no cgroup or network namespace of its own)."""

    cpu_seconds: float | None = None
    memory_usage: int | None = None
    memory_limit: int | None = None  # 0 = unlimited
    blkio_read: int | None = None
    blkio_write: int | None = None
    network: NetCounters | None = None


# -- parsers: a file's text in, numbers out -----------------------------------------------------
def parse_cpuacct_usage(text: str) -> float:
    """v1 cpuacct.usage: nanoseconds."""
    return int(text.strip()) / 1e9


def parse_cpu_stat(text: str) -> float:
    """v2 cpu.stat: `usage_usec N` among other lines."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    raise ValueError("cpu.stat has no usage_usec")


def parse_memory_limit(text: str) -> int:
    """v1 memory.limit_in_bytes or v2 memory.max; 0 when unlimited ("max", or v1's huge value)."""
    value = text.strip()
    if value == "max":
        return 0
    limit = int(value)
    return 0 if limit >= UNLIMITED else limit


def parse_blkio_service_bytes(text: str) -> tuple[int, int]:
    """v1 blkio.throttle.io_service_bytes: `MAJ:MIN Read N` lines per device -> (read, write)."""
    read = write = 0
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] == "Read":
            read += int(fields[2])
        elif len(fields) == 3 and fields[1] == "Write":
            write += int(fields[2])
    return read, write


def parse_io_stat(text: str) -> tuple[int, int]:
    """v2 io.stat: `MAJ:MIN rbytes=N wbytes=N rios=N ...` per device -> (read, write)."""
    read = write = 0
    for line in text.splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition("=")
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                write += int(value)
    return read, write


def parse_net_dev(text: str) -> NetCounters:
    """/proc/PID/net/dev: the sums over the namespace's interfaces but loopback."""
    rx_bytes = tx_bytes = rx_packets = tx_packets = 0
    for line in text.splitlines()[2:]:  # two header lines
        name, sep, rest = line.partition(":")
        if not sep or name.strip() == "lo":
            continue
        fields = rest.split()
        rx_bytes += int(fields[0])
        rx_packets += int(fields[1])
        tx_bytes += int(fields[8])
        tx_packets += int(fields[9])
    return NetCounters(rx_bytes, tx_bytes, rx_packets, tx_packets)


# -- the reader ---------------------------------------------------------------------------------
class TaskStatsReader:
    """Reads a task's figures by its pid. The mounts and the agent's own cgroups and namespace
    are read once: they do not change while the agent runs."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc
        text = ""
        with contextlib.suppress(OSError):
            text = (proc / "self" / "mountinfo").read_text()
        self._mounts = parse_mountinfo(text, V1_CONTROLLERS)
        self._own = own_cgroups()
        self._own_netns = _netns_id(proc / "self")

    def read(self, pid: int) -> TaskStats | None:
        """The figures of the task whose main process is `pid`; None if that process is gone."""
        cgroups = process_cgroups(pid)
        if not cgroups:
            return None
        cpu = self._read(cgroups, "cpuacct", "cpuacct.usage", "cpu.stat", parse_cpuacct_usage, parse_cpu_stat)
        usage = self._read(cgroups, "memory", "memory.usage_in_bytes", "memory.current", int, int)
        limit = self._read(
            cgroups, "memory", "memory.limit_in_bytes", "memory.max", parse_memory_limit, parse_memory_limit
        )
        blkio = self._read(
            cgroups, "blkio", "blkio.throttle.io_service_bytes", "io.stat", parse_blkio_service_bytes, parse_io_stat
        )
        return TaskStats(
            cpu_seconds=cpu,
            memory_usage=usage,
            memory_limit=limit,
            blkio_read=blkio[0] if blkio else None,
            blkio_write=blkio[1] if blkio else None,
            network=self._network(pid),
        )

    def _read(
        self,
        cgroups: dict[str, str],
        v1: str,
        v1_file: str,
        v2_file: str,
        parse_v1: Callable[[str], T],
        parse_v2: Callable[[str], T],
    ) -> T | None:
        """The v1 controller's file where that hierarchy is mounted, else the v2 file; None
        when the task shares the agent's cgroup there (its figure would be the agent's)."""
        if v1 in self._mounts and v1 in cgroups:
            ctl, name, parse = v1, v1_file, parse_v1
        elif "" in self._mounts and "" in cgroups:
            ctl, name, parse = "", v2_file, parse_v2
        else:
            return None
        if cgroups[ctl] == self._own.get(ctl):
            return None
        try:
            return parse((cgroup_dir(self._mounts[ctl], cgroups[ctl]) / name).read_text())
        except (OSError, ValueError):
            return None

    def _network(self, pid: int) -> NetCounters | None:
        """Only a namespace of the task's own: with the host's network (overlay off), the
        interfaces' counters are the node's, not the task's."""
        where = self._proc / str(pid)
        netns = _netns_id(where)
        if netns is None or netns == self._own_netns:
            return None
        try:
            return parse_net_dev((where / "net" / "dev").read_text())
        except (OSError, ValueError, IndexError):
            return None


def _netns_id(proc_pid: Path) -> str | None:
    try:
        return os.readlink(proc_pid / "ns" / "net")
    except OSError:
        return None
