"""A gRPC channel to containerd's Unix socket, the stubs Warren uses, and namespace metadata.

Every call carries `containerd-namespace` (Warren's objects live in their own namespace, out
of the way of anything else on the host); pulls also carry `containerd-lease` so that content
and snapshots written half-way are not garbage-collected before the image record exists.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import re
import secrets
from collections.abc import Iterator

import grpc
from google.protobuf import empty_pb2

from warren.agent.runtime import RuntimeFailure
from warren.runtime.containerd import api

NAMESPACE = "warren"
MIN_VERSION = (1, 6)
LEASE_EXPIRY = _dt.timedelta(hours=1)


def code_of(exc: BaseException) -> grpc.StatusCode | None:
    return exc.code() if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") else None


def details_of(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "details"):
        return str(exc.details() or "")
    return str(exc)


class Client:
    """One channel to one containerd, with a stub per service. Thread-safe (gRPC channels are)."""

    def __init__(self, socket: str, namespace: str = NAMESPACE, timeout: float = 30.0) -> None:
        self.socket = socket
        self.namespace = namespace
        self.timeout = timeout
        self.channel = grpc.insecure_channel(
            f"unix://{socket}",
            options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 16 << 20)],
        )
        self.containers = api.containers_pb2_grpc.ContainersStub(self.channel)
        self.content = api.content_pb2_grpc.ContentStub(self.channel)
        self.diff = api.diff_pb2_grpc.DiffStub(self.channel)
        self.images = api.images_pb2_grpc.ImagesStub(self.channel)
        self.leases = api.leases_pb2_grpc.LeasesStub(self.channel)
        self.snapshots = api.snapshots_pb2_grpc.SnapshotsStub(self.channel)
        self.tasks = api.tasks_pb2_grpc.TasksStub(self.channel)
        self.version_service = api.version_pb2_grpc.VersionStub(self.channel)

    def md(self, lease: str = "") -> tuple[tuple[str, str], ...]:
        """Call metadata: the namespace, and the lease when one is held."""
        if lease:
            return (("containerd-namespace", self.namespace), ("containerd-lease", lease))
        return (("containerd-namespace", self.namespace),)

    def unreachable(self, exc: grpc.RpcError) -> RuntimeFailure:
        return RuntimeFailure(f"containerd at {self.socket} unreachable: {details_of(exc)}")

    def version(self, timeout: float = 5.0) -> str:
        """containerd's version; fails clearly when it is not running or too old for our protos."""
        try:
            resp = self.version_service.Version(empty_pb2.Empty(), metadata=self.md(), timeout=timeout)
        except grpc.RpcError as exc:
            raise self.unreachable(exc) from exc
        match = re.match(r"v?(\d+)\.(\d+)", resp.version)
        if match and (int(match[1]), int(match[2])) < MIN_VERSION:
            wanted = ".".join(map(str, MIN_VERSION))
            raise RuntimeFailure(f"containerd {resp.version} at {self.socket} is too old: Warren needs {wanted}+")
        return resp.version

    @contextlib.contextmanager
    def lease(self) -> Iterator[str]:
        """A lease for the duration of a pull; it expires on its own if we die half-way.

        Letting it go runs containerd's garbage collector synchronously: whatever the new
        image record does not reach through its GC labels is collected at once, not later.
        """
        expire = (_dt.datetime.now(_dt.UTC) + LEASE_EXPIRY).strftime("%Y-%m-%dT%H:%M:%SZ")
        request = api.leases_pb2.CreateRequest(
            id=f"warren-pull-{secrets.token_hex(8)}", labels={"containerd.io/gc.expire": expire}
        )
        try:
            lease_id = self.leases.Create(request, metadata=self.md(), timeout=self.timeout).lease.id
        except grpc.RpcError as exc:
            if code_of(exc) == grpc.StatusCode.UNAVAILABLE:
                raise self.unreachable(exc) from exc
            raise
        try:
            yield lease_id
        finally:
            with contextlib.suppress(grpc.RpcError):
                self.leases.Delete(
                    api.leases_pb2.DeleteRequest(id=lease_id, sync=True), metadata=self.md(), timeout=self.timeout
                )

    def close(self) -> None:
        self.channel.close()
