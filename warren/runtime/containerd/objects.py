"""One task's objects in containerd, as the containerd driver (warren.runtime.containerd.driver)
reads, signals and deletes them: its container, its task's process and the mounts of its
snapshot, each by the task's id; NOT_FOUND means gone. A failed call becomes a RuntimeFailure:
containerd unreachable, or runc's refusal of the spec (permanent: every retry meets it again).
"""

from __future__ import annotations

import re

import grpc

from warren.agent.runtime import RuntimeFailure
from warren.runtime.containerd import api
from warren.runtime.containerd.client import Client, code_of, details_of

# runc's refusals that the same spec meets again on every retry: a bad command, and container
# options the node cannot apply (a net.* sysctl without a network namespace of the task's own...).
_BAD_COMMAND_RE = re.compile(
    r"executable file not found|exec: .*(no such file or directory|permission denied|is a directory)"
    r"|sysctl \S+ not allowed|open /proc/sys/\S+: no such file or directory|error setting rlimit"
)
NOT_FOUND = grpc.StatusCode.NOT_FOUND
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


class TaskObjects:
    """The calls on a task's containerd objects; the base of ContainerdRuntime."""

    client: Client
    snapshotter: str

    def _container(self, cid: str) -> api.containers_pb2.Container | None:
        try:
            return self.client.containers.Get(
                api.containers_pb2.GetContainerRequest(id=cid), metadata=self.client.md(), timeout=self.client.timeout
            ).container
        except grpc.RpcError as exc:
            if code_of(exc) == NOT_FOUND:
                return None
            raise self._failure(exc, f"looking up container {cid}") from exc

    def _rootfs_mounts(self, cid: str) -> list[api.mount_pb2.Mount]:
        request = api.snapshots_pb2.MountsRequest(snapshotter=self.snapshotter, key=cid)
        return list(self.client.snapshots.Mounts(request, metadata=self.client.md(), timeout=30).mounts)

    def _process(self, cid: str) -> api.task_pb2.Process | None:
        try:
            return self.client.tasks.Get(
                api.tasks_pb2.GetRequest(container_id=cid), metadata=self.client.md(), timeout=self.client.timeout
            ).process
        except grpc.RpcError as exc:
            if code_of(exc) == NOT_FOUND:
                return None
            raise self._failure(exc, f"looking up the task of {cid}") from exc

    def _kill(self, cid: str, number: int, all_processes: bool = False, exec_id: str = "") -> None:
        try:
            self.client.tasks.Kill(
                api.tasks_pb2.KillRequest(container_id=cid, exec_id=exec_id, signal=number, all=all_processes),
                metadata=self.client.md(),
                timeout=self.client.timeout,
            )
        except grpc.RpcError as exc:
            if code_of(exc) not in (NOT_FOUND, FAILED_PRECONDITION):  # gone or already exited
                raise self._failure(exc, f"signalling {cid}") from exc

    def _delete_task(self, cid: str) -> None:
        try:
            self.client.tasks.Delete(
                api.tasks_pb2.DeleteTaskRequest(container_id=cid), metadata=self.client.md(), timeout=60
            )
        except grpc.RpcError as exc:
            if code_of(exc) != NOT_FOUND:
                raise

    def _delete_container(self, cid: str) -> None:
        try:
            self.client.containers.Delete(
                api.containers_pb2.DeleteContainerRequest(id=cid), metadata=self.client.md(), timeout=60
            )
        except grpc.RpcError as exc:
            if code_of(exc) != NOT_FOUND:
                raise self._failure(exc, f"deleting container {cid}") from exc

    def _failure(self, exc: grpc.RpcError, what: str) -> RuntimeFailure:
        if code_of(exc) == grpc.StatusCode.UNAVAILABLE:
            return self.client.unreachable(exc)
        details = details_of(exc)
        return RuntimeFailure(f"{what}: {details}", permanent=bool(_BAD_COMMAND_RE.search(details)))
