"""The generated containerd v1 API modules, under short names.

`make proto` compiles `proto/containerd/**.proto` into `_gen/containerd/...` (git-ignored,
ADR 7). protoc's Python output imports its dependencies absolutely (`from containerd.types
import mount_pb2`), so `_gen` is put at the front of `sys.path` once, here, and nothing else
imports the `containerd` package directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

_GEN = Path(__file__).resolve().parent / "_gen"

if not (_GEN / "containerd" / "services" / "tasks" / "v1" / "tasks_pb2.py").exists():
    raise ImportError(f"containerd API stubs are missing from {_GEN}: run `make proto`")
if str(_GEN) not in sys.path:
    sys.path.insert(0, str(_GEN))

from containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc  # noqa: E402
from containerd.services.content.v1 import content_pb2, content_pb2_grpc  # noqa: E402
from containerd.services.diff.v1 import diff_pb2, diff_pb2_grpc  # noqa: E402
from containerd.services.images.v1 import images_pb2, images_pb2_grpc  # noqa: E402
from containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc  # noqa: E402
from containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc  # noqa: E402
from containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc  # noqa: E402
from containerd.services.version.v1 import version_pb2, version_pb2_grpc  # noqa: E402
from containerd.types import descriptor_pb2, mount_pb2  # noqa: E402
from containerd.types.task import task_pb2  # noqa: E402

__all__ = [
    "containers_pb2",
    "containers_pb2_grpc",
    "content_pb2",
    "content_pb2_grpc",
    "descriptor_pb2",
    "diff_pb2",
    "diff_pb2_grpc",
    "images_pb2",
    "images_pb2_grpc",
    "leases_pb2",
    "leases_pb2_grpc",
    "mount_pb2",
    "snapshots_pb2",
    "snapshots_pb2_grpc",
    "task_pb2",
    "tasks_pb2",
    "tasks_pb2_grpc",
    "version_pb2",
    "version_pb2_grpc",
]
