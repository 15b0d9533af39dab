"""The worker: turns the assignment set into one controller per task, and owns their lifetime.

It applies what the session receives (COMPLETE: the whole set, authoritative; INCREMENTAL:
changes), keeps the cache in step before controllers act, re-adopts the containers found at
start, and removes containers of tasks the managers no longer know (ADR 12).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from warren.agent import taskfiles
from warren.agent.assignments import AssignmentDelta
from warren.agent.cache import LocalState, TaskCache
from warren.agent.controller import ControllerEnv, TaskController
from warren.agent.decisions import ContainersByTask
from warren.agent.logrotation import remove_task_logs
from warren.agent.runtime import TASK_LABEL, ContainerState, ContainerStatus
from warren.agent.status import Report, StatusQueue
from warren.aio import wait_within
from warren.model import Task, TaskState
from warren.mounts import volume_names

log = logging.getLogger(__name__)

STRAY_GRACE = 10.0  # stop grace for containers of unknown tasks (their spec is gone with them)


class Worker:
    """All task controllers of this node. Only the agent's event loop calls it."""

    def __init__(self, env: ControllerEnv, cache: TaskCache, queue: StatusQueue) -> None:
        self.env = dataclasses.replace(env, report=queue.put, save=cache.put_local, connected=lambda: self.connected)
        self.cache = cache
        self.queue = queue
        self.controllers: dict[str, TaskController] = {}
        self.connected = False
        self._strays: dict[str, list[ContainerStatus]] = {}  # containers of tasks not in the cache
        self._background: set[asyncio.Task[None]] = set()
        self._synced = False  # a COMPLETE set arrived since start
        self._volumes_wanted: frozenset[str] = frozenset()  # the volumes the managers place here (ADR 40)

    # -- start and stop ------------------------------------------------------------------------
    async def start(self) -> None:
        """Resume every cached task, re-adopting its containers instead of starting new ones."""
        containers = await self._list_containers()
        found = ContainersByTask.group(containers)
        for stray in found.unlabelled:
            log.warning("ignoring container %s without a task label", stray.runtime_id)
        tasks = self.cache.tasks()
        if self.env.files is not None:  # tmpfs of tasks an agent killed -9 left behind (ADR 38)
            await self.env.call(self.env.files.sweep, set(tasks))
        locals_ = self.cache.local_states()
        for task_id in set(locals_) - set(tasks):
            self.cache.forget(task_id)  # a local state without its task is useless
        for task_id, task in tasks.items():
            self._add(task, locals_.get(task_id), found.by_task.pop(task_id, []))
        self._strays = found.by_task
        running = sum(1 for cs in self._strays.values() for c in cs if c.state == ContainerState.RUNNING)
        log.info(
            "resumed %d cached task(s); %d container(s) of unknown tasks (%d running) wait for the complete set",
            len(tasks),
            sum(map(len, self._strays.values())),
            running,
        )

    async def _list_containers(self) -> list[ContainerStatus]:
        for delay in (0.5, 1.0, 2.0, 4.0, 0.0):
            try:
                return list(await self.env.call(self.env.runtime.list))
            except Exception as exc:
                log.warning("listing containers failed: %s", exc)
                if delay:
                    await asyncio.sleep(delay)
        log.error("cannot list containers: running tasks will not be re-adopted")
        return []

    async def close(self) -> None:
        """Stop watching; containers keep running so the next agent re-adopts them."""
        for ctl in list(self.controllers.values()):
            await ctl.close()
        for t in list(self._background):
            t.cancel()
        for t in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def remove_all(self, timeout: float) -> None:
        """Stop and remove every task and stray container (the node was removed)."""
        self._apply_complete(())
        waits = [ctl.done.wait() for ctl in self.controllers.values()] + list(self._background)
        if waits:
            with contextlib.suppress(TimeoutError):
                await wait_within(asyncio.gather(*waits, return_exceptions=True), timeout)

    # -- connection ----------------------------------------------------------------------------
    def set_connected(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        for ctl in self.controllers.values():
            ctl.poke()

    # -- assignments ---------------------------------------------------------------------------
    def apply(self, delta: AssignmentDelta) -> None:
        """Apply one message: cache first, then controllers. Never raises for one bad task."""
        if self.env.files is not None:  # before the tasks: a controller may be waiting for them
            self.env.files.vault.hold(delta.files)
        if delta.complete:
            self._apply_complete(delta.updated)
        else:
            self._apply_incremental(delta.updated, delta.removed)
        if delta.volumes is not None:
            self._volumes_wanted = frozenset(delta.volumes)
            self._spawn(self._prune_volumes())
        if self.env.files is not None:
            wanted = set().union(*(taskfiles.names_of(c.task) for c in self.controllers.values()))
            self.env.files.vault.keep_only(wanted)
            if delta.files:  # a task waiting for a value it now holds looks again
                for ctl in self.controllers.values():
                    ctl.poke()
        for task_id, why in delta.invalid:
            if task_id not in self.controllers:
                log.warning("rejecting task %s: %s", task_id, why)
                self.queue.put(Report(task_id, TaskState.REJECTED, self.env.clock(), message="rejected", error=why))

    def _apply_complete(self, tasks: tuple[Task, ...]) -> None:
        wanted = {t.id: t for t in tasks}
        leaving = set()
        for task_id, ctl in self.controllers.items():
            if task_id not in wanted:
                log.info("task %s is not in the complete set: stopping and removing it", task_id)
                ctl.remove()
                leaving.add(task_id)
        self.cache.replace_tasks(wanted, keep=leaving)
        for task in tasks:
            known = self.controllers.get(task.id)
            if known is None:
                self._add(task, None, self._strays.pop(task.id, []))
            else:
                known.update(task)
                self._resend_if_behind(known, task)
        if not self._synced:
            self._synced = True
            for task_id, containers in self._strays.items():
                for c in containers:
                    log.info("removing container %s of unknown task %s", c.runtime_id, task_id)
                    self._spawn(self._remove_stray(c))
            self._strays = {}

    def _apply_incremental(self, updated: tuple[Task, ...], removed: tuple[str, ...]) -> None:
        self.cache.put_tasks(updated)
        for task in updated:
            ctl = self.controllers.get(task.id)
            if ctl is None:
                self._add(task, None, self._strays.pop(task.id, []))
            elif ctl.local.leaving:
                log.warning("task %s came back after it was removed; ignoring it", task.id)
            else:
                ctl.update(task)
        for task_id in removed:
            ctl = self.controllers.get(task_id)
            if ctl is not None:
                ctl.remove()
                self.queue.forget(task_id)

    def _resend_if_behind(self, ctl: TaskController, task: Task) -> None:
        """After a reconnect the managers may have missed reports: send the local truth again
        where their copy is behind it (reports are idempotent and forward-only)."""
        report = ctl.current_report()
        if report is None or report.state < task.state:
            return
        if report.state > task.state or report.health != task.health or report.error != task.error:
            self.queue.put(report)

    def _add(self, task: Task, local: LocalState | None, containers: list[ContainerStatus]) -> None:
        ctl = TaskController(task, self.env, local, containers, on_done=self._done)
        self.controllers[task.id] = ctl
        if local is None:
            self.cache.put_local(task.id, ctl.local)
        ctl.start()

    def _done(self, task_id: str) -> None:
        self.controllers.pop(task_id, None)
        self.cache.forget(task_id)

    # -- volumes (ADR 40) ----------------------------------------------------------------------
    async def _prune_volumes(self) -> None:
        """Delete the volumes the managers no longer place on this node: `volume rm` (or a volume
        made here that the state never recorded). Never one a task here still mounts. Judged on
        the latest list and tasks, not those of the message that started it: a volume created
        again meanwhile stays."""
        driver = self.env.volumes
        if driver is None:
            return
        try:
            for name in await self.env.call(driver.list):
                if name not in self._volumes_wanted and name not in self._held_volumes():
                    await self.env.call(driver.remove, name)
        except Exception as exc:
            log.warning("removing deleted volumes failed: %s", exc)

    def _held_volumes(self) -> set[str]:
        return {
            name
            for ctl in self.controllers.values()
            if not ctl.local.state.terminal or ctl.local.started
            for name in volume_names(ctl.task.spec)
        }

    # -- strays --------------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _remove_stray(self, container: ContainerStatus) -> None:
        runtime = self.env.runtime
        try:
            if container.state == ContainerState.RUNNING:
                await self.env.call(runtime.stop, container.runtime_id, STRAY_GRACE, "SIGTERM")
            await self.env.call(runtime.remove, container.runtime_id)
        except Exception as exc:
            log.warning("removing stray container %s failed: %s", container.runtime_id, exc)
        task_id = container.labels.get(TASK_LABEL, "")
        if task_id:
            remove_task_logs(Path(self.env.log_dir) / f"{task_id}.log")

    # -- views ---------------------------------------------------------------------------------
    def held_task(self, task_id: str) -> Task | None:
        """The task as this agent runs it (with its spec), if it does."""
        ctl = self.controllers.get(task_id)
        return ctl.task if ctl is not None else None

    def started_task_ids(self) -> list[str]:
        """Tasks whose process was started and has not ended: their logs are growing."""
        return [t for t, ctl in self.controllers.items() if ctl.local.started and not ctl.local.state.terminal]

    def running_container(self, task_id: str) -> str | None:
        """The container of a task whose process runs, for an exec (ADR 59); else None."""
        ctl = self.controllers.get(task_id)
        if ctl is None or not ctl.local.started or ctl.local.state.terminal or ctl.local.leaving:
            return None
        return ctl.local.runtime_id or None

    def counts_by_state(self) -> dict[str, int]:
        # Counted by state, labelled once per state: a label per task was 10x slower, and
        # `sim --status` counts a simulator's 100,000 tasks this way (#15).
        counts = Counter([ctl.local.state for ctl in self.controllers.values()])
        return {state.label: count for state, count in counts.items()}
