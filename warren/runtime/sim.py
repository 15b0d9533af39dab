"""A simulated runtime for `warren sim` (ADR 50): containers that exist only in memory.

It implements the runtime port (warren.agent.runtime) so that the agent's own task controllers
drive it, but nothing runs: `prepare` records a container, `start` marks it running after the
start delay, and a share of starts (`fail_rate`) fails permanently, which the controller reports
as a failed task. A started container runs until it is stopped.

The port's calls are blocking and meant for a thread pool; a thousand simulated nodes cannot
afford a thread per running task, so the controllers of a simulated node run the calls with
`call` and `wait_call` below instead, on the event loop: every call returns at once except
`wait`, which awaits the container's exit event, and `start`, which first sleeps the delay.
"""

from __future__ import annotations

import asyncio
import builtins
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from warren.agent.runtime import (
    ContainerSpec,
    ContainerState,
    ContainerStatus,
    ExecFailure,
    ExecProcess,
    RuntimeFailure,
)
from warren.aio import wait_within

SIGNAL_EXIT_CODE = 143  # 128 + SIGTERM: how a stopped container ends
START_FAILURE = "simulated start failure (warren sim --fail-rate)"


@dataclass
class _Container:
    spec: ContainerSpec
    state: ContainerState = ContainerState.CREATED
    exit_code: int | None = None
    started_at: float = 0.0
    finished_at: float = 0.0
    # The controller's wait on it (made by that wait: an Event and its waiter deque per running
    # task cost ~0.7 KB, of 100,000 in a 1,000-node simulator; ADR 71).
    exited: asyncio.Future[None] | None = None

    def end(self) -> None:
        if self.exited is not None and not self.exited.done():
            self.exited.set_result(None)

    def status(self, runtime_id: str) -> ContainerStatus:
        return ContainerStatus(
            runtime_id=runtime_id,
            state=self.state,
            exit_code=self.exit_code,
            started_at=self.started_at,
            finished_at=self.finished_at,
            labels=dict(self.spec.labels),
        )


class SimRuntime:
    """One simulated node's containers. Only its event loop calls it (see the module doc)."""

    name = "sim"

    def __init__(
        self,
        start_delay: float = 0.0,
        fail_rate: float = 0.0,
        draw: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if start_delay < 0:
            raise ValueError("the start delay cannot be negative")
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError("the fail rate is a fraction from 0 to 1")
        self.start_delay = start_delay
        self.fail_rate = fail_rate
        self._draw = draw
        self._clock = clock
        self._containers: dict[str, _Container] = {}
        self.starts = 0  # how many starts were attempted (failed ones included)
        self.failures = 0
        # Kept as containers change: counting 100,000 of them at each status cost a tenth of
        # the simulator (#15).
        self._running = 0

    # -- how a simulated node's controllers call it ----------------------------------------------
    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """ControllerEnv.call: run a port method on the loop, after the start delay for a start."""
        if fn == self.start and self.start_delay > 0:
            await asyncio.sleep(self.start_delay)
        return fn(*args)

    async def wait_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """ControllerEnv.wait_call: `wait` awaits the exit instead of blocking a thread."""
        if fn != self.wait:
            return await self.call(fn, *args)
        runtime_id, timeout = args
        container = self._containers.get(runtime_id)
        if container is not None and container.state == ContainerState.RUNNING:
            if container.exited is None or container.exited.done():  # done: cancelled by a timeout
                container.exited = asyncio.get_running_loop().create_future()
            try:
                await wait_within(container.exited, timeout)
            except TimeoutError:
                return None
        return self.wait(runtime_id, 0)

    # -- the runtime port --------------------------------------------------------------------------
    def prepare(self, spec: ContainerSpec) -> str:
        runtime_id = f"sim-{spec.task_id}"
        self._containers.setdefault(runtime_id, _Container(spec))
        return runtime_id

    def start(self, runtime_id: str) -> None:
        container = self._known(runtime_id)
        if container.state != ContainerState.CREATED:
            return
        self.starts += 1
        if self.fail_rate and self._draw() < self.fail_rate:
            self.failures += 1
            raise RuntimeFailure(START_FAILURE, permanent=True)
        container.state = ContainerState.RUNNING
        container.started_at = self._clock()
        self._running += 1

    def wait(self, runtime_id: str, timeout: float | None = None) -> ContainerStatus | None:
        container = self._containers.get(runtime_id)
        if container is None:
            return ContainerStatus(runtime_id, ContainerState.UNKNOWN)
        if container.state == ContainerState.EXITED:
            return container.status(runtime_id)
        return None  # still running (or created): a simulated container never blocks a thread

    def stop(self, runtime_id: str, grace_period: float, signal: str = "SIGTERM") -> ContainerStatus:
        container = self._containers.get(runtime_id)
        if container is None:
            return ContainerStatus(runtime_id, ContainerState.UNKNOWN)
        if container.state != ContainerState.EXITED:
            if container.state == ContainerState.RUNNING:
                self._running -= 1
            container.state = ContainerState.EXITED
            container.exit_code = SIGNAL_EXIT_CODE if container.started_at else None
            container.finished_at = self._clock()
            container.end()
        return container.status(runtime_id)

    def remove(self, runtime_id: str) -> None:
        container = self._containers.pop(runtime_id, None)
        if container is not None:
            if container.state == ContainerState.RUNNING:
                self._running -= 1
            container.end()  # a waiter sees UNKNOWN next

    def status(self, runtime_id: str) -> ContainerStatus:
        container = self._containers.get(runtime_id)
        if container is None:
            return ContainerStatus(runtime_id, ContainerState.UNKNOWN)
        return container.status(runtime_id)

    def list(self) -> builtins.list[ContainerStatus]:
        return [c.status(runtime_id) for runtime_id, c in self._containers.items()]

    def exec(self, runtime_id: str, argv: builtins.list[str], timeout: float) -> tuple[int, str]:
        """Health checks pass: a simulated container is as healthy as it is running."""
        container = self._known(runtime_id)
        return (0, "") if container.state == ContainerState.RUNNING else (1, "not running")

    def exec_process(
        self, runtime_id: str, argv: builtins.list[str], tty: bool, stdin: bool, rows: int = 0, cols: int = 0
    ) -> ExecProcess:
        """A simulated container runs no process to exec into (ADR 59)."""
        raise ExecFailure("cannot_execute", "a simulated node runs no commands")

    def running(self) -> int:
        return self._running

    def _known(self, runtime_id: str) -> _Container:
        container = self._containers.get(runtime_id)
        if container is None:
            raise RuntimeFailure(f"no such container {runtime_id}")
        return container
