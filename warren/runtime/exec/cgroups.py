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

    def __init__(self, root: str | None) -> None:
        self._root = root
        self._bases: dict[str, Path] | None = None  # controller ("memory", "cpu") -> parent directory
        self._version = 0

    def create(self, runtime_id: str, limits: Resources) -> list[str]:
        """Directories the container's process must join; [] if no limits or they can't be set."""
        if not limits.memory_bytes and not limits.nano_cpus:
            return []
        bases = self._detect()
        if not bases:
            return []
        files = self._limit_files(limits)
        made: list[Path] = []
        try:
            for ctl, values in files.items():
                self._ensure_base(bases[ctl])
                d = bases[ctl] / runtime_id
                if d not in made:
                    d.mkdir(exist_ok=True)
                    made.append(d)
                for name, value in values.items():
                    (d / name).write_text(value)
        except OSError as exc:
            self.destroy([str(d) for d in made])
            log.warning("exec runtime: container %s runs without memory/CPU limits: %s", runtime_id, exc)
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
            log.warning("exec runtime: memory/CPU limits are not enforced on this host: %s", exc)
            return self._bases
        self._bases = bases
        return bases

    def _find_bases(self) -> dict[str, Path]:
        mounts, own = cgroup_mounts(), own_cgroups()
        self._version = self._detect_version()
        if self._version == 1:
            for ctl in ("memory", "cpu"):
                if ctl not in mounts or ctl not in own:
                    raise NoCgroups(f"no cgroup v1 {ctl} hierarchy")
            return {ctl: self._base(mounts[ctl], own[ctl]) for ctl in ("memory", "cpu")}
        if self._version == 2 and "" in own:
            base = self._base(mounts[""], own[""])
            return {"memory": base, "cpu": base}
        raise NoCgroups("no cgroup filesystem mounted")

    def _base(self, mount: tuple[Path, str], own: str) -> Path:
        point, mroot = mount
        path = self._root if self._root is not None else own.rstrip("/") + "/warren-exec"
        inside = mroot == "/" or path == mroot or path.startswith(mroot.rstrip("/") + "/")
        return point / (os.path.relpath(path, mroot) if inside else path.lstrip("/"))


class NoCgroups(Exception):
    pass


def cgroup_mounts() -> dict[str, tuple[Path, str]]:
    """controller -> (mount point, root inside the hierarchy); "" is the cgroup v2 mount."""
    out: dict[str, tuple[Path, str]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            sep = fields.index("-")
            fstype, opts = fields[sep + 1], fields[sep + 3].split(",")
            point = Path(fields[4].replace("\\040", " "))
            if fstype == "cgroup2":
                out.setdefault("", (point, fields[3]))
            elif fstype == "cgroup":
                for ctl in ("memory", "cpu"):
                    if ctl in opts:
                        out.setdefault(ctl, (point, fields[3]))
    return out


def own_cgroups() -> dict[str, str]:
    """controller -> the agent's cgroup path in that hierarchy; "" for cgroup v2."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctls, path = line.split(":", 2)
            for ctl in ctls.split(",") if ctls else [""]:
                out[ctl] = path
    return out
