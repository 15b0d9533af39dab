"""Per-container cgroups (v1 and v2) for the exec runtime's memory and CPU limits."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from warren.model import Resources

log = logging.getLogger(__name__)

CFS_PERIOD_US = 100_000


class Cgroups:
    """Per-container cgroup directories for memory and CPU limits, where the host allows them.
    Detection is lazy (first container with limits); if it fails, one warning is logged and
    containers run unlimited. The parent directory is removed again when it empties, so that
    nothing is left behind in the agent's own cgroup."""

    def __init__(self, root: str | None, owner: str = "", account: bool = False) -> None:
        self._root = root
        self._owner = owner  # appended to each container's directory name
        self._account = account  # cgroups for every container, not only limited ones
        self._bases: dict[str, Path] | None = None  # controller ("memory", "cpu", ...) -> parent directory
        self._version = 0

    def create(self, runtime_id: str, limits: Resources) -> list[str]:
        """Directories the container's process must join; [] if no limits (and no accounting)
        or the host gives us no cgroups. With accounting they are made for every container,
        limited or not: they count its CPU, memory and block I/O (per-task metrics, ADR 60)."""
        if not limits.memory_bytes and not limits.nano_cpus and not self._account:
            return []
        bases = self._detect()
        if not bases:
            return []
        files = self._limit_files(limits)
        made: list[Path] = []
        try:
            for ctl, base in bases.items():
                self._ensure_base(base)
                d = base / (f"{runtime_id}.{self._owner}" if self._owner else runtime_id)
                if d not in made:
                    d.mkdir(exist_ok=True)
                    made.append(d)
                for name, value in files.get(ctl, {}).items():
                    (d / name).write_text(value)
        except OSError as exc:
            self.destroy([str(d) for d in made])
            if files:
                log.warning("exec runtime: container %s runs without memory/CPU limits: %s", runtime_id, exc)
            else:
                log.debug("exec runtime: container %s runs without its own cgroups: %s", runtime_id, exc)
            return []
        return [str(d) for d in made]

    def kill(self, dirs: list[str]) -> None:
        """SIGKILL every process in the container's cgroups, until they are empty or 2 s pass."""
        deadline = time.monotonic() + 2.0
        while dirs and time.monotonic() < deadline:
            pids: set[int] = set()
            for d in dirs:
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in Path(d, "cgroup.procs").read_text().split())
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)

    def destroy(self, dirs: list[str]) -> None:
        self.kill(dirs)
        for d in dirs:
            try:
                Path(d).rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("exec runtime: cannot remove cgroup %s: %s", d, exc)
                continue
            with contextlib.suppress(OSError):  # fails while other containers use it: fine
                Path(d).parent.rmdir()

    def _limit_files(self, limits: Resources) -> dict[str, dict[str, str]]:
        """controller -> {file: value}; the file names depend on the cgroup version."""
        v2 = self._version == 2
        quota = max(1000, limits.nano_cpus * CFS_PERIOD_US // 1_000_000_000)
        files: dict[str, dict[str, str]] = {}
        if limits.memory_bytes:
            files["memory"] = {("memory.max" if v2 else "memory.limit_in_bytes"): str(limits.memory_bytes)}
        if limits.nano_cpus:
            files["cpu"] = (
                {"cpu.max": f"{quota} {CFS_PERIOD_US}"}
                if v2
                else {"cpu.cfs_period_us": str(CFS_PERIOD_US), "cpu.cfs_quota_us": str(quota)}
            )
        return files

    def _ensure_base(self, base: Path) -> None:
        if base.is_dir():
            return
        base.mkdir(parents=True)
        if self._version == 2:
            # cgroup v2 children may only use controllers their parent delegates; enabling them
            # fails (EBUSY) when the parent holds processes, as the agent's own cgroup does.
            for d in (base.parent, base):
                (d / "cgroup.subtree_control").write_text("+memory +cpu")

    def _detect_version(self) -> int:
        mounts = cgroup_mounts()
        return 1 if "memory" in mounts or "cpu" in mounts else 2 if "" in mounts else 0

    def _detect(self) -> dict[str, Path]:
        """The parent directory per controller, {} if this host gives us none."""
        if self._bases is not None:
            return self._bases
        self._bases = {}
        bases: dict[str, Path] = {}
        try:
            bases = self._find_bases()
            for base in set(bases.values()):
                self._ensure_base(base)
        except (OSError, NoCgroups) as exc:
            for base in set(bases.values()):
                with contextlib.suppress(OSError):
                    base.rmdir()
            log.warning("exec runtime: memory/CPU limits are not enforced (nor tasks accounted) on this host: %s", exc)
            return self._bases
        self._bases = bases
        return bases

    def _find_bases(self) -> dict[str, Path]:
        mounts, own = cgroup_mounts(), own_cgroups()
        self._version = self._detect_version()
        if self._version == 1:
            for ctl in LIMIT_CONTROLLERS:
                if ctl not in mounts or ctl not in own:
                    raise NoCgroups(f"no cgroup v1 {ctl} hierarchy")
            accounting = cgroup_mounts(ACCOUNTING_CONTROLLERS)
            bases = {ctl: self._base(mounts[ctl], own[ctl]) for ctl in LIMIT_CONTROLLERS}
            for ctl in ACCOUNTING_CONTROLLERS:  # where mounted apart from cpu and memory
                if ctl in accounting and ctl in own and accounting[ctl][0] not in {m[0] for m in mounts.values()}:
                    bases[ctl] = self._base(accounting[ctl], own[ctl])
            return bases
        if self._version == 2 and "" in own:
            base = self._base(mounts[""], own[""])
            return {"memory": base, "cpu": base}
        raise NoCgroups("no cgroup filesystem mounted")

    def _base(self, mount: tuple[Path, str], own: str) -> Path:
        return cgroup_dir(mount, self._root if self._root is not None else own.rstrip("/") + "/warren-exec")


class NoCgroups(Exception):
    pass


LIMIT_CONTROLLERS = ("memory", "cpu")
# Controllers a task's cgroup is made in only to account for it (per-task metrics, ADR 60): on
# hosts where they are not mounted with cpu or memory, as here (cpu and cpuacct apart).
ACCOUNTING_CONTROLLERS = ("cpuacct", "blkio")


def cgroup_mounts(controllers: tuple[str, ...] = LIMIT_CONTROLLERS) -> dict[str, tuple[Path, str]]:
    """controller -> (mount point, root inside the hierarchy); "" is the cgroup v2 mount."""
    with contextlib.suppress(OSError):
        return parse_mountinfo(Path("/proc/self/mountinfo").read_text(), controllers)
    return {}


def parse_mountinfo(text: str, controllers: tuple[str, ...]) -> dict[str, tuple[Path, str]]:
    out: dict[str, tuple[Path, str]] = {}
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        fstype, opts = fields[sep + 1], fields[sep + 3].split(",")
        point = Path(fields[4].replace("\\040", " "))
        if fstype == "cgroup2":
            out.setdefault("", (point, fields[3]))
        elif fstype == "cgroup":
            for ctl in controllers:
                if ctl in opts:
                    out.setdefault(ctl, (point, fields[3]))
    return out


def own_cgroups() -> dict[str, str]:
    """controller -> the agent's cgroup path in that hierarchy; "" for cgroup v2."""
    return process_cgroups("self")


def process_cgroups(pid: int | str) -> dict[str, str]:
    """controller -> a process's cgroup path in that hierarchy; {} if it is gone."""
    with contextlib.suppress(OSError):
        return parse_proc_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
    return {}


def parse_proc_cgroup(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        _, ctls, path = line.split(":", 2)
        for ctl in ctls.split(",") if ctls else [""]:
            out[ctl] = path
    return out


def cgroup_dir(mount: tuple[Path, str], path: str) -> Path:
    """The directory of cgroup `path` (as /proc/PID/cgroup names it) in a hierarchy mounted at
    `mount` (its point, and the root it shows, which is not / inside a container)."""
    point, mroot = mount
    inside = mroot == "/" or path == mroot or path.startswith(mroot.rstrip("/") + "/")
    return point / (os.path.relpath(path, mroot) if inside else path.lstrip("/"))
