"""One task's controller: drives its container through the runtime, one step at a time.

The shape follows SwarmKit's task controller: each step looks at the task's desired state and
the state the agent last reached, makes at most one runtime call (in a thread), records the new
local state in the cache *before* the next call, and queues a status report. States only move
forward (model.can_transition): the agent never reports a task backwards.

    assigned -> accepted -> preparing (runtime.prepare) -> starting (runtime.start)
             -> running (at once, or once healthy) -> complete | failed -> remove container
    desired shutdown: stop (stop signal, grace period, then kill) -> shutdown -> remove container
    task left the assignment set: stop and remove, report nothing (the managers forgot it)

While no manager is reachable, an exited task is restarted in place under its cached restart
policy (same task id, a local attempt counter); see ADR 12.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec

from warren.agent import health
from warren.agent.cache import LocalState
from warren.agent.runtime import (
    SERVICE_LABEL,
    TASK_LABEL,
    ContainerSpec,
    ContainerState,
    ContainerStatus,
    Runtime,
    RuntimeFailure,
)
from warren.agent.status import Report
from warren.model import HealthCheck, RestartCondition, RestartPolicy, Task, TaskState, can_transition

log = logging.getLogger(__name__)

RUNNING = TaskState.RUNNING


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
    clock: Callable[[], float] = time.time
    retry_delays: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)  # transient prepare failures
    wait_slice: float = 2.0  # a wait() call returns at least this often, so closing is prompt


def container_spec(task: Task, log_dir: Path, netns: str = "") -> ContainerSpec:
    """What the runtime runs for a task; the labels let a restarted agent find it again."""
    spec = task.spec
    return ContainerSpec(
        task_id=task.id,
        image=spec.image,
        command=spec.command,
        args=spec.args,
        env=dict(spec.env),
        limits=spec.limits,
        stop_signal=stop_signal(task),
        labels={TASK_LABEL: task.id, SERVICE_LABEL: task.service_name},
        log_path=str(log_dir / f"{task.id}.log"),
        netns=netns,
    )


def stop_signal(task: Task) -> str:
    """The spec's stop signal (checked by the manager), SIGTERM when it names none."""
    return task.spec.stop_signal or "SIGTERM"


def exit_outcome(status: ContainerStatus) -> tuple[TaskState, str]:
    """The terminal state an exit means, and the error shown by `service ps`."""
    if status.state == ContainerState.UNKNOWN:
        return TaskState.FAILED, status.error or "the container disappeared"
    if status.exit_code is None:
        return TaskState.FAILED, "task exited while the agent was not watching (exit code unknown)"
    if status.exit_code == 0:
        return TaskState.COMPLETE, ""
    return TaskState.FAILED, f"task exited with code {status.exit_code}"


def next_attempt(policy: RestartPolicy, outcome: TaskState, attempt: int, ran_for: float) -> int | None:
    """The attempt number of a local restart, or None when the policy forbids one. Mirrors the
    manager's reconciler.restart_attempt, so a task gets the same number of tries whether the
    manager or the disconnected agent restarts it."""
    if policy.condition == RestartCondition.NONE:
        return None
    if policy.condition == RestartCondition.ON_FAILURE and outcome == TaskState.COMPLETE:
        return None
    base = 0 if policy.window > 0 and ran_for >= policy.window else attempt
    if policy.max_attempts and base >= policy.max_attempts:
        return None
    return base + 1


def initial_state(task: Task) -> LocalState:
    """Local state for a task the cache does not know: where the managers say it is. A new task
    is ASSIGNED; a terminal one (history) must never run again."""
    return LocalState(state=max(task.state, TaskState.ASSIGNED), attempt=task.attempt)


class TaskController:
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
        self._failures = 0  # consecutive transient failures of the current step
        self._network_released = False  # the task's namespace is gone (known only once released)
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
        try:
            await self._resume()
        except Exception:
            log.exception("task %s: re-adoption failed", self.task.id)
        while True:
            self._changed.clear()
            try:
                if self.local.leaving:
                    if await self._teardown():
                        return
                    continue
                if await self._step():
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug or an unexpected runtime error: never let it kill the agent. Back off and
                # look again; the step is idempotent.
                log.exception("task %s: step failed", self.task.id)
                await self._sleep(self._backoff())
                continue
            await self._changed.wait()

    async def _step(self) -> bool:
        """Take one step; False when there is nothing to do until something changes."""
        local, desired = self.local, self.task.desired_state
        if local.state.terminal:
            if local.runtime_id:  # it never runs again: free its container and snapshot now
                await self._remove_container()
                return True
            if not self._network_released:  # whether or not a container was ever made
                await self._release_network()
                return True
            return False
        if desired > RUNNING:
            await self._shutdown()
            return True
        if local.state < TaskState.ACCEPTED:
            self._advance(TaskState.ACCEPTED, message="accepted")
        elif local.state == TaskState.ACCEPTED:
            self._advance(TaskState.PREPARING, message="preparing")
        elif local.state == TaskState.PREPARING:
            await self._prepare()
        elif not local.started:
            await self._start()
        else:
            return await self._monitor()
        return True

    # -- steps ---------------------------------------------------------------------------------
    async def _spec(self) -> ContainerSpec:
        """The container to create, in its own network namespace when the overlay is on."""
        netns = resolv_conf = ""
        if self.env.networks is not None and self.task.overlay_address:
            netns = await self.env.call(self.env.networks.attach, self.task.id, self.task.overlay_address)
            resolv_conf = self.env.networks.resolv_conf()
        return msgspec.structs.replace(container_spec(self.task, self.env.log_dir, netns), resolv_conf=resolv_conf)

    async def _prepare(self) -> None:
        try:
            spec = await self._spec()
            runtime_id = await self.env.call(self.env.runtime.prepare, spec)
        except Exception as exc:
            await self._failed_step("preparing", exc, reject=True)
            return
        self._failures = 0
        self._set_local(runtime_id=runtime_id, started=False)
        self._advance(TaskState.STARTING, message="starting")

    async def _start(self) -> None:
        runtime_id = self.local.runtime_id
        if not runtime_id:  # its container vanished before it started: make it again
            await self._prepare()
            return
        try:
            await self.env.call(self.env.runtime.start, runtime_id)
        except Exception as exc:
            await self._failed_step("starting", exc, reject=False)
            return
        self._failures = 0
        self._started()

    def _started(self) -> None:
        """The process runs: RUNNING at once, or STARTING until the health check passes."""
        self._set_local(started=True, started_at=self.env.clock(), exit_code=None, error="")
        if self.task.spec.health is None:
            self._advance(RUNNING, message="started", health="")
        else:
            self._advance(max(self.local.state, TaskState.STARTING), health=health.STARTING)

    async def _failed_step(self, what: str, exc: Exception, reject: bool) -> None:
        """Permanent failures end the task at once; transient ones are retried with backoff."""
        message = exc.message if isinstance(exc, RuntimeFailure) else f"{type(exc).__name__}: {exc}"
        permanent = isinstance(exc, RuntimeFailure) and exc.permanent
        if permanent:
            state = TaskState.REJECTED if reject else TaskState.FAILED
            log.info("task %s: %s failed: %s", self.task.id, what, message)
            self._advance(state, error=message, message=f"{what} failed")
            return
        self._failures += 1
        if self._failures > len(self.env.retry_delays):
            log.warning("task %s: %s failed %d times: %s", self.task.id, what, self._failures, message)
            self._advance(TaskState.FAILED, error=f"{what} failed: {message}", message=f"{what} failed")
            return
        delay = self.env.retry_delays[self._failures - 1]
        log.info("task %s: %s failed (%s), retrying in %gs", self.task.id, what, message, delay)
        # Say so at once: `service ps` shows the message while the task is not running yet.
        self._advance(self.local.state, message=f"{what} failed: {message} (retrying, attempt {self._failures + 1})")
        await self._sleep_unless_stopping(delay)

    async def _monitor(self) -> bool:
        """Watch the started container until it exits, turns unhealthy, or the task changes."""
        runtime_id = self.local.runtime_id
        if self._exit is None:
            self._exit = asyncio.create_task(self._wait_exit(runtime_id))
        if self._health is None and self.task.spec.health is not None and not self._exit.done():
            self._health = asyncio.create_task(self._watch_health(self.task.spec.health, runtime_id))
        if self._unhealthy is not None:
            await self._stop_unhealthy()
            return True
        if self._exit.done():
            await self._handle_exit(self._exit.result())
            return True
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            waiting: set[asyncio.Future[Any]] = {self._exit, changed}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
        return True

    async def _wait_exit(self, runtime_id: str) -> ContainerStatus:
        """runtime.wait in slices (a blocked thread cannot be cancelled), tolerating errors."""
        call = self.env.wait_call or self.env.call
        while True:
            try:
                status = await call(self.env.runtime.wait, runtime_id, self.env.wait_slice)
            except Exception as exc:
                message = exc.message if isinstance(exc, RuntimeFailure) else str(exc)
                try:
                    status = await self.env.call(self.env.runtime.status, runtime_id)
                except Exception:
                    status = None
                if status is not None and status.state in (ContainerState.EXITED, ContainerState.UNKNOWN):
                    return status if status.error else msgspec.structs.replace(status, error=message)
                log.warning("task %s: waiting on container %s failed: %s", self.task.id, runtime_id, message)
                await asyncio.sleep(1.0)
                continue
            if status is not None:
                return status

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
        outcome, error = self._forced or exit_outcome(status)
        if not self._exited_at:
            self._exited_at = time.monotonic()
            log.info("task %s: %s (%s)", self.task.id, outcome.label, error or "exit code 0")
        ran_for = max(0.0, (status.finished_at or self.env.clock()) - self.local.started_at)
        attempt = next_attempt(self.task.spec.restart, outcome, self.local.attempt, ran_for)
        if attempt is not None and not self.env.connected():
            remaining = self._exited_at + self.task.spec.restart.delay - time.monotonic()
            if remaining > 0:
                await self._sleep(remaining)  # woken early by a change (reconnect, shutdown)
                return
            await self._restart_locally(attempt)
            return
        fields: dict[str, Any] = {
            "exit_code": status.exit_code,
            "error": error,
            "message": "finished" if not error else "",
        }
        if self._forced is not None:
            fields["health"] = health.UNHEALTHY
        self._exit, self._exited_at, self._forced = None, 0.0, None
        self._advance(outcome, **fields)

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
            await self.env.call(self.env.runtime.start, runtime_id)
        except Exception as exc:
            message = exc.message if isinstance(exc, RuntimeFailure) else str(exc)
            self._advance(TaskState.FAILED, error=f"local restart failed: {message}", message="restart failed")
            return
        self._set_local(started=True, started_at=self.env.clock(), exit_code=None)
        status = health.STARTING if self.task.spec.health is not None else ""
        self._advance(self.local.state, health=status, message=f"restarted by the agent ({self.local.restarts})")

    async def _watch_health(self, check: HealthCheck, runtime_id: str) -> None:
        """Docker's health rules (warren.agent.health), probing in the agent's thread pool."""
        if self.env.networks is not None and self.task.overlay_address:
            check = health.on_task_address(check, self.task.overlay_address)

        def probe() -> Awaitable[health.ProbeResult]:
            return self.env.call(health.run_probe, check, self.env.runtime, runtime_id)

        try:
            await health.monitor(check, probe, self._on_health, started_at=self.local.started_at, clock=self.env.clock)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("task %s: health monitor failed", self.task.id)

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
                if self._failures <= len(self.env.retry_delays):
                    return False
                log.error("task %s: giving up removing container %s", self.task.id, self.local.runtime_id)
        if not self._network_released and not await self._release_network():
            if self._failures <= len(self.env.retry_delays):
                return False
            log.error("task %s: giving up releasing its network (the agent's sweep retries)", self.task.id)
        with contextlib.suppress(OSError):
            (self.env.log_dir / f"{self.task.id}.log").unlink()
        if self._on_done is not None:
            self._on_done(self.task.id)
        self.done.set()
        return True

    async def _stop_container(self) -> ContainerStatus | None:
        runtime_id = self.local.runtime_id
        grace = self.task.spec.stop_grace_period
        while True:
            try:
                status = await self.env.call(self.env.runtime.stop, runtime_id, grace, stop_signal(self.task))
            except Exception as exc:
                log.warning("task %s: stopping container %s failed: %s", self.task.id, runtime_id, exc)
                if self._failures >= len(self.env.retry_delays):
                    self._failures = 0
                    return None  # give up stopping; remove() kills what is left
                await asyncio.sleep(self._backoff())
                continue
            self._failures = 0
            return status

    async def _remove_container(self) -> bool:
        runtime_id = self.local.runtime_id
        try:
            await self.env.call(self.env.runtime.remove, runtime_id)
        except Exception as exc:
            log.warning("task %s: removing container %s failed: %s", self.task.id, runtime_id, exc)
            await self._sleep(self._backoff())
            return False
        self._failures = 0
        self._set_local(runtime_id="", started=False)
        return True

    async def _release_network(self) -> bool:
        """Remove the task's namespace and veth once nothing runs in them. Unconditional: a task
        that failed before its container existed has one too, and an ended task's overlay
        address may already be given back (ADR 23)."""
        if self.env.networks is not None:
            try:
                await self.env.call(self.env.networks.detach, self.task.id)
            except Exception as exc:
                log.warning("task %s: releasing its network failed: %s", self.task.id, exc)
                await self._sleep(self._backoff())
                return False
        self._failures = 0
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
        if not found and self.local.state.terminal:
            return
        current = next((c for c in found if c.runtime_id == self.local.runtime_id), None)
        if current is None:
            live = [c for c in found if c.state == ContainerState.RUNNING]
            current = live[0] if live else found[0] if found else None
        for extra in found:
            if extra is not current:
                log.info("task %s: removing stray container %s", self.task.id, extra.runtime_id)
                with contextlib.suppress(Exception):
                    await self.env.call(self.env.runtime.remove, extra.runtime_id)
        local = self.local
        if current is None:
            if local.state.terminal:
                return
            if local.started:
                self._set_local(runtime_id="", started=False)
                self._advance(TaskState.FAILED, error="the container disappeared while the agent was down")
            elif not self._cached and local.state >= TaskState.STARTING:
                # The managers saw it start, but this agent has no record of it (cache lost).
                self._advance(TaskState.FAILED, error="the agent lost track of this task's container")
            elif local.runtime_id:
                self._set_local(runtime_id="", started=False)  # never started: prepare again
            return
        self._set_local(runtime_id=current.runtime_id)
        if local.state.terminal:
            if current.state == ContainerState.RUNNING:
                await self._stop_container()
            return
        if current.state == ContainerState.RUNNING:
            log.info("task %s: re-adopted running container %s", self.task.id, current.runtime_id)
            if local.state < TaskState.STARTING:
                self._advance(TaskState.STARTING)
            if not local.started:
                self._started()
            return
        if current.state in (ContainerState.EXITED, ContainerState.UNKNOWN) and (
            local.started or local.state >= TaskState.STARTING
        ):
            outcome, error = exit_outcome(current)
            log.info("task %s: exited while the agent was down: %s", self.task.id, error or "code 0")
            self._set_local(started=True)
            self._advance(outcome, exit_code=current.exit_code, error=error)
            return
        if current.state == ContainerState.CREATED and local.state == TaskState.PREPARING:
            self._advance(TaskState.STARTING, message="starting")

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
    def _backoff(self) -> float:
        delays = self.env.retry_delays or (1.0,)
        self._failures += 1
        return delays[min(self._failures, len(delays)) - 1]

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
            await asyncio.wait_for(self._changed.wait(), seconds)


@dataclass
class ContainersByTask:
    """Containers found by label at agent start, grouped by task id; the rest are strays."""

    by_task: dict[str, list[ContainerStatus]] = field(default_factory=dict)
    unlabelled: list[ContainerStatus] = field(default_factory=list)

    @classmethod
    def group(cls, containers: list[ContainerStatus]) -> ContainersByTask:
        found = cls()
        for c in containers:
            task_id = c.labels.get(TASK_LABEL, "")
            if task_id:
                found.by_task.setdefault(task_id, []).append(c)
            else:
                found.unlabelled.append(c)
        return found
