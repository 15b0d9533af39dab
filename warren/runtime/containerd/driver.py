"""The containerd runtime driver: `warren.agent.runtime.Runtime` on containerd's v1 gRPC API.

One task is one containerd container whose id is the task id, in the `warren` namespace, with
the task's labels (so an agent restarted after kill -9 finds its containers with `list`).
The process's stdout and stderr both go to the task's log file, which the shim appends to
(see `_output_paths` for why the file is named two ways). The shim copies output
asynchronously: a reader tailing the file sees it within milliseconds of it being written, and
it is complete once `remove` has deleted the task. Lines of stdout and stderr may interleave
out of order.

Lifecycle, as ADR 5 records it: prepare = pull if needed, Containers.Create, Snapshots.Prepare;
start = Tasks.Create with the rootfs mounts, a Tasks.Wait future, then Tasks.Start; stop =
Kill(signal), SIGKILL after the grace period; remove = Tasks.Delete, Containers.Delete,
Snapshots.Remove, each tolerating NOT_FOUND so that remove is idempotent. Those calls on one
task's containerd objects, and what a failed call means, are the driver's base (`objects`).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import re
import secrets
import signal as _signal
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc
import msgspec
from google.protobuf import any_pb2

from warren import validate
from warren.agent.runtime import (
    TASK_LABEL,
    ContainerSpec,
    ContainerState,
    ContainerStatus,
    ExecFailure,
    ExecProcess,
    RuntimeFailure,
)
from warren.runtime import resolv, tini
from warren.runtime.containerd import api, nodeside
from warren.runtime.containerd.client import NAMESPACE, Client, code_of
from warren.runtime.containerd.images import ImageInfo, ImageService
from warren.runtime.containerd.interactive import start_exec
from warren.runtime.containerd.objects import ALREADY_EXISTS, NOT_FOUND, TaskObjects
from warren.runtime.containerd.oci import (
    PROCESS_TYPE_URL,
    SPEC_TYPE_URL,
    ImageUsers,
    SpecError,
    build_spec,
    exec_process,
    needs_image_users,
)
from warren.runtime.containerd.reference import Platform
from warren.runtime.containerd.registry import NO_CREDENTIALS, Credentials, CredentialStore, RegistryClient

log = logging.getLogger(__name__)

RUNTIME = "io.containerd.runc.v2"
LOG_LABEL = "warren.log-path"
KILL_TIMEOUT = 10.0
EXEC_OUTPUT_LIMIT = 64 << 10
_ID_RE = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")  # containerd's identifier rule
_STATES = {
    api.task_pb2.CREATED: ContainerState.CREATED,
    api.task_pb2.RUNNING: ContainerState.RUNNING,
    api.task_pb2.PAUSED: ContainerState.RUNNING,
    api.task_pb2.PAUSING: ContainerState.RUNNING,
    api.task_pb2.STOPPED: ContainerState.EXITED,
}


def _seconds(ts: object) -> float:
    seconds = getattr(ts, "seconds", 0)
    return seconds + getattr(ts, "nanos", 0) / 1e9 if seconds > 0 else 0.0


def signal_number(name: str) -> int:
    """`SIGTERM`, `TERM`, `sigterm` or `15` as a signal number."""
    try:
        return validate.signal_number(name)
    except validate.ValidationError:
        raise RuntimeFailure(f"unknown stop signal {name!r}", permanent=True) from None


def _output_paths(path: Path) -> tuple[str, str]:
    """stdout and stderr for the shim: one existing regular file, named two ways.

    containerd 1.6's shim gives stdout and stderr one shared descriptor when both name the same
    file (always, with a `file://` URI) and closes it when the first stream ends, so the other
    stream's last writes can be lost (seen here: stderr lines missing from a few in a hundred
    runs). Two names for one file give each stream its own O_APPEND descriptor.
    """
    absolute = path.resolve()
    return str(absolute), f"{absolute.parent}/./{absolute.name}"


class ContainerdRuntime(TaskObjects):
    """Runs Warren tasks as containerd containers. Blocking and thread-safe, like the port asks."""

    name = "containerd"

    def __init__(
        self,
        socket: str,
        state_dir: Path,
        insecure_registries: Iterable[str] = (),
        credentials: CredentialStore = NO_CREDENTIALS,
        *,
        registry_cas: Mapping[str, Path] | None = None,
        namespace: str = NAMESPACE,
        snapshotter: str = "overlayfs",
        cgroup_parent: str = "/warren",
        platform: Platform | None = None,
    ) -> None:
        self.client = Client(socket, namespace)
        registry = RegistryClient(insecure_registries, credentials, ca_files=registry_cas)
        self.images = ImageService(self.client, registry, snapshotter, platform)
        self.snapshotter = snapshotter
        self.cgroup_parent = "/" + cgroup_parent.strip("/")
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._waits: dict[str, grpc.Future] = {}
        self._started: dict[str, float] = {}
        self._lock = threading.Lock()
        self._capabilities = nodeside.node_capabilities()

    def check(self) -> str:
        """containerd's version, or a RuntimeFailure saying why it cannot be used (agent startup)."""
        return self.client.version()

    def close(self) -> None:
        self.client.close()

    def import_archive(self, path: str | Path, name: str = "") -> list[str]:
        """Load an OCI archive for air-gapped hosts (see ImageService.import_archive)."""
        return self.images.import_archive(path, name)

    # -- the Runtime port ---------------------------------------------------------------------

    def prepare(self, spec: ContainerSpec) -> str:
        cid = spec.task_id
        if not _ID_RE.fullmatch(cid) or len(cid) > 76:
            raise RuntimeFailure(f"task id {cid!r} is not a valid container id", permanent=True)
        if self._container(cid) is not None:
            return cid
        login = spec.pull_login
        image = self.images.ensure(spec.image, Credentials(login.username, login.password) if login else None)
        if not needs_image_users(spec, image.config):
            return self._create(spec, image)
        # A user or group named: the root filesystem first, to read its /etc/passwd and
        # /etc/group, held by a lease until the container references it (a failure lets the
        # lease go, and containerd collects the snapshot).
        with self.client.lease() as lease:
            request = api.snapshots_pb2.PrepareSnapshotRequest(
                snapshotter=self.snapshotter, key=cid, parent=image.chain_id
            )
            try:
                self.client.snapshots.Prepare(request, metadata=self.client.md(lease), timeout=60)
                mounts = self._rootfs_mounts(cid)
            except grpc.RpcError as exc:
                raise self._failure(exc, f"preparing the root filesystem of {cid}") from exc
            return self._create(spec, image, nodeside.read_image_users(mounts))

    def _create(self, spec: ContainerSpec, image: ImageInfo, image_users: ImageUsers | None = None) -> str:
        """The container, with its runtime spec, and its root filesystem (if not made yet)."""
        cid = spec.task_id
        resolv_conf = resolv.task_resolv_conf(spec, self.state_dir / "resolv")
        try:
            oci = build_spec(
                msgspec.structs.replace(spec, resolv_conf=resolv_conf),
                image.config,
                cgroups_path=f"{self.cgroup_parent}/{cid}",
                devices=nodeside.task_devices(spec),
                init_binary=tini.init_binary() if spec.options.init else "",
                available_capabilities=self._capabilities,
                image_users=image_users,
            )
        except SpecError as exc:
            raise RuntimeFailure(str(exc), permanent=True) from exc
        log_path = Path(spec.log_path or self.state_dir / "logs" / f"{cid}.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch(exist_ok=True)
        pb = api.containers_pb2
        health = nodeside.image_health_label(image.config)
        container = pb.Container(
            id=cid,
            labels={**spec.labels, **health, TASK_LABEL: cid, LOG_LABEL: str(log_path)},
            image=image.name,
            runtime=pb.Container.Runtime(name=RUNTIME),
            spec=any_pb2.Any(type_url=SPEC_TYPE_URL, value=json.dumps(oci).encode()),
            snapshotter=self.snapshotter,
            snapshot_key=cid,
        )
        md, timeout = self.client.md(), self.client.timeout
        try:
            # The container first: it then references the snapshot, which GC can never collect.
            self.client.containers.Create(pb.CreateContainerRequest(container=container), metadata=md, timeout=timeout)
        except grpc.RpcError as exc:
            if code_of(exc) == ALREADY_EXISTS:
                return cid
            raise self._failure(exc, f"creating container {cid}") from exc
        request = api.snapshots_pb2.PrepareSnapshotRequest(snapshotter=self.snapshotter, key=cid, parent=image.chain_id)
        try:
            self.client.snapshots.Prepare(request, metadata=md, timeout=60)
        except grpc.RpcError as exc:
            if code_of(exc) != ALREADY_EXISTS:
                self._delete_container(cid)
                raise self._failure(exc, f"preparing the root filesystem of {cid}") from exc
        return cid

    def start(self, runtime_id: str) -> None:
        cid, md = runtime_id, self.client.md()
        container = self._container(cid)
        if container is None:
            raise RuntimeFailure(f"container {cid} does not exist (prepare it first)")
        log_path = Path(container.labels.get(LOG_LABEL) or self.state_dir / "logs" / f"{cid}.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch(exist_ok=True)
        try:
            mounts = self._rootfs_mounts(cid)
            stdout, stderr = _output_paths(log_path)
            self.client.tasks.Create(
                api.tasks_pb2.CreateTaskRequest(container_id=cid, rootfs=mounts, stdout=stdout, stderr=stderr),
                metadata=md,
                timeout=60,
            )
        except grpc.RpcError as exc:
            if code_of(exc) != ALREADY_EXISTS:
                raise self._failure(exc, f"creating the task of {cid}") from exc
            process = self._process(cid)
            if process is not None and process.status != api.task_pb2.CREATED:
                return  # already started: start is idempotent
        self._wait_future(cid)  # before Start, so that even an instant exit is observed
        started = time.time()
        try:
            self.client.tasks.Start(api.tasks_pb2.StartRequest(container_id=cid), metadata=md, timeout=60)
        except grpc.RpcError as exc:
            raise self._failure(exc, f"starting {cid}") from exc
        with self._lock:
            self._started[cid] = started

    def wait(self, runtime_id: str, timeout: float | None = None) -> ContainerStatus | None:
        future = self._wait_future(runtime_id)
        try:
            resp = future.result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return None
        except grpc.RpcError as exc:
            if code_of(exc) == NOT_FOUND:
                raise RuntimeFailure(f"container {runtime_id} has no process to wait for") from exc
            raise self._failure(exc, f"waiting for {runtime_id}") from exc
        return self._exited(runtime_id, resp.exit_status, resp.exited_at)

    def stop(self, runtime_id: str, grace_period: float, signal: str = "SIGTERM") -> ContainerStatus:
        cid = runtime_id
        number = signal_number(signal)
        process = self._process(cid)
        if process is None:
            return self.status(cid)
        if process.status == api.task_pb2.STOPPED:
            return self._exited(cid, process.exit_status, process.exited_at, process.pid)
        future = self._wait_future(cid)
        self._kill(cid, number)
        try:
            resp = future.result(timeout=max(0.0, grace_period))
        except grpc.FutureTimeoutError:
            self._kill(cid, _signal.SIGKILL, all_processes=True)
            try:
                resp = future.result(timeout=KILL_TIMEOUT)
            except grpc.FutureTimeoutError:
                raise RuntimeFailure(f"container {cid} is still running {KILL_TIMEOUT:.0f}s after SIGKILL") from None
        except grpc.RpcError as exc:
            raise self._failure(exc, f"stopping {cid}") from exc
        return self._exited(cid, resp.exit_status, resp.exited_at, process.pid)

    def remove(self, runtime_id: str) -> None:
        cid, md = runtime_id, self.client.md()
        with self._lock:
            self._waits.pop(cid, None)  # a Wait in flight ends by itself when the process is gone
            self._started.pop(cid, None)
        process = self._process(cid)
        if process is not None and process.status != api.task_pb2.STOPPED:  # running: kill it first
            self._kill(cid, _signal.SIGKILL, all_processes=True)
            with contextlib.suppress(grpc.RpcError):
                self.client.tasks.Wait(api.tasks_pb2.WaitRequest(container_id=cid), metadata=md, timeout=KILL_TIMEOUT)
        try:
            self._delete_task(cid)
        except grpc.RpcError as exc:
            raise self._failure(exc, f"deleting the task of {cid}") from exc
        self._delete_container(cid)
        resolv.remove_resolv_conf(cid, self.state_dir / "resolv")
        try:
            self.client.snapshots.Remove(
                api.snapshots_pb2.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=cid), metadata=md, timeout=60
            )
        except grpc.RpcError as exc:
            if code_of(exc) != NOT_FOUND:
                raise self._failure(exc, f"removing the root filesystem of {cid}") from exc

    def status(self, runtime_id: str) -> ContainerStatus:
        container = self._container(runtime_id)
        if container is None:
            return ContainerStatus(runtime_id, ContainerState.UNKNOWN)
        return self._status(runtime_id, dict(container.labels), self._process(runtime_id))

    def list(self) -> list[ContainerStatus]:
        md, timeout = self.client.md(), self.client.timeout
        try:
            containers = self.client.containers.List(
                api.containers_pb2.ListContainersRequest(filters=[f'labels."{TASK_LABEL}"']),
                metadata=md,
                timeout=timeout,
            ).containers
            tasks = self.client.tasks.List(api.tasks_pb2.ListTasksRequest(), metadata=md, timeout=timeout).tasks
        except grpc.RpcError as exc:
            raise self._failure(exc, "listing containers") from exc
        by_id = {t.container_id or t.id: t for t in tasks}  # List fills `id` with the container id
        return [self._status(c.id, dict(c.labels), by_id.get(c.id)) for c in containers]

    def exec(self, runtime_id: str, argv: builtins.list[str], timeout: float) -> tuple[int, str]:
        """Run `argv` in the running container: (exit code, stdout and stderr capped at 64 KiB).

        As in the exec driver, a command that cannot be executed (permanent) and one still
        running after `timeout` (killed) raise RuntimeFailure; health checks count both as failed.
        """
        cid, md = runtime_id, self.client.md()
        if not argv:
            raise RuntimeFailure("exec needs a command", permanent=True)
        container = self._container(cid)
        process = self._process(cid) if container is not None else None
        if container is None or process is None or process.status != api.task_pb2.RUNNING:
            raise RuntimeFailure(f"container {cid} is not running")
        spec = json.loads(container.spec.value or b"{}")
        exec_id = f"exec-{secrets.token_hex(6)}"
        out_dir = self.state_dir / "exec"
        out_dir.mkdir(parents=True, exist_ok=True)
        out_path = out_dir / f"{cid}-{exec_id}.out"
        out_path.touch()
        stdout, stderr = _output_paths(out_path)
        future = None
        try:
            self.client.tasks.Exec(
                api.tasks_pb2.ExecProcessRequest(
                    container_id=cid,
                    exec_id=exec_id,
                    stdout=stdout,
                    stderr=stderr,
                    spec=any_pb2.Any(type_url=PROCESS_TYPE_URL, value=json.dumps(exec_process(spec, argv)).encode()),
                ),
                metadata=md,
                timeout=30,
            )
            future = self.client.tasks.Wait.future(
                api.tasks_pb2.WaitRequest(container_id=cid, exec_id=exec_id), metadata=md
            )
            self.client.tasks.Start(
                api.tasks_pb2.StartRequest(container_id=cid, exec_id=exec_id), metadata=md, timeout=30
            )
            try:
                code = future.result(timeout=timeout).exit_status
            except grpc.FutureTimeoutError:
                self._kill(cid, _signal.SIGKILL, exec_id=exec_id)
                with contextlib.suppress(grpc.FutureTimeoutError, grpc.RpcError):
                    future.result(timeout=KILL_TIMEOUT)
                raise RuntimeFailure(f"timed out after {timeout:g}s") from None
            except grpc.RpcError as exc:
                raise self._failure(exc, f"exec in {cid}") from exc
        except grpc.RpcError as exc:
            raise self._failure(exc, f"exec in {cid}") from exc
        finally:
            if future is not None and not future.done():
                future.cancel()
            with contextlib.suppress(grpc.RpcError):
                self.client.tasks.DeleteProcess(
                    api.tasks_pb2.DeleteProcessRequest(container_id=cid, exec_id=exec_id), metadata=md, timeout=30
                )
            output = _tail(out_path, EXEC_OUTPUT_LIMIT)
            with contextlib.suppress(OSError):
                out_path.unlink()
        return code, output

    def exec_process(
        self, runtime_id: str, argv: builtins.list[str], tty: bool, stdin: bool, rows: int = 0, cols: int = 0
    ) -> ExecProcess:
        """An operator's exec (ADR 59): Tasks.Exec with FIFOs (warren.runtime.containerd.interactive)."""
        cid = runtime_id
        if not argv:
            raise ExecFailure("failed", "exec needs a command")
        container = self._container(cid)
        process = self._process(cid) if container is not None else None
        if container is None or process is None or process.status != api.task_pb2.RUNNING:
            raise ExecFailure("not_running", f"container {cid} is not running")
        spec = json.loads(container.spec.value or b"{}")
        return start_exec(self.client, self.state_dir, cid, spec, argv, tty, stdin, rows, cols)

    # -- statuses and the shared wait ---------------------------------------------------------

    def _status(self, cid: str, labels: dict[str, str], process: api.task_pb2.Process | None) -> ContainerStatus:
        started = self._started.get(cid, 0.0)
        if process is None:
            return ContainerStatus(cid, ContainerState.CREATED, labels=labels)
        state = _STATES.get(process.status, ContainerState.UNKNOWN)
        if state is ContainerState.EXITED:
            return ContainerStatus(
                cid,
                state,
                exit_code=process.exit_status,
                pid=process.pid,
                started_at=started,
                finished_at=_seconds(process.exited_at),
                labels=labels,
            )
        return ContainerStatus(cid, state, pid=process.pid, started_at=started, labels=labels)

    def _exited(self, cid: str, exit_status: int, exited_at: object, pid: int = 0) -> ContainerStatus:
        return ContainerStatus(
            cid,
            ContainerState.EXITED,
            exit_code=exit_status,
            pid=pid,
            started_at=self._started.get(cid, 0.0),
            finished_at=_seconds(exited_at) or time.time(),
        )

    def _wait_future(self, cid: str) -> grpc.Future:
        """One Tasks.Wait call per container, shared by every waiter; renewed if it failed."""
        with self._lock:
            future = self._waits.get(cid)
            if future is not None and not future.cancelled() and (not future.done() or future.exception() is None):
                return future
            future = self.client.tasks.Wait.future(
                api.tasks_pb2.WaitRequest(container_id=cid), metadata=self.client.md()
            )
            self._waits[cid] = future
            return future


def _tail(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
