"""What a task controller needs from the agent (its ports): the runtime, the thread pools that
run blocking calls, the cache, the status queue, the connection and the overlay. Tests pass
fakes (tests/unit/agent_fakes.py)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from warren.agent.decisions import LocalState
from warren.agent.runtime import PullLogin, Runtime
from warren.agent.status import Report
from warren.agent.taskfiles import TaskFiles
from warren.agent.volumes import VolumeDriver


class TaskNetworks(Protocol):
    """A network namespace per task on the node's overlay bridge (ADR 17). Blocking calls."""

    def attach(self, task_id: str, address: str) -> str:
        """Set up (or find) the task's namespace with `address`; returns its path."""
        ...

    def resolv_conf(self) -> str:
        """The resolv.conf tasks on the overlay use (the node's embedded DNS), or ""."""
        ...

    def detach(self, task_id: str) -> None:
        """Remove the task's namespace and its link to the bridge (idempotent)."""
        ...


@dataclass
class ControllerEnv:
    """What a controller needs from the agent; tests pass fakes."""

    runtime: Runtime
    log_dir: Path
    call: Callable[..., Awaitable[Any]]  # runs a blocking runtime call in a thread
    report: Callable[[Report], None] = lambda report: None
    save: Callable[[str, LocalState], None] = lambda task_id, local: None
    connected: Callable[[], bool] = lambda: False
    wait_call: Callable[..., Awaitable[Any]] | None = None  # same, for long waits (own pool)
    networks: TaskNetworks | None = None  # the overlay's task networks, when the mesh is on
    volumes: VolumeDriver | None = None  # where named volumes live on this node (ADR 40)
    files: TaskFiles | None = None  # each task's secrets and configs on a tmpfs (ADR 38)
    # The registry login the managers sent with a task, if any (ADR 43); memory only.
    pull_login: Callable[[str], PullLogin | None] = lambda task_id: None
    clock: Callable[[], float] = time.time
    retry_delays: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)  # transient prepare failures
    wait_slice: float = 2.0  # a wait() call returns at least this often, so closing is prompt
    node_hostname: str = ""  # for {{.Node.Hostname}} in a task's hostname template
