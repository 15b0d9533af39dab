"""The task controller's monitoring step (a mixin of warren.agent.controller.TaskController):
it watches a started container (warren.agent.watch) until it exits or turns unhealthy, stops an
unhealthy one (Docker's rule), then reports the exit, or restarts the task in place while no
manager is reachable (ADR 12).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from warren.agent import health
from warren.agent.controller_env import ControllerEnv
from warren.agent.decisions import LocalState, plan_exit
from warren.agent.runtime import ContainerSpec, ContainerState, ContainerStatus, RuntimeFailure
from warren.agent.watch import wait_exit, watch_health
from warren.model import HealthCheck, Task, TaskState

log = logging.getLogger("warren.agent.controller")  # these are the task controller's lines

RUNNING = TaskState.RUNNING


class Monitoring:
    """A started container's exit and health, and what the controller does about them."""

    task: Task
    env: ControllerEnv
    local: LocalState
    _changed: asyncio.Event
    _exit: asyncio.Future[ContainerStatus] | None  # the wait on the started container
    _health: asyncio.Task[None] | None
    _unhealthy: str | None  # set by the health monitor
    _forced: tuple[TaskState, str] | None  # why we stopped it ourselves (unhealthy)
    _exited_at: float  # monotonic time the exit was seen, for the restart delay
    _check: HealthCheck | None

    async def _spec(self) -> ContainerSpec:
        raise NotImplementedError

    async def _learn_check(self, runtime_id: str) -> None:
        raise NotImplementedError

    async def _stop_container(self) -> ContainerStatus | None:
        raise NotImplementedError

    async def _stop_watchers(self, keep_exit: bool = False) -> None:
        raise NotImplementedError

    async def _sleep(self, seconds: float) -> None:
        raise NotImplementedError

    def _set_local(self, **fields: Any) -> None:
        raise NotImplementedError

    def _advance(self, state: TaskState, **fields: Any) -> None:
        raise NotImplementedError

    async def _monitor(self) -> bool:
        """Watch the started container until it exits, turns unhealthy, or the task changes."""
        runtime_id = self.local.runtime_id
        if self._exit is None:
            self._exit = asyncio.create_task(wait_exit(self.env, self.task.id, runtime_id))
            self._exit.add_done_callback(self._exit_seen)
        if self._health is None and self._check is not None and not self._exit.done():
            self._health = asyncio.create_task(
                watch_health(self.env, self.task, runtime_id, self.local.started_at, self._on_health, self._check)
            )
        if self._unhealthy is not None:
            await self._stop_unhealthy()
            return True
        if self._exit.done():
            await self._handle_exit(self._exit.result())
            return True
        # One event for the exit and every other change: no waiter task per running task (a
        # simulator holds 100,000 of them, ADR 71).
        await self._changed.wait()
        return True

    def _exit_seen(self, exit: asyncio.Future[ContainerStatus]) -> None:
        """The exit wait ended (or was cancelled: one more look, which finds nothing to do)."""
        self._changed.set()

    async def _stop_unhealthy(self) -> None:
        """Docker's rule: an unhealthy task is stopped and counts as failed."""
        why = self._unhealthy or "health check failed"
        self._unhealthy = None
        log.info("task %s: unhealthy (%s): stopping it", self.task.id, why)
        await self._stop_watchers()
        status = await self._stop_container()
        done: asyncio.Future[ContainerStatus] = asyncio.get_running_loop().create_future()
        done.set_result(status or ContainerStatus(self.local.runtime_id, ContainerState.EXITED))
        self._exit = done
        self._forced = (TaskState.FAILED, f"unhealthy: {why}")

    async def _handle_exit(self, status: ContainerStatus) -> None:
        """The process ended (or we stopped it as unhealthy): report it, or restart it locally
        while disconnected."""
        await self._stop_watchers(keep_exit=True)
        first_look = not self._exited_at
        if first_look:
            self._exited_at = time.monotonic()
        plan = plan_exit(
            self.task.spec.restart,
            self.local,
            status,
            self._forced,
            connected=self.env.connected(),
            ended_at=status.finished_at or self.env.clock(),
            since_exit=time.monotonic() - self._exited_at,
        )
        if first_look:
            log.info("task %s: %s (%s)", self.task.id, plan.outcome.label, plan.error or "exit code 0")
        if plan.restart_attempt is not None:
            if plan.wait > 0:
                await self._sleep(plan.wait)  # woken early by a change (reconnect, shutdown)
                return
            await self._restart_locally(plan.restart_attempt)
            return
        fields: dict[str, Any] = {
            "exit_code": status.exit_code,
            "error": plan.error,
            "message": "finished" if not plan.error else "",
        }
        if self._forced is not None:
            fields["health"] = health.UNHEALTHY
        self._exit, self._exited_at, self._forced = None, 0.0, None
        self._advance(plan.outcome, **fields)

    async def _restart_locally(self, attempt: int) -> None:
        """Same task id, a fresh container; the managers hear the final truth on reconnect."""
        log.info("task %s: no manager reachable; restarting it locally (attempt %d)", self.task.id, attempt)
        self._exit, self._exited_at, self._forced = None, 0.0, None
        self._set_local(attempt=attempt, restarts=self.local.restarts + 1, started=False)
        old = self.local.runtime_id
        try:
            await self.env.call(self.env.runtime.remove, old)
            runtime_id = await self.env.call(self.env.runtime.prepare, await self._spec())
            self._set_local(runtime_id=runtime_id)
            await self._learn_check(runtime_id)
            await self.env.call(self.env.runtime.start, runtime_id)
        except Exception as exc:
            message = exc.message if isinstance(exc, RuntimeFailure) else str(exc)
            log.warning("task %s: local restart failed: %s", self.task.id, message)
            self._advance(TaskState.FAILED, error=f"local restart failed: {message}", message="restart failed")
            return
        self._set_local(started=True, started_at=self.env.clock(), exit_code=None)
        status = health.STARTING if self._check is not None else ""
        self._advance(self.local.state, health=status, message=f"restarted by the agent ({self.local.restarts})")

    def _on_health(self, report: health.HealthReport) -> None:
        """A health change from the monitor. Its first report, "starting", is not news: the
        controller reports that itself at each start."""
        if report.status == health.STARTING:
            return
        if report.status == health.UNHEALTHY:
            self._unhealthy = report.message or "health check failed"
            self._changed.set()
        elif report.status == health.HEALTHY and self.local.state == TaskState.STARTING:
            self._advance(RUNNING, health=report.status, message="started")
        elif report.status != self.local.health:
            self._advance(self.local.state, health=report.status)
