"""An in-memory Runtime for agent tests: containers are records, exits are triggered by the test;
with what the task controller tests share (`assert_forward`, `run`)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import msgspec

from warren.agent.controller import ControllerEnv
from warren.agent.runtime import TASK_LABEL, ContainerSpec, ContainerState, ContainerStatus, RuntimeFailure
from warren.agent.status import Report
from warren.model import RestartPolicy, ServiceSpec, Task, TaskState


class FakeRuntime:
    """Implements the Runtime protocol. Failures are scripted per step; every call is logged."""

    name = "fake"

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.containers: dict[str, ContainerStatus] = {}
        self.specs: dict[str, ContainerSpec] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail: dict[str, list[RuntimeFailure]] = {}  # step -> failures to raise, in order
        self.exec_result: tuple[int, str] = (0, "ok")
        self.stop_exit_code = 143
        self._serial = 0

    def _raise(self, step: str) -> None:
        queue = self.fail.get(step)
        if queue:
            raise queue.pop(0)

    def prepare(self, spec: ContainerSpec) -> str:
        with self.lock:
            self.calls.append(("prepare", spec.task_id))
            self._raise("prepare")
            for rid, s in self.specs.items():
                if s.task_id == spec.task_id and rid in self.containers:
                    return rid
            self._serial += 1
            rid = f"{spec.task_id}-c{self._serial}"
            self.specs[rid] = spec
            self.containers[rid] = ContainerStatus(rid, ContainerState.CREATED, labels=dict(spec.labels))
            return rid

    def start(self, runtime_id: str) -> None:
        with self.lock:
            self.calls.append(("start", runtime_id))
            self._raise("start")
            c = self.containers[runtime_id]
            if c.state != ContainerState.CREATED:
                raise RuntimeFailure(f"container {runtime_id} has already run")
            self.containers[runtime_id] = msgspec.structs.replace(
                c, state=ContainerState.RUNNING, started_at=time.time(), pid=1000 + self._serial
            )

    def exit(self, runtime_id: str, code: int | None) -> None:
        """Test hook: the process ends on its own."""
        with self.lock:
            c = self.containers[runtime_id]
            self.containers[runtime_id] = msgspec.structs.replace(
                c, state=ContainerState.EXITED, exit_code=code, finished_at=time.time()
            )
            self.lock.notify_all()

    def wait(self, runtime_id: str, timeout: float | None = None) -> ContainerStatus | None:
        with self.lock:
            deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
            while True:
                c = self.containers.get(runtime_id)
                if c is None:
                    raise RuntimeFailure(f"no such container: {runtime_id}")
                if c.state == ContainerState.EXITED:
                    return c
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.lock.wait(remaining)

    def stop(self, runtime_id: str, grace_period: float, signal: str = "SIGTERM") -> ContainerStatus:
        with self.lock:
            self.calls.append(("stop", f"{runtime_id} {grace_period:g} {signal}"))
            self._raise("stop")
            c = self.containers.get(runtime_id)
            if c is None:
                return ContainerStatus(runtime_id, ContainerState.UNKNOWN)
            if c.state != ContainerState.EXITED:
                c = msgspec.structs.replace(c, state=ContainerState.EXITED, exit_code=self.stop_exit_code)
                self.containers[runtime_id] = c
                self.lock.notify_all()
            return c

    def remove(self, runtime_id: str) -> None:
        with self.lock:
            self.calls.append(("remove", runtime_id))
            self._raise("remove")
            self.containers.pop(runtime_id, None)
            self.lock.notify_all()

    def status(self, runtime_id: str) -> ContainerStatus:
        with self.lock:
            return self.containers.get(runtime_id) or ContainerStatus(runtime_id, ContainerState.UNKNOWN)

    def list(self) -> list[ContainerStatus]:
        with self.lock:
            return list(self.containers.values())

    def exec(self, runtime_id: str, argv: list[str], timeout: float) -> tuple[int, str]:
        with self.lock:
            self.calls.append(("exec", runtime_id))
            return self.exec_result

    # -- helpers for tests ---------------------------------------------------------------------
    def running(self) -> list[str]:
        with self.lock:
            return [rid for rid, c in self.containers.items() if c.state == ContainerState.RUNNING]

    def of_task(self, task_id: str) -> list[ContainerStatus]:
        with self.lock:
            return [c for c in self.containers.values() if c.labels.get(TASK_LABEL) == task_id]

    def steps(self, step: str) -> list[str]:
        with self.lock:
            return [arg for name, arg in self.calls if name == step]


class Recorder:
    """Collects what a controller reports and saves."""

    def __init__(self) -> None:
        self.reports: list[Report] = []
        self.saved: dict[str, object] = {}
        self.connected = True

    def states(self, task_id: str | None = None) -> list[TaskState]:
        return [r.state for r in self.reports if task_id is None or r.task_id == task_id]

    def last_state(self, task_id: str | None = None) -> TaskState | None:
        states = self.states(task_id)
        return states[-1] if states else None

    def last(self, task_id: str | None = None) -> Report:
        return [r for r in self.reports if task_id is None or r.task_id == task_id][-1]


async def _to_thread(fn, *args):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(fn, *args)


def make_env(runtime: FakeRuntime, rec: Recorder, tmp: Path, **overrides: object) -> ControllerEnv:
    fields: dict[str, object] = {
        "runtime": runtime,
        "log_dir": tmp,
        "call": _to_thread,
        "report": rec.reports.append,
        "save": rec.saved.__setitem__,
        "connected": lambda: rec.connected,
        "retry_delays": (0.01, 0.01, 0.01),
        "wait_slice": 0.2,
    }
    fields.update(overrides)
    return ControllerEnv(**fields)  # type: ignore[arg-type]


def make_task(
    task_id: str = "task1",
    *,
    desired: TaskState = TaskState.RUNNING,
    state: TaskState = TaskState.ASSIGNED,
    restart: RestartPolicy | None = None,
    **spec_fields: object,
) -> Task:
    spec = ServiceSpec(
        name="web",
        image="busybox",
        command=("sleep", "1000"),
        restart=restart or RestartPolicy(),
        **spec_fields,  # type: ignore[arg-type]
    )
    return Task(
        id=task_id,
        service_id="svc1",
        service_name="web",
        slot=1,
        spec=spec,
        spec_version=1,
        desired_state=desired,
        state=state,
        node_id="node1",
    )


def assert_forward(states: list[TaskState]) -> None:
    """Reported states never go backwards (a repeat is a health or message change)."""
    assert states == sorted(states), states


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 20))
