"""One task's controller: performs the steps warren.agent.decisions decides, one at a time.

The shape follows SwarmKit's task controller: each step makes at most one runtime call (in a
thread), records the new local state in the cache *before* the next call, and queues a status
report. States only move forward (model.can_transition): the agent never reports a task
backwards. While no manager is reachable, an exited task is restarted in place under its cached
restart policy (same task id, a local attempt counter); see ADR 12. Watching a started container
and acting on its exit or its health is the monitoring step, in warren.agent.monitoring.

A task that ended (complete, failed, rejected, shutdown) never runs again: its container and
snapshot are removed at once, as Swarm does. The task stays in `service ps` as history, with its
exit code and error, and its output stays in the agent's log store (logs/<task>.log) until the
managers drop the task from history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from warren import logsetup
from warren.agent import health
from warren.agent.controller_env import ControllerEnv
from warren.agent.decisions import (
    LocalState,
    Resume,
    Step,
    container_spec,
    decide_step,
    exit_outcome,
    health_check,
    initial_state,
    plan_failure,
    plan_resume,
    stop_signal,
)
from warren.agent.logrotation import remove_task_logs
from warren.agent.monitoring import Monitoring
from warren.agent.release import TaskRelease
from warren.agent.runtime import ContainerSpec, ContainerStatus, RuntimeFailure
from warren.agent.status import Report
from warren.agent.taskfiles import MissingFiles
from warren.agent.volumes import resolve_mounts
from warren.aio import wait_within
from warren.backoff import Backoff
from warren.model import HealthCheck, Task, TaskState, can_transition
from warren.restart import next_attempt as next_attempt  # re-exported: the rule tasks restart by

log = logging.getLogger(__name__)

RUNNING = TaskState.RUNNING


class TaskController(Monitoring):
    """Owns one task's container. The agent calls update() when the managers change the task,
    remove() when the task leaves the assignment set, and close() when the agent exits (the
    container keeps running, to be re-adopted)."""

    def __init__(
        self,
        task: Task,
        env: ControllerEnv,
        local: LocalState | None = None,
        containers: list[ContainerStatus] | None = None,
        on_done: Callable[[str], None] | None = None,
    ) -> None:
        self.task = task
        self.env = env
        self.local = local or initial_state(task)
        self._cached = local is not None
        self._found = list(containers or [])  # this task's containers found at agent start
        self._on_done = on_done
        self._changed = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._exit: asyncio.Future[ContainerStatus] | None = None  # the wait on the started container
        self._health: asyncio.Task[None] | None = None
        self._unhealthy: str | None = None  # set by the health monitor
        self._forced: tuple[TaskState, str] | None = None  # why we stopped it ourselves (unhealthy)
        self._exited_at = 0.0  # monotonic time the exit was seen, for the restart delay
        self._retry = Backoff.schedule(env.retry_delays)  # transient failures of the current step
        self._network_released = False  # the task's namespace is gone (known only once released)
        self._release = TaskRelease(env, task.id, self._retry, self._sleep)
        # The health check run: the service's, or the image's own, learnt from the container.
        self._check: HealthCheck | None = task.spec.health
        self.done = asyncio.Event()

    # -- the agent's side ----------------------------------------------------------------------
    @property
    def task_id(self) -> str:
        return self.task.id

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name=f"task-{self.task.id}")

    def update(self, task: Task) -> None:
        self.task = task
        self._changed.set()

    def poke(self) -> None:
        """Look again (the connection changed, so a pending local restart may now be reported)."""
        self._changed.set()

    def remove(self) -> None:
        """The task left the assignment set: stop and remove its container, then finish."""
        if not self.local.leaving:
            self._set_local(leaving=True)
        self._changed.set()

    async def close(self) -> None:
        """Stop watching without touching the container."""
        for t in (self._runner, self._exit, self._health):
            if t is not None:
                t.cancel()
        for t in (self._runner, self._exit, self._health):
            if t is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    def current_report(self) -> Report | None:
        """The local truth as a report, for resending after a reconnect (None before ACCEPTED)."""
        if self.local.state < TaskState.ACCEPTED:
            return None
        return self._report()

    # -- the loop ------------------------------------------------------------------------------
    async def _run(self) -> None:
        logsetup.bind(task=self.task.id, service=self.task.service_name, slot=self.task.slot)
        try:
            await self._resume()
        except Exception:
            log.exception("task %s: re-adoption failed", self.task.id)
        while True:
            self._changed.clear()
            try:
                step = decide_step(self.local, self.task.desired_state, self._network_released)
                if step == Step.TEARDOWN:
                    if await self._teardown():
                        return
                    continue
                if await self._take(step):
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug or an unexpected runtime error: never let it kill the agent. Back off and
                # look again; the step is idempotent.
                log.exception("task %s: step failed", self.task.id)
                await self._sleep(self._retry.next())
                continue
            await self._changed.wait()

    async def _take(self, step: Step) -> bool:
        """Take one step (warren.agent.decisions); False when there is nothing to do until
        something changes."""
        if step == Step.REMOVE_CONTAINER:
            await self._remove_container()
        elif step == Step.RELEASE_NETWORK:
            await self._release_network()
        elif step == Step.WAIT:
            return False
        elif step == Step.SHUTDOWN:
            await self._shutdown()
        elif step == Step.ACCEPT:
            self._advance(TaskState.ACCEPTED, message="accepted")
        elif step == Step.BEGIN_PREPARING:
            self._advance(TaskState.PREPARING, message="preparing")
        elif step == Step.PREPARE:
            return await self._prepare()
        elif step == Step.START:
            await self._start()
        else:
            return await self._monitor()
        return True

    # -- steps ---------------------------------------------------------------------------------
    async def _spec(self) -> ContainerSpec:
        """The container to create, in its own network namespace when the overlay is on, with
        its secrets and configs (first: a value this node lacks is the reason to say)."""
        files = await self.env.call(self.env.files.prepare, self.task) if self.env.files is not None else ()
        netns = resolv_conf = ""
        if self.env.networks is not None and self.task.overlay_address:
            netns = await self.env.call(self.env.networks.attach, self.task.id, self.task.overlay_address)
            resolv_conf = self.env.networks.resolv_conf()
        spec = container_spec(self.task, self.env.log_dir, netns, self.env.node_hostname)
        spec = msgspec.structs.replace(
            spec, resolv_conf=resolv_conf, files=files, pull_login=self.env.pull_login(self.task.id)
        )
        if self.task.spec.mounts:
            mounts = await self.env.call(resolve_mounts, self.task.spec.mounts, self.env.volumes)
            spec = msgspec.structs.replace(spec, mounts=mounts)
        return spec

    async def _prepare(self) -> bool:
        """Make the container; False while it waits for secrets this node does not hold."""
        try:
            spec = await self._spec()
            runtime_id = await self.env.call(self.env.runtime.prepare, spec)
        except MissingFiles as exc:  # until a session brings them: the worker pokes us then
            if self.local.message != exc.message:
                log.warning("task %s: %s", self.task.id, exc.message)
                self._advance(self.local.state, message=exc.message)
            return False
        except Exception as exc:
            await self._failed_step("preparing", exc, reject=True)
            return True
        await self._learn_check(runtime_id)
        self._retry.reset()
        self._set_local(runtime_id=runtime_id, started=False)
        self._advance(TaskState.STARTING, message="starting")
        return True

    async def _start(self) -> None:
        runtime_id = self.local.runtime_id
        try:
            await self.env.call(self.env.runtime.start, runtime_id)
        except Exception as exc:
            await self._failed_step("starting", exc, reject=False)
            return
        self._retry.reset()
        self._started()

    def _started(self) -> None:
        """The process runs: RUNNING at once, or STARTING until the health check passes."""
        self._set_local(started=True, started_at=self.env.clock(), exit_code=None, error="")
        if self._check is None:
            self._advance(RUNNING, message="started", health="")
        else:
            self._advance(max(self.local.state, TaskState.STARTING), health=health.STARTING)

    async def _failed_step(self, what: str, exc: Exception, reject: bool) -> None:
        """Permanent failures end the task at once; transient ones are retried with backoff."""
        message = exc.message if isinstance(exc, RuntimeFailure) else f"{type(exc).__name__}: {exc}"
        permanent = isinstance(exc, RuntimeFailure) and exc.permanent
        delay = 0.0 if permanent else self._retry.next()
        retry = self._retry
        plan = plan_failure(
            self.local.state,
            what,
            message,
            permanent=permanent,
            reject=reject,
            failures=retry.failures,
            gave_up=retry.exhausted,
        )
        if not plan.retry:
            if permanent:
                log.info("task %s: %s failed: %s", self.task.id, what, message)
            else:
                log.warning("task %s: %s failed %d times: %s", self.task.id, what, retry.failures, message)
            self._advance(plan.state, error=plan.error, message=plan.message)
            return
        log.info("task %s: %s failed (%s), retrying in %gs", self.task.id, what, message, delay)
        self._advance(plan.state, message=plan.message)
        await self._sleep_unless_stopping(delay)

    async def _shutdown(self) -> None:
        """Desired SHUTDOWN: graceful stop, report SHUTDOWN, then remove the container."""
        await self._stop_watchers()
        status = await self._stop_container() if self.local.runtime_id else None
        code = status.exit_code if status is not None else None
        self._advance(TaskState.SHUTDOWN, exit_code=code, message=self.task.message or "shut down")
        if self.local.runtime_id:
            await self._remove_container()

    async def _teardown(self) -> bool:
        """The task left the set: stop and remove quietly; True once finished."""
        await self._stop_watchers()
        if self.local.runtime_id:
            if self.local.started and not self.local.state.terminal:
                await self._stop_container()
            if not await self._remove_container():
                if not self._retry.exhausted:
                    return False
                log.error("task %s: giving up removing container %s", self.task.id, self.local.runtime_id)
        if not self._network_released and not await self._release_network():
            if not self._retry.exhausted:
                return False
            log.error("task %s: giving up releasing its network (the agent's sweep retries)", self.task.id)
        remove_task_logs(self.env.log_dir / f"{self.task.id}.log")
        if self._on_done is not None:
            self._on_done(self.task.id)
        self.done.set()
        return True

    async def _stop_container(self) -> ContainerStatus | None:
        return await self._release.stop(self.local.runtime_id, self.task.spec.stop_grace_period, stop_signal(self.task))

    async def _remove_container(self) -> bool:
        if not await self._release.remove(self.local.runtime_id):
            return False
        self._set_local(runtime_id="", started=False)
        return True

    async def _release_network(self) -> bool:
        if not await self._release.network():
            return False
        self._network_released = True
        return True

    async def _stop_watchers(self, keep_exit: bool = False) -> None:
        watchers = [self._health] + ([] if keep_exit else [self._exit])
        self._health = None
        if not keep_exit:
            self._exit, self._exited_at, self._forced = None, 0.0, None
        for t in watchers:
            if t is not None and not t.done():
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    # -- re-adoption ---------------------------------------------------------------------------
    async def _resume(self) -> None:
        """Reconcile the cached local state with the containers found at agent start."""
        found, self._found = self._found, []
        local = self.local
        plan = plan_resume(local, self._cached, found)
        for extra in plan.strays:
            log.info("task %s: removing stray container %s", self.task.id, extra.runtime_id)
            with contextlib.suppress(Exception):
                await self.env.call(self.env.runtime.remove, extra.runtime_id)
        action, current = plan.action, plan.current
        if action in (Resume.FORGET, Resume.VANISHED):
            self._set_local(runtime_id="", started=False)
        if action == Resume.VANISHED:
            self._advance(TaskState.FAILED, error="the container disappeared while the agent was down")
        elif action == Resume.UNTRACKED:
            self._advance(TaskState.FAILED, error="the agent lost track of this task's container")
        if current is None:
            return
        self._set_local(runtime_id=current.runtime_id)
        self._check = health_check(self.task, current.labels)
        if action == Resume.STOP_ENDED:
            await self._stop_container()
        elif action == Resume.ADOPT_RUNNING:
            log.info("task %s: re-adopted running container %s", self.task.id, current.runtime_id)
            if local.state < TaskState.STARTING:
                self._advance(TaskState.STARTING)
            if not local.started:
                self._started()
        elif action == Resume.ADOPT_EXITED:
            outcome, error = exit_outcome(current)
            log.info("task %s: exited while the agent was down: %s", self.task.id, error or "code 0")
            self._set_local(started=True)
            self._advance(outcome, exit_code=current.exit_code, error=error)
        elif action == Resume.ADOPT_CREATED:
            self._advance(TaskState.STARTING, message="starting")

    async def _learn_check(self, runtime_id: str) -> None:
        """The image's own health check, from the container's labels, when the service has none."""
        if self.task.spec.health is not None or self.task.spec.container.no_healthcheck:
            return
        try:
            status = await self.env.call(self.env.runtime.status, runtime_id)
        except Exception as exc:  # the check then starts with the next container, or never
            log.warning("task %s: cannot read its container's labels: %s", self.task.id, exc)
            return
        self._check = health_check(self.task, status.labels)

    # -- local state and reports ---------------------------------------------------------------
    def _set_local(self, **fields: Any) -> None:
        """Record in memory and in the cache (before the next runtime call)."""
        self.local = msgspec.structs.replace(self.local, **fields)
        self.env.save(self.task.id, self.local)

    def _advance(self, state: TaskState, **fields: Any) -> None:
        """Move to `state` (or stay, for a health change) and queue the report; never backwards."""
        if state != self.local.state and not can_transition(self.local.state, state):
            log.debug("task %s: not moving %s -> %s", self.task.id, self.local.state.label, state.label)
            return
        fields.setdefault("message", self.local.message if state == self.local.state else "")
        self._set_local(state=state, **fields)
        self.env.report(self._report())

    def _report(self) -> Report:
        local = self.local
        return Report(
            task_id=self.task.id,
            state=local.state,
            timestamp=self.env.clock(),
            message=local.message,
            error=local.error,
            exit_code=local.exit_code,
            runtime_id=local.runtime_id,
            health=local.health,
        )

    # -- time ----------------------------------------------------------------------------------
    async def _sleep_unless_stopping(self, seconds: float) -> None:
        """Sleep, waking early only to stop or remove the task: our own status reports come back
        as task updates, and must not cut a retry delay short."""
        deadline = time.monotonic() + seconds
        while not self.local.leaving and self.task.desired_state <= RUNNING:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._changed.clear()  # the loop looks at everything again after this step
            await self._sleep(remaining)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake as soon as the task changes (a new desired state, removal, reconnect)."""
        with contextlib.suppress(TimeoutError):
            await wait_within(self._changed.wait(), seconds)
