"""The exec runtime: tasks run as plain host processes, with no image and no isolation.

It exists for hosts without containerd and for large-scale tests (ADR 5), and must be chosen
explicitly. Rules, decided here:

- **Image.** Ignored (a note is logged once per image name). The task runs `command + args`;
  with neither, prepare fails permanently ("the exec runtime needs a command"). A missing
  executable fails permanently too ("executable file not found: X"), checked at prepare and
  again at start.
- **Process.** Own session and process group (`start_new_session`), stdin from /dev/null, stdout
  and stderr appended to `spec.log_path`, environment exactly `spec.env` plus a default PATH,
  `spec.user` honoured ("name", "uid", "name:group", "uid:gid"). Without `spec.cwd` the process
  runs in a private scratch directory, `<state_dir>/<id>/work`, never in the agent's own cwd.
  `read_only_rootfs` cannot be honoured and is ignored.
- **Network (ADR 17).** With `spec.netns` the process joins that network namespace; with
  `resolv_conf` too it also gets a mount namespace of its own in which that file is
  bind-mounted read-only over /etc/resolv.conf (the host's file and mounts stay as they were).
  Every step of the chain (nsenter, unshare, the mount and cgroup shims, setpriv) execs the next
  without forking, so the pid the driver started is the task's. When a step needs privileges
  (namespaces, cgroups), `spec.user` is applied by setpriv at the end of the chain, not before it.
- **Limits.** Memory and CPU limits go into a per-container cgroup (v1 `memory.limit_in_bytes`,
  `cpu.cfs_quota_us`; v2 `memory.max`, `cpu.max`) under `<the agent's own cgroup>/warren-exec`,
  or under `cgroup_root` (a path relative to each hierarchy's root, e.g. "/warren"). If the host
  does not let us, the container runs unlimited and one warning is logged. The process joins
  its cgroup through a `/bin/sh` shim before it execs, so nothing it forks escapes.
- **State.** One directory per container, `<state_dir>/<runtime id>/`, holding `record.json`
  (task id, spec, pid, the process's start time from /proc/<pid>/stat and the boot id, exit
  status when known). A new `ExecRuntime` on the same directory (after the agent was killed -9)
  re-adopts still-running processes. The runtime id is the task id.
- **Exit status.** Own children are reaped with waitpid; a signal death is reported as 128+N,
  like Docker. A re-adopted process is not our child, so its death is noticed by polling /proc
  and reported as EXITED with `exit_code` None (unknown) and `finished_at` = when we noticed.
- **PID reuse.** A pid counts as ours only while its start time and the boot id match the
  record; a process group is signalled only after that check.
- **Stop and remove.** `stop` signals the process group, SIGKILLs it after the grace period,
  then SIGKILLs whatever is left in the group or cgroup. `remove` kills a still-running
  container (like `docker rm -f`) and deletes its directory and cgroups; a `log_path` that the
  agent chose is the agent's to delete. `stop` and `remove` of an unknown id are no-ops.
- **Exec.** `exec` runs argv as a separate process with the container's env, cwd, user and
  cgroups; on timeout it kills that process's group and raises RuntimeFailure
  ("timed out after Ns"). Output is the last 64 KiB.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import grp
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from signal import SIGKILL, SIGTERM
from typing import IO, TypedDict

import msgspec

from warren.agent.runtime import TASK_LABEL, ContainerSpec, ContainerState, ContainerStatus, RuntimeFailure
from warren.model import Resources
from warren.text import ascii_int
from warren.validate import ValidationError, signal_number

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # Docker's default
KILL_WAIT = 10.0  # seconds to wait for a process to die after SIGKILL before reporting failure
POLL = 0.05  # /proc polling period for processes that are not our children
EXEC_OUTPUT_LIMIT = 64 * 1024
CFS_PERIOD_US = 100_000
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Joins each cgroup named before "--", then execs the rest: the process is limited from its first instruction.
_CGROUP_SHIM = (
    'for f; do [ "$f" = -- ] && break; echo $$ > "$f" || echo "warren: cannot join cgroup $f" >&2; shift; done; '
    'shift; exec "$@"'
)
# Bind-mounts $2 read-only over /etc/resolv.conf with the mount binary $1, then execs the rest.
# Read-only: the file is the agent's, shared by every task on the node.
_RESOLV_SHIM = (
    '"$1" --bind -o ro -- "$2" /etc/resolv.conf || '
    '{ echo "warren: cannot mount $2 over /etc/resolv.conf" >&2; exit 125; }; '
    'shift 2; exec "$@"'
)


class _Record(msgspec.Struct):
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


class ExecRuntime:
    """Runtime port over plain processes. Thread-safe: one lock guards the records; it is not
    held while waiting for a container to exit, so wait() and stop() never block other calls."""

    name = "exec"

    def __init__(self, state_dir: Path, cgroup_root: str | None = None) -> None:
        self._dir = Path(state_dir)
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # records hold the tasks' env
        self._lock = threading.RLock()
        self._records: dict[str, _Record] = {}
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._images_noted: set[str] = set()
        self._cgroups = _Cgroups(cgroup_root)
        self._load()

    # -- the port ---------------------------------------------------------------------------
    def prepare(self, spec: ContainerSpec) -> str:
        rid = spec.task_id
        if not _ID_RE.fullmatch(rid):
            raise RuntimeFailure(f"invalid task id for the exec runtime: {rid!r}", permanent=True)
        with self._lock:
            if rid in self._records:
                return rid
            argv = [*spec.command, *spec.args]
            if not argv:
                raise RuntimeFailure("the exec runtime needs a command", permanent=True)
            if spec.image not in self._images_noted:
                self._images_noted.add(spec.image)
                log.info("exec runtime: ignoring image %r, running the task's command on the host", spec.image)
            _parse_signal(spec.stop_signal)
            _resolve_user(spec.user)
            if spec.cwd and not os.path.isdir(spec.cwd):
                raise RuntimeFailure(f"working directory not found: {spec.cwd}", permanent=True)
            cdir = self._dir / rid
            cwd = spec.cwd or str(cdir / "work")
            _check_executable(argv[0], _env(spec), cwd)
            try:
                (cdir / "work").mkdir(parents=True, exist_ok=True)
                log_path = spec.log_path or str(cdir / "container.log")
                Path(log_path).parent.mkdir(parents=True, exist_ok=True)
                with open(log_path, "ab"):
                    pass
                rec = _Record(rid, spec, log_path, cwd, time.time())
                rec.cgroups = self._cgroups.create(rid, spec.limits)
                self._save(rec, strict=True)
            except OSError as exc:
                shutil.rmtree(cdir, ignore_errors=True)
                raise RuntimeFailure(f"cannot prepare container {rid}: {exc}") from exc
            self._records[rid] = rec
            return rid

    def start(self, runtime_id: str) -> None:
        with self._lock:
            rec = self._get(runtime_id)
            self._refresh(rec)
            if rec.state is ContainerState.RUNNING:
                return
            if rec.state is ContainerState.EXITED:
                raise RuntimeFailure(f"container {runtime_id} has already run")
            argv = [*rec.spec.command, *rec.spec.args]
            try:
                with open(rec.log_path, "ab") as logf:
                    proc = self._spawn(rec, argv, logf)
            except RuntimeFailure as exc:
                rec.error = exc.message
                self._save(rec)
                raise
            rec.pid, rec.started_at, rec.state = proc.pid, time.time(), ContainerState.RUNNING
            rec.proc_start = (_proc_stat(proc.pid) or ("", 0))[1]
            rec.boot_id = _boot_id()
            self._children[runtime_id] = proc
            self._save(rec)

    def wait(self, runtime_id: str, timeout: float | None = None) -> ContainerStatus | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        first = True
        while True:
            with self._lock:
                rec = self._records.get(runtime_id)
                if rec is None:
                    if first:
                        raise RuntimeFailure(f"no such container: {runtime_id}")
                    return ContainerStatus(runtime_id, ContainerState.UNKNOWN, error="removed while waiting")
                self._refresh(rec)
                if rec.state is ContainerState.EXITED:
                    return self._status(rec)
                child = self._children.get(runtime_id)
            first = False
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(remaining)
            else:  # not our child (re-adopted) or not started yet: poll
                time.sleep(POLL if remaining is None else min(POLL, remaining))

    def stop(self, runtime_id: str, grace_period: float, signal: str = "SIGTERM") -> ContainerStatus:
        try:
            sig = _parse_signal(signal)
        except RuntimeFailure:
            log.warning("exec runtime: unknown stop signal %r, using SIGTERM", signal)
            sig = SIGTERM
        with self._lock:
            rec = self._records.get(runtime_id)
            if rec is None:
                return ContainerStatus(runtime_id, ContainerState.UNKNOWN)
            self._refresh(rec)
            if rec.state is ContainerState.CREATED:
                rec.state, rec.finished_at, rec.error = ContainerState.EXITED, time.time(), "stopped before start"
                self._save(rec)
            if rec.state is ContainerState.EXITED:
                return self._status(rec)
            self._signal_group(rec, sig)
        status = self.wait(runtime_id, grace_period) if sig != SIGKILL else None
        if status is None:
            with self._lock:
                rec = self._records.get(runtime_id)
                if rec is not None:
                    self._refresh(rec)
                    if rec.state is ContainerState.RUNNING:
                        self._signal_group(rec, SIGKILL)
            status = self.wait(runtime_id, KILL_WAIT)
            if status is None:
                raise RuntimeFailure(f"container {runtime_id}: process {rec.pid if rec else '?'} survived SIGKILL")
        with self._lock:
            rec = self._records.get(runtime_id)
            if rec is not None:
                self._kill_leftovers(rec)
        return status

    def remove(self, runtime_id: str) -> None:
        with self._lock:
            rec = self._records.get(runtime_id)
            if rec is None:
                return
            self._refresh(rec)
            running = rec.state is ContainerState.RUNNING
        if running:
            self.stop(runtime_id, 0, "SIGKILL")
        with self._lock:
            rec = self._records.pop(runtime_id, None)
            self._children.pop(runtime_id, None)
            if rec is None:
                return
            self._kill_leftovers(rec)
            self._cgroups.destroy(rec.cgroups)
            shutil.rmtree(self._dir / runtime_id, ignore_errors=True)

    def status(self, runtime_id: str) -> ContainerStatus:
        with self._lock:
            rec = self._records.get(runtime_id)
            if rec is None:
                return ContainerStatus(runtime_id, ContainerState.UNKNOWN)
            self._refresh(rec)
            return self._status(rec)

    def list(self) -> list[ContainerStatus]:
        with self._lock:
            out = []
            for rec in self._records.values():
                self._refresh(rec)
                out.append(self._status(rec))
            return out

    def exec(self, runtime_id: str, argv: builtins.list[str], timeout: float) -> tuple[int, str]:
        with self._lock:
            rec = self._get(runtime_id)
            self._refresh(rec)
            if rec.state is not ContainerState.RUNNING:
                raise RuntimeFailure(f"container {runtime_id} is not running")
            if not argv:
                raise RuntimeFailure("exec needs a command", permanent=True)
        with tempfile.TemporaryFile() as out:
            proc = self._spawn(rec, argv, out)
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, SIGKILL)  # still our unreaped child: the pid is ours
                proc.wait()
                raise RuntimeFailure(f"timed out after {timeout:g}s") from None
            size = out.seek(0, os.SEEK_END)
            out.seek(max(0, size - EXEC_OUTPUT_LIMIT))
            return _exit_code(code), out.read().decode("utf-8", "replace")

    # -- internals --------------------------------------------------------------------------
    def _get(self, runtime_id: str) -> _Record:
        rec = self._records.get(runtime_id)
        if rec is None:
            raise RuntimeFailure(f"no such container: {runtime_id}")
        return rec

    def _spawn(self, rec: _Record, argv: builtins.list[str], out: IO[bytes]) -> subprocess.Popen[bytes]:
        """Start argv as the container would run it (env, cwd, user, cgroups), in a new session."""
        spec = rec.spec
        env = _env(spec)
        exe = _check_executable(argv[0], env, rec.cwd)
        uid, gid = _resolve_user(spec.user)
        user = (uid, gid or 0) if uid is not None and uid != os.geteuid() else None
        procs = [str(Path(d) / "cgroup.procs") for d in rec.cgroups]
        argv, exe, user = _command(argv, exe, procs=procs, netns=spec.netns, resolv_conf=spec.resolv_conf, user=user)
        creds: _Credentials = {}
        if user is not None:
            creds = {"user": user[0], "group": user[1], "extra_groups": []}
        try:
            return subprocess.Popen(
                argv,
                executable=exe,
                env=env,
                cwd=rec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                **creds,
            )
        except FileNotFoundError as exc:
            raise RuntimeFailure(f"executable file not found: {argv[0]}", permanent=True) from exc
        except PermissionError as exc:
            raise RuntimeFailure(f"cannot start {argv[0]}: {exc.strerror or exc}", permanent=True) from exc
        except OSError as exc:
            raise RuntimeFailure(f"cannot start {argv[0]}: {exc}") from exc

    def _refresh(self, rec: _Record) -> None:
        """Notice a RUNNING process's exit (lock held)."""
        if rec.state is not ContainerState.RUNNING:
            return
        child = self._children.get(rec.runtime_id)
        if child is not None:
            code = child.poll()
            if code is None:
                return
            del self._children[rec.runtime_id]
            rec.exit_code = _exit_code(code)
        elif _is_ours_and_alive(rec):
            return
        rec.state, rec.finished_at = ContainerState.EXITED, time.time()
        self._save(rec)

    def _signal_group(self, rec: _Record, sig: int) -> None:
        """Signal the container's process group, but only while its leader is provably ours."""
        own = rec.runtime_id in self._children  # an unreaped child's pid cannot be reused
        if not own and not _is_ours_and_alive(rec):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(rec.pid, sig)

    def _kill_leftovers(self, rec: _Record) -> None:
        """SIGKILL what the dead leader left behind in its cgroups and process group. Linux does
        not reuse a pid while a group of that id has members, so the group is ours unless a
        process that is not ours now holds the pid."""
        self._cgroups.kill(rec.cgroups)
        if rec.pid <= 0:
            return
        if rec.runtime_id not in self._children:  # an unreaped child's pid is ours for sure
            holder = _proc_stat(rec.pid)
            if rec.boot_id != _boot_id() or (holder is not None and holder[1] != rec.proc_start):
                return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(rec.pid, SIGKILL)

    def _status(self, rec: _Record) -> ContainerStatus:
        return ContainerStatus(
            runtime_id=rec.runtime_id,
            state=rec.state,
            exit_code=rec.exit_code,
            pid=rec.pid,
            started_at=rec.started_at,
            finished_at=rec.finished_at,
            labels={TASK_LABEL: rec.spec.task_id, **rec.spec.labels},
            error=rec.error,
        )

    def _save(self, rec: _Record, strict: bool = False) -> None:
        """Atomic replace: a reader after kill -9 sees the old record or the new one. Only
        prepare fails on a write error; later, the in-memory state stays authoritative."""
        path = self._dir / rec.runtime_id / "record.json"
        tmp = path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(msgspec.json.encode(rec))
            os.replace(tmp, path)
        except OSError as exc:
            if strict:
                raise
            log.warning("exec runtime: cannot save the record of %s: %s", rec.runtime_id, exc)

    def _load(self) -> None:
        for path in sorted(self._dir.glob("*/record.json")):
            try:
                rec = msgspec.json.decode(path.read_bytes(), type=_Record)
            except (OSError, msgspec.DecodeError) as exc:
                log.warning("exec runtime: skipping unreadable record %s: %s", path, exc)
                continue
            self._records[rec.runtime_id] = rec
            self._refresh(rec)
        if self._records:
            log.info("exec runtime: re-adopted %d container(s) from %s", len(self._records), self._dir)


# -- processes ---------------------------------------------------------------------------------


def _tool(name: str) -> str:
    """An absolute path for a helper of the exec chain: the task's own PATH may not find it."""
    return shutil.which(name) or f"/usr/bin/{name}"


def _command(
    argv: list[str],
    exe: str,
    *,
    procs: list[str],
    netns: str,
    resolv_conf: str,
    user: tuple[int, int] | None,
) -> tuple[list[str], str, tuple[int, int] | None]:
    """(argv, executable, user for Popen) that run `argv` in the task's cgroups (`procs`, their
    cgroup.procs files), network namespace and resolv.conf, as `user` (uid, gid).

    Outermost first: nsenter (network), unshare (a mount namespace for resolv.conf), the resolv
    shim, the cgroup shim, setpriv (user), the task. None of them forks, so the pid Popen
    returns ends up being the task's. Entering namespaces and joining cgroups needs root, so a
    user change moves from Popen to setpriv, the last step, whenever there is such a step.
    """
    if not procs and not netns:
        return argv, exe, user
    if user is not None:
        uid, gid = user
        argv = [_tool("setpriv"), f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv]
    if procs:
        argv = ["/bin/sh", "-c", _CGROUP_SHIM, "warren-exec", *procs, "--", *argv]
    if netns and resolv_conf:
        # rslave, not private: the host's later unmounts still reach the task, so a long-lived task
        # does not pin the host's filesystems; nothing mounted in here propagates to the host.
        resolv = ["/bin/sh", "-c", _RESOLV_SHIM, "warren-resolv", _tool("mount"), resolv_conf, *argv]
        argv = [_tool("unshare"), "--mount", "--propagation", "slave", "--", *resolv]
    if netns:
        argv = [_tool("nsenter"), f"--net={netns}", "--", *argv]
    return argv, argv[0], None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in ticks) from /proc/<pid>/stat, or None if no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = data[data.rfind(")") + 2 :].split()  # comm may contain spaces and parentheses
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


@functools.cache
def _boot_id() -> str:
    """Distinguishes this boot from the one a record was written in: pids restart at boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _is_ours_and_alive(rec: _Record) -> bool:
    """The recorded process still runs: same boot, same pid, same start time, not a zombie."""
    if rec.pid <= 0 or rec.boot_id != _boot_id():
        return False
    st = _proc_stat(rec.pid)
    return st is not None and st[1] == rec.proc_start and st[0] not in ("Z", "X", "x")


def _exit_code(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode


def _parse_signal(name: str) -> int:
    try:
        return signal_number(name)
    except ValidationError:
        raise RuntimeFailure(f"invalid stop signal: {name!r}", permanent=True) from None


def _env(spec: ContainerSpec) -> dict[str, str]:
    env = dict(spec.env)
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def _check_executable(name: str, env: dict[str, str], cwd: str) -> str:
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


class _Credentials(TypedDict, total=False):
    """Popen's arguments to run as another user; none at all to run as the agent's."""

    user: int
    group: int
    extra_groups: list[int]


def _resolve_user(user: str) -> tuple[int | None, int | None]:
    """(uid, gid) for "name", "uid", "name:group" or "uid:gid"; (None, None) for the agent's user."""
    if not user:
        return None, None
    name, _, group = user.partition(":")
    number, group_number = ascii_int(name), ascii_int(group)
    entry = None
    try:
        entry = pwd.getpwuid(number) if number is not None else pwd.getpwnam(name)
    except (KeyError, OverflowError):
        if number is None:
            msg = f"unable to find user {name}: no matching entries in passwd file"
            raise RuntimeFailure(msg, permanent=True) from None
    uid = number if number is not None else entry.pw_uid  # type: ignore[union-attr]
    if not group:
        return uid, entry.pw_gid if entry else 0
    if group_number is not None:
        return uid, group_number
    try:
        return uid, grp.getgrnam(group).gr_gid
    except KeyError:
        msg = f"unable to find group {group}: no matching entries in group file"
        raise RuntimeFailure(msg, permanent=True) from None


# -- cgroups -----------------------------------------------------------------------------------
class _Cgroups:
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
        mounts = _cgroup_mounts()
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
        except (OSError, _NoCgroups) as exc:
            for base in set(bases.values()):
                with contextlib.suppress(OSError):
                    base.rmdir()
            log.warning("exec runtime: memory/CPU limits are not enforced on this host: %s", exc)
            return self._bases
        self._bases = bases
        return bases

    def _find_bases(self) -> dict[str, Path]:
        mounts, own = _cgroup_mounts(), _own_cgroups()
        self._version = self._detect_version()
        if self._version == 1:
            for ctl in ("memory", "cpu"):
                if ctl not in mounts or ctl not in own:
                    raise _NoCgroups(f"no cgroup v1 {ctl} hierarchy")
            return {ctl: self._base(mounts[ctl], own[ctl]) for ctl in ("memory", "cpu")}
        if self._version == 2 and "" in own:
            base = self._base(mounts[""], own[""])
            return {"memory": base, "cpu": base}
        raise _NoCgroups("no cgroup filesystem mounted")

    def _base(self, mount: tuple[Path, str], own: str) -> Path:
        point, mroot = mount
        path = self._root if self._root is not None else own.rstrip("/") + "/warren-exec"
        inside = mroot == "/" or path == mroot or path.startswith(mroot.rstrip("/") + "/")
        return point / (os.path.relpath(path, mroot) if inside else path.lstrip("/"))


class _NoCgroups(Exception):
    pass


def _cgroup_mounts() -> dict[str, tuple[Path, str]]:
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


def _own_cgroups() -> dict[str, str]:
    """controller -> the agent's cgroup path in that hierarchy; "" for cgroup v2."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctls, path = line.split(":", 2)
            for ctl in ctls.split(",") if ctls else [""]:
                out[ctl] = path
    return out
