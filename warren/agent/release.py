"""What a task holds on its node, given back: its container, its secrets' tmpfs, its namespace.

Each call makes its runtime calls in threads (`ControllerEnv.call`), retries transient failures
under the task controller's backoff, and says whether it got through; the controller
(warren.agent.controller) records what changed in the task's local state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from warren.agent.controller_env import ControllerEnv
from warren.agent.runtime import ContainerStatus
from warren.backoff import Backoff

log = logging.getLogger(__name__)


class TaskRelease:
    """One task's resources, released. `sleep` waits before a retry, waking early when the task
    changes; `retry` is the controller's backoff for its current step."""

    def __init__(
        self, env: ControllerEnv, task_id: str, retry: Backoff, sleep: Callable[[float], Awaitable[None]]
    ) -> None:
        self._env = env
        self._task_id = task_id
        self._retry = retry
        self._sleep = sleep

    async def stop(self, runtime_id: str, grace: float, signal: str) -> ContainerStatus | None:
        """Stop the container gracefully; its status, or None once the retries are spent (the
        removal then kills what is left)."""
        while True:
            try:
                status: ContainerStatus = await self._env.call(self._env.runtime.stop, runtime_id, grace, signal)
            except Exception as exc:
                log.warning("task %s: stopping container %s failed: %s", self._task_id, runtime_id, exc)
                delay = self._retry.next()
                if self._retry.exhausted:
                    self._retry.reset()
                    return None
                await asyncio.sleep(delay)
                continue
            self._retry.reset()
            return status

    async def remove(self, runtime_id: str) -> bool:
        """Remove the container and its snapshot; False after a failure (retried by the caller)."""
        try:
            await self._env.call(self._env.runtime.remove, runtime_id)
        except Exception as exc:
            log.warning("task %s: removing container %s failed: %s", self._task_id, runtime_id, exc)
            await self._sleep(self._retry.next())
            return False
        self._retry.reset()
        return True

    async def network(self) -> bool:
        """Remove the task's namespace and veth, and unmount its secrets, once nothing runs in
        them. Unconditional: a task that failed before its container existed has them too, and
        an ended task's overlay address may already be given back (ADR 23)."""
        env = self._env
        if env.files is not None:  # its secrets' tmpfs goes with its other resources
            try:
                await env.call(env.files.release, self._task_id)
            except Exception as exc:
                log.warning("task %s: unmounting its secrets failed: %s", self._task_id, exc)
                await self._sleep(self._retry.next())
                return False
        if env.networks is not None:
            try:
                await env.call(env.networks.detach, self._task_id)
            except Exception as exc:
                log.warning("task %s: releasing its network failed: %s", self._task_id, exc)
                await self._sleep(self._retry.next())
                return False
        self._retry.reset()
        return True
