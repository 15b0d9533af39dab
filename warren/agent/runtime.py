"""The runtime port: the narrow interface every driver (containerd, exec) implements.

Like SwarmKit's executor, one call advances a container one step. Calls block and are
thread-safe; the agent runs them off its event loop. Every container a driver creates carries
the labels in `ContainerSpec.labels` (at least `warren.task.id`), so that an agent restarted
after kill -9 can find and re-adopt what it had running (`list`).

Output: a driver sends the container's stdout and stderr, interleaved, to `spec.log_path`
(a regular file the driver creates). The agent reads logs from that file, so log streaming does
not depend on the driver.
"""

from __future__ import annotations

import builtins
import enum
from typing import Protocol

import msgspec

from warren.model import ContainerOptions, Resources

TASK_LABEL = "warren.task.id"
SERVICE_LABEL = "warren.service.name"
# A driver that knows the image's own health check (its config's Healthcheck, Docker's JSON)
# puts it on the container in this label; the agent runs it unless the service says otherwise.
IMAGE_HEALTH_LABEL = "warren.image.healthcheck"


class ContainerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"


class MountSpec(msgspec.Struct, frozen=True):
    """A filesystem for the container, resolved on the node (ADR 40): "bind" of the host path
    `source` (a volume is the bind of its directory) or "tmpfs", at `target`."""

    type: str
    target: str
    source: str = ""
    readonly: bool = False
    tmpfs_size: int = 0  # bytes; 0 = the kernel's default
    tmpfs_mode: int = 0  # 0 = 1777


class MountedFile(msgspec.Struct, frozen=True):
    """A secret's or config's file (ADR 38): `source`, on a tmpfs the agent filled, appears
    read-only at `target` in the container. The spec holds the path, never the value."""

    source: str
    target: str


class PullLogin(msgspec.Struct, frozen=True):
    """The registry login a task pulls its image with (ADR 43): sent by the managers with the
    task, held in the agent's memory only; a driver never writes it anywhere."""

    host: str
    username: str
    password: str

    def __repr__(self) -> str:  # never the password, in a log line or a traceback
        return f"PullLogin(host={self.host!r}, username={self.username!r})"


class ContainerSpec(msgspec.Struct, frozen=True):
    """What to run for one task, already resolved from the task's ServiceSpec."""

    task_id: str
    image: str
    command: tuple[str, ...] = ()  # replaces the image's entrypoint when set
    args: tuple[str, ...] = ()  # replaces the image's cmd when set
    env: dict[str, str] = {}
    cwd: str = ""
    user: str = ""
    limits: Resources = Resources()
    read_only_rootfs: bool = False
    stop_signal: str = "SIGTERM"
    labels: dict[str, str] = {}
    log_path: str = ""
    netns: str = ""  # a network namespace to join (its path); empty = the host's network
    resolv_conf: str = ""  # a resolv.conf for the task (the node's DNS); empty = the host's
    mounts: tuple[MountSpec, ...] = ()
    files: tuple[MountedFile, ...] = ()  # secrets and configs, bind-mounted read-only (ADR 38)
    pull_login: PullLogin | None = None  # memory only: drivers must not persist it (ADR 43)
    hostname: str = ""  # the container's hostname, its template filled in; empty = the task id
    options: ContainerOptions = ContainerOptions()  # capabilities, devices, sysctls... (#13)


class ContainerStatus(msgspec.Struct, frozen=True):
    runtime_id: str
    state: ContainerState
    exit_code: int | None = None
    pid: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    labels: dict[str, str] = {}
    error: str = ""


class RuntimeFailure(Exception):
    """A step failed. `permanent` means retrying the same spec cannot help (unknown image,
    bad command); the agent then rejects or fails the task with `message`, which is shown to the
    operator by `service ps`."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


class ExecFailure(RuntimeFailure):
    """An exec's command did not start (ADR 59). `kind`: "not_running" (the container is not),
    "not_found" (no such executable: exit 127), "cannot_execute" (exit 126), "failed"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message, permanent=True)
        self.kind = kind


class ExecProcess(Protocol):
    """A command an operator runs in a container (ADR 59). Its stdio are file descriptors the
    agent reads and writes without blocking; with a terminal, stdout is the terminal and stdin
    writes to it too. The other calls block, and are thread-safe."""

    stdin: int | None  # None: the command reads nothing
    stdout: int
    stderr: int | None  # None with a terminal (its output comes on stdout)

    def resize(self, rows: int, cols: int) -> None: ...

    def close_stdin(self) -> None: ...

    def kill(self) -> None:
        """Kill the command and whatever it started."""
        ...

    def wait(self, timeout: float | None = None) -> int | None:
        """Its exit code (128+N for signal N), or None if it still runs after `timeout`."""
        ...

    def close(self) -> None:
        """Release its descriptors and whatever the runtime holds for it. Idempotent."""
        ...


class Runtime(Protocol):
    name: str

    def prepare(self, spec: ContainerSpec) -> str:
        """Make the image available and create the container (not started). Idempotent for a
        task id: a second call returns the existing container's id. Returns the runtime id."""
        ...

    def start(self, runtime_id: str) -> None:
        """Start the created container's process."""
        ...

    def wait(self, runtime_id: str, timeout: float | None = None) -> ContainerStatus | None:
        """Block until the process exits (its status) or `timeout` passes (None)."""
        ...

    def stop(self, runtime_id: str, grace_period: float, signal: str = "SIGTERM") -> ContainerStatus:
        """Send `signal`, then SIGKILL after `grace_period` seconds; return the exit status."""
        ...

    def remove(self, runtime_id: str) -> None:
        """Delete the container and everything created for it (snapshot, cgroup). Idempotent."""
        ...

    def status(self, runtime_id: str) -> ContainerStatus:
        """Current state; state UNKNOWN if the runtime does not know the id."""
        ...

    def list(self) -> list[ContainerStatus]:
        """Every container this driver manages (with their labels), for re-adoption."""
        ...

    def exec(self, runtime_id: str, argv: builtins.list[str], timeout: float) -> tuple[int, str]:
        """Run `argv` inside the running container (exec health checks): (exit code, output)."""
        ...

    def exec_process(
        self, runtime_id: str, argv: builtins.list[str], tty: bool, stdin: bool, rows: int = 0, cols: int = 0
    ) -> ExecProcess:
        """Start `argv` in the running container for an operator (ADR 59); ExecFailure if it
        cannot start."""
        ...
