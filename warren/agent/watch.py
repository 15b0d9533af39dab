"""Watching a task's started container, as asyncio tasks the controller runs beside its loop:
its exit (runtime.wait in slices, tolerating errors) and its health (Docker's rules, in
warren.agent.health)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import msgspec

from warren.agent import health
from warren.agent.controller_env import ControllerEnv
from warren.agent.runtime import ContainerState, ContainerStatus, RuntimeFailure
from warren.model import HealthCheck, Task

log = logging.getLogger(__name__)


async def wait_exit(env: ControllerEnv, task_id: str, runtime_id: str) -> ContainerStatus:
    """runtime.wait in slices (a blocked thread cannot be cancelled), tolerating errors."""
    call = env.wait_call or env.call
    status: ContainerStatus | None
    while True:
        try:
            status = await call(env.runtime.wait, runtime_id, env.wait_slice)
        except Exception as exc:
            message = exc.message if isinstance(exc, RuntimeFailure) else str(exc)
            try:
                status = await env.call(env.runtime.status, runtime_id)
            except Exception:
                status = None
            if status is not None and status.state in (ContainerState.EXITED, ContainerState.UNKNOWN):
                return status if status.error else msgspec.structs.replace(status, error=message)
            log.warning("task %s: waiting on container %s failed: %s", task_id, runtime_id, message)
            await asyncio.sleep(1.0)
            continue
        if status is not None:
            return status


async def watch_health(
    env: ControllerEnv,
    task: Task,
    runtime_id: str,
    started_at: float,
    on_report: Callable[[health.HealthReport], None],
    check: HealthCheck | None = None,
) -> None:
    """Run the task's health check against its container until cancelled, probing in the agent's
    thread pool; `on_report` hears each change; `started_at` (wall clock) starts the check's
    start period. On the overlay, the check's target is the
    task's own address."""
    check = check or task.spec.health  # the image's own, when the service has none (ADR 42)
    if check is None:
        return
    if env.networks is not None and task.overlay_address:
        check = health.on_task_address(check, task.overlay_address)

    def probe() -> Awaitable[health.ProbeResult]:
        return env.call(health.run_probe, check, env.runtime, runtime_id)

    try:
        await health.monitor(check, probe, on_report, started_at=started_at, clock=env.clock)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("task %s: health monitor failed", task.id)
