"""Helpers shared by the benchmarks: percentiles, goal checks, machine info, polling, CPU time,
a managed manager (alone or with a `warren sim` process).

Figures are reported as dicts (see `figure`) so the runner can print one summary and mark each
goal met or not met. Nothing here asserts on timing.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the rig's classes: imported when used, so that a benchmark module imports quickly
    from tests.integration.harness import Manager
    from tests.integration.simrig import SimProcess

REPO = Path(__file__).resolve().parents[1]


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation), the usual definition for latency figures."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean of latencies given in seconds, reported in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(sum(ms) / len(ms), 3),
    }


def figure(name: str, value: float, unit: str, goal: float | None = None, op: str = "<=") -> dict[str, object]:
    """One reported number, with its goal and whether it is met (`op` is `<=`, `<`, `>=`)."""
    met: bool | None = None
    if goal is not None:
        met = {"<=": value <= goal, "<": value < goal, ">=": value >= goal, ">": value > goal}[op]
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "goal": goal,
        "op": op if goal is not None else None,
        "met": met,
    }


def machine_info() -> dict[str, object]:
    info: dict[str, object] = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_mb": _memory_mb(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    info.update(_git_info())
    return info


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _memory_mb() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    return None


def _git_info() -> dict[str, object]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    # The results files are what `make bench` writes as it goes: a later benchmark of the same
    # run still measures the commit's code.
    changed = [line for line in dirty.splitlines() if not line[3:].startswith("bench/results/")]
    return {"git_commit": commit or None, "git_dirty": bool(changed)}


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def child_pids(pid: int) -> list[int]:
    """Direct children of a process (a manager should have none; reported so RSS is not undercounted)."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                children += [int(p) for p in (task / "children").read_text().split()]
    return children


@contextlib.contextmanager
def running_manager(label: str) -> Iterator[object]:
    """A real manager process on 127.0.0.1 in a fresh temp dir; stopped by PID and removed on exit,
    whatever happens. On failure, the tail of the manager's log goes to stderr."""
    from tests.integration.harness import Manager  # the integration tests' helper, reused

    root = Path(tempfile.mkdtemp(prefix=f"warren-bench-{label}-"))
    manager = Manager(root)
    try:
        manager.start()
        yield manager
    except BaseException:
        tail = manager.log().splitlines()[-30:]
        if tail:
            print(f"--- last lines of the {label} manager's log ---", *tail, sep="\n", file=sys.stderr)
        raise
    finally:
        manager.stop()
        shutil.rmtree(root, ignore_errors=True)


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> float:
    """Poll until `predicate()` is true; the seconds it took. A benchmark's waits are part of what
    it reports, so this returns the time and raises RuntimeError, not the tests' AssertionError."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process so far, from /proc/<pid>/stat."""
    # The command name, in parentheses, may hold spaces: count the fields after its last ")".
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _print_log_tail(name: str, text: str, lines: int) -> None:
    tail = text.splitlines()[-lines:]
    if tail:
        print(f"--- last lines of the {name}'s log ---", *tail, sep="\n", file=sys.stderr)


@dataclass
class ManagerAndSim:
    """One manager and, once started, one `warren sim` process beside it in the same directory."""

    root: Path
    manager: Manager
    sim: SimProcess | None = None

    def start_sim(self, nodes: int, *sim_args: str) -> SimProcess:
        """Start the simulator, or restart it: its data dir is kept, so its nodes come back as the same nodes."""
        from tests.integration.simrig import SimProcess

        if self.sim is not None:
            self.sim.stop()
        self.sim = SimProcess(self.manager, self.root, nodes, *sim_args)
        return self.sim


@contextlib.contextmanager
def manager_with_sim(
    label: str, new_manager: Callable[[Path], Manager], start_timeout: float = 20.0
) -> Iterator[ManagerAndSim]:
    """A manager built by `new_manager(root)` in a fresh temp dir and started; the caller may start
    a simulator beside it. Both are stopped by PID and the dir removed on exit, whatever happens;
    on failure the tails of both logs go to stderr."""
    root = Path(tempfile.mkdtemp(prefix=f"warren-bench-{label}-"))
    try:
        rig = ManagerAndSim(root, new_manager(root))
        try:
            rig.manager.start(timeout=start_timeout)
            yield rig
        except BaseException:
            _print_log_tail("manager", rig.manager.log(), 20)
            if rig.sim is not None:
                _print_log_tail("simulator", rig.sim.log(), 20)
            raise
        finally:
            if rig.sim is not None:
                rig.sim.stop()
            rig.manager.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
