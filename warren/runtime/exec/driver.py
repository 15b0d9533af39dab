"""The exec runtime: tasks run as plain host processes, with no image and no isolation.

It exists for hosts without containerd and for large-scale tests (ADR 5), and must be chosen
explicitly. Rules, decided here (a process is started as the container runs it by `spawn`):

- **Image.** Ignored (a note is logged once per image name). The task runs `command + args`;
  with neither, prepare fails permanently ("the exec runtime needs a command"). A missing
  executable fails permanently too ("executable file not found: X"), checked at prepare and
  again at start.
- **Process.** Own session and process group (`start_new_session`), stdin from /dev/null, stdout
  and stderr appended to `spec.log_path`, environment exactly `spec.env` plus a default PATH,
  `spec.user` honoured ("name", "uid", "name:group", "uid:gid"). Without `spec.cwd` the process
  runs in a private scratch directory, `<state_dir>/<id>/work`, never in the agent's own cwd.
- **Container options (ADR 42).** Applied where a host process has them: `--user`,
  `--workdir`, `--group-add` (setpriv; names resolved on the host), `--ulimit` (prlimit), `--dns*`
  (the task's own resolv.conf, in a mount namespace of its own), `--hostname` (a UTS namespace
  of its own, and $HOSTNAME; both namespaces need root), `--init` (tini as the task's parent, a
  subreaper). Options that need a container (`--read-only`, `--privileged`, `--cap-add/--cap-drop`,
  `--device`, `--sysctl`) fail the task at prepare with a message that names them: a task the
  operator asked to confine must not run unconfined.
- **Secrets and configs (ADR 38).** Each of `spec.files` is bind-mounted read-only over its
  target in the task's own mount namespace; a missing target is first made, empty, on the host.
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
- **Interactive exec (ADR 59).** `exec_process` runs argv the same way, with pipes for its
  stdio, or a pseudo-terminal that becomes its controlling terminal (`tty`).
- **Exec.** `exec` runs argv as a separate process with the container's env, cwd, user and
  cgroups; on timeout it kills that process's group and raises RuntimeFailure
  ("timed out after Ns"). Output is the last 64 KiB.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from signal import SIGKILL, SIGTERM

import msgspec

from warren import datadir
from warren.agent.runtime import (
    TASK_LABEL,
    ContainerSpec,
    ContainerState,
    ContainerStatus,
    ExecFailure,
    ExecProcess,
    RuntimeFailure,
)
from warren.runtime.exec import procfs
from warren.runtime.exec.cgroups import Cgroups
from warren.runtime.exec.chain import check_executable, make_mount_points, task_env
from warren.runtime.exec.interactive import start_interactive
from warren.runtime.exec.mounts import check_targets
from warren.runtime.exec.record import Record, is_ours_and_alive
from warren.runtime.exec.spawn import spawn
from warren.runtime.exec.users import resolve_groups, resolve_user
from warren.runtime.resolv import task_resolv_conf
from warren.runtime.tini import init_binary
from warren.validate import ValidationError, signal_number

log = logging.getLogger(__name__)

KILL_WAIT = 10.0  # seconds to wait for a process to die after SIGKILL before reporting failure
POLL = 0.05  # /proc polling period for processes that are not our children
EXEC_OUTPUT_LIMIT = 64 * 1024
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def cgroup_owner(state_dir: Path) -> str:
    """The suffix of the cgroup names of the exec runtime kept in `state_dir`."""
    return hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:8]


class ExecRuntime:
    """Runtime port over plain processes. Thread-safe: one lock guards the records; it is not
    held while waiting for a container to exit, so wait() and stop() never block other calls."""

    name = "exec"

    def __init__(self, state_dir: Path, cgroup_root: str | None = None, account: bool = False) -> None:
        self._dir = Path(state_dir)
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # records hold the tasks' env
        self._lock = threading.RLock()
        self._records: dict[str, Record] = {}
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._images_noted: set[str] = set()
        # With `account` every container has cgroups (per-task metrics, ADR 60): their names
        # carry this runtime's state directory, so two runtimes on one host never share one.
        self._cgroups = Cgroups(cgroup_root, cgroup_owner(self._dir), account)
        self._load()

    # -- the port ---------------------------------------------------------------------------
    def prepare(self, spec: ContainerSpec) -> str:
        spec = msgspec.structs.replace(spec, pull_login=None)  # no image to pull; and the record is on disk
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
            _check_options(spec)
            resolve_user(spec.user)
            resolve_groups(spec.options.group_add)
            if spec.cwd and not os.path.isdir(spec.cwd):
                raise RuntimeFailure(f"working directory not found: {spec.cwd}", permanent=True)
            cdir = self._dir / rid
            cwd = spec.cwd or str(cdir / "work")
            check_executable(argv[0], task_env(spec), cwd)
            check_targets(spec.mounts)
            try:
                make_mount_points(spec.files, spec.mounts)
                (cdir / "work").mkdir(parents=True, exist_ok=True)
                log_path = spec.log_path or str(cdir / "container.log")
                Path(log_path).parent.mkdir(parents=True, exist_ok=True)
                with open(log_path, "ab"):
                    pass
                spec = msgspec.structs.replace(spec, resolv_conf=task_resolv_conf(spec, cdir))
                rec = Record(rid, spec, log_path, cwd, time.time())
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
            if rec.spec.options.init:
                argv = [_init_binary(), "-s", "--", *argv]  # -s: a subreaper, not being PID 1
            try:
                with open(rec.log_path, "ab") as logf:
                    proc = spawn(rec, argv, logf)
            except RuntimeFailure as exc:
                rec.error = exc.message
                self._save(rec)
                raise
            rec.pid, rec.started_at, rec.state = proc.pid, time.time(), ContainerState.RUNNING
            rec.proc_start = (procfs.proc_stat(proc.pid) or ("", 0))[1]
            rec.boot_id = procfs.boot_id()
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
            proc = spawn(rec, argv, out)
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
    def _get(self, runtime_id: str) -> Record:
        rec = self._records.get(runtime_id)
        if rec is None:
            raise RuntimeFailure(f"no such container: {runtime_id}")
        return rec

    def exec_process(
        self, runtime_id: str, argv: builtins.list[str], tty: bool, stdin: bool, rows: int = 0, cols: int = 0
    ) -> ExecProcess:
        with self._lock:
            rec = self._records.get(runtime_id)
            if rec is not None:
                self._refresh(rec)
            if rec is None or rec.state is not ContainerState.RUNNING:
                raise ExecFailure("not_running", f"container {runtime_id} is not running")
        if not argv:
            raise ExecFailure("failed", "exec needs a command")
        return start_interactive(functools.partial(spawn, rec, argv), tty, stdin, rows, cols)

    def _refresh(self, rec: Record) -> None:
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
        elif is_ours_and_alive(rec):
            return
        rec.state, rec.finished_at = ContainerState.EXITED, time.time()
        self._save(rec)

    def _signal_group(self, rec: Record, sig: int) -> None:
        """Signal the container's process group, but only while its leader is provably ours."""
        own = rec.runtime_id in self._children  # an unreaped child's pid cannot be reused
        if not own and not is_ours_and_alive(rec):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(rec.pid, sig)

    def _kill_leftovers(self, rec: Record) -> None:
        """SIGKILL what the dead leader left behind in its cgroups and process group. Linux does
        not reuse a pid while a group of that id has members, so the group is ours unless a
        process that is not ours now holds the pid."""
        self._cgroups.kill(rec.cgroups)
        if rec.pid <= 0:
            return
        if rec.runtime_id not in self._children:  # an unreaped child's pid is ours for sure
            holder = procfs.proc_stat(rec.pid)
            if rec.boot_id != procfs.boot_id() or (holder is not None and holder[1] != rec.proc_start):
                return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(rec.pid, SIGKILL)

    def _status(self, rec: Record) -> ContainerStatus:
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

    def _save(self, rec: Record, strict: bool = False) -> None:
        """Atomic replace: a reader after kill -9 sees the old record or the new one. Only
        prepare fails on a write error; later, the in-memory state stays authoritative."""
        path = self._dir / rec.runtime_id / "record.json"
        try:
            datadir.write_atomic(path, msgspec.json.encode(rec), durable=False)
        except OSError as exc:
            if strict:
                raise
            log.warning("exec runtime: cannot save the record of %s: %s", rec.runtime_id, exc)

    def _load(self) -> None:
        for path in sorted(self._dir.glob("*/record.json")):
            try:
                rec = msgspec.json.decode(path.read_bytes(), type=Record)
            except (OSError, msgspec.DecodeError) as exc:
                log.warning("exec runtime: skipping unreadable record %s: %s", path, exc)
                continue
            self._records[rec.runtime_id] = rec
            self._refresh(rec)
        if self._records:
            log.info("exec runtime: re-adopted %d container(s) from %s", len(self._records), self._dir)


# Each option that needs a container, by the flag that sets it.
_CONTAINER_ONLY = (
    ("--read-only", lambda o: o.read_only),
    ("--privileged", lambda o: o.privileged),
    ("--cap-add", lambda o: o.cap_add),
    ("--cap-drop", lambda o: o.cap_drop),
    ("--device", lambda o: o.devices),
    ("--sysctl", lambda o: o.sysctls),
)


def _check_options(spec: ContainerSpec) -> None:
    """Refuse the options a host process cannot have, by name (see the module doc)."""
    flags = [flag for flag, given in _CONTAINER_ONLY if given(spec.options)]
    if spec.read_only_rootfs and "--read-only" not in flags:
        flags.insert(0, "--read-only")
    if flags:
        raise RuntimeFailure(
            f"the exec runtime cannot apply {', '.join(flags)}: its tasks are host processes, not containers "
            "(use the containerd runtime)",
            permanent=True,
        )
    if spec.options.init:
        _init_binary()


def _init_binary() -> str:
    path = init_binary()
    if not path:
        raise RuntimeFailure("--init needs tini on the node (Debian's tini package)", permanent=True)
    return path


def _exit_code(returncode: int) -> int:
    return returncode if returncode >= 0 else 128 - returncode


def _parse_signal(name: str) -> int:
    try:
        return signal_number(name)
    except ValidationError:
        raise RuntimeFailure(f"invalid stop signal: {name!r}", permanent=True) from None
