"""What a task controller does next, decided without I/O (as SwarmKit's exec.Do is apart from
its controller). The controller (warren.agent.controller) performs each decision: runtime calls,
the cache, reports, sleeps. Everything here is a function of values, tested without asyncio.

    decide_step   the one step to take now, from the local state and the desired state:
        assigned -> accepted -> preparing (runtime.prepare) -> starting (runtime.start)
                 -> running (at once, or once healthy) -> complete | failed -> remove container
        desired shutdown: stop (stop signal, grace period, then kill) -> shutdown -> remove
        task left the assignment set: stop and remove, report nothing (the managers forgot it)
    plan_failure  a failed prepare or start: end the task, or retry it after a backoff
    plan_exit     what an exit means: the end to report, or a local restart (ADR 12)
    plan_resume   what a restarted agent does with the containers it found for a task
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from warren.agent.runtime import (
    IMAGE_HEALTH_LABEL,
    SERVICE_LABEL,
    TASK_LABEL,
    ContainerSpec,
    ContainerState,
    ContainerStatus,
)
from warren.container import expand_hostname, image_health_check
from warren.model import HealthCheck, RestartPolicy, Task, TaskState
from warren.restart import next_attempt

RUNNING = TaskState.RUNNING


class LocalState(msgspec.Struct, frozen=True):
    """What the agent knows about one task beyond its spec. `state` is the last state it reached
    (and reported, or queued to report); `restarts` counts restarts it made on its own."""

    state: TaskState = TaskState.ASSIGNED
    runtime_id: str = ""  # the container made for the task ("" = none, or removed)
    started: bool = False  # start() succeeded for runtime_id
    attempt: int = 0  # the task's attempt number, raised by each local restart
    restarts: int = 0
    health: str = ""
    exit_code: int | None = None
    message: str = ""
    error: str = ""
    started_at: float = 0.0  # wall clock of the last start, for the restart window
    leaving: bool = False  # the task left the assignment set: stop and remove its container


def initial_state(task: Task) -> LocalState:
    """Local state for a task the cache does not know: where the managers say it is. A new task
    is ASSIGNED; a terminal one (history) must never run again."""
    return LocalState(state=max(task.state, TaskState.ASSIGNED), attempt=task.attempt)


def stop_signal(task: Task) -> str:
    """The spec's stop signal (checked by the manager), SIGTERM when it names none."""
    return task.spec.stop_signal or "SIGTERM"


def container_spec(task: Task, log_dir: Path, netns: str = "", node_hostname: str = "") -> ContainerSpec:
    """What the runtime runs for a task; the labels let a restarted agent find it again."""
    spec = task.spec
    options = spec.container
    return ContainerSpec(
        task_id=task.id,
        image=spec.image,
        command=spec.command,
        args=spec.args,
        env=dict(spec.env),
        cwd=options.workdir,
        user=options.user,
        limits=spec.limits,
        read_only_rootfs=options.read_only,
        stop_signal=stop_signal(task),
        labels={**options.labels, TASK_LABEL: task.id, SERVICE_LABEL: task.service_name},
        log_path=str(log_dir / f"{task.id}.log"),
        netns=netns,
        hostname=task_hostname(task, node_hostname),
        options=options,
    )


def health_check(task: Task, labels: Mapping[str, str]) -> HealthCheck | None:
    """The check the agent runs: the service's; else, unless --no-healthcheck, the image's own
    (in its container's `labels`, as the driver found it in the image config)."""
    if task.spec.health is not None or task.spec.container.no_healthcheck:
        return task.spec.health
    return image_health_check(labels.get(IMAGE_HEALTH_LABEL, ""))


def task_hostname(task: Task, node_hostname: str) -> str:
    """The spec's hostname template filled in for this task ("" without one), Docker's fields."""
    template = task.spec.container.hostname
    if not template:
        return ""
    instance = str(task.slot) if task.slot else task.node_id  # a global task is named by its node, as in Swarm
    values = {
        "Service.ID": task.service_id,
        "Service.Name": task.service_name,
        "Task.ID": task.id,
        "Task.Name": f"{task.service_name}.{instance}.{task.id}",
        "Task.Slot": str(task.slot),  # 0 for a global task, as in Swarm
        "Node.ID": task.node_id,
        "Node.Hostname": node_hostname,
    }
    return expand_hostname(template, values)


def exit_outcome(status: ContainerStatus) -> tuple[TaskState, str]:
    """The terminal state an exit means, and the error shown by `service ps`."""
    if status.state == ContainerState.UNKNOWN:
        return TaskState.FAILED, status.error or "the container disappeared"
    if status.exit_code is None:
        return TaskState.FAILED, "task exited while the agent was not watching (exit code unknown)"
    if status.exit_code == 0:
        return TaskState.COMPLETE, ""
    return TaskState.FAILED, f"task exited with code {status.exit_code}"


# -- the next step ---------------------------------------------------------------------------------
class Step(enum.Enum):
    """One step of a task's life; the controller makes at most one runtime call for it."""

    TEARDOWN = "teardown"  # the task left the assignment set: stop, remove, finish quietly
    REMOVE_CONTAINER = "remove container"  # it ended and never runs again: free the container
    RELEASE_NETWORK = "release network"  # ... and its network namespace
    WAIT = "wait"  # nothing to do until the task or the connection changes
    SHUTDOWN = "shutdown"  # desired shutdown: stop gracefully, report SHUTDOWN, remove
    ACCEPT = "accept"  # report ACCEPTED
    BEGIN_PREPARING = "begin preparing"  # report PREPARING
    PREPARE = "prepare"  # make the container (runtime.prepare), then report STARTING
    START = "start"  # start the prepared container (runtime.start)
    MONITOR = "monitor"  # watch the started container: exit, health, changes


def decide_step(local: LocalState, desired: TaskState, network_released: bool) -> Step:
    """The step to take now. States only move forward: each step leads to a later state, or to
    the same one with the container, its network or its watchers changed."""
    if local.leaving:
        return Step.TEARDOWN
    if local.state.terminal:
        if local.runtime_id:
            return Step.REMOVE_CONTAINER
        if not network_released:  # whether or not a container was ever made
            return Step.RELEASE_NETWORK
        return Step.WAIT
    if desired > RUNNING:
        return Step.SHUTDOWN
    if local.state < TaskState.ACCEPTED:
        return Step.ACCEPT
    if local.state == TaskState.ACCEPTED:
        return Step.BEGIN_PREPARING
    if local.state == TaskState.PREPARING:
        return Step.PREPARE
    if not local.started:
        # Its container vanished before it started: make it again.
        return Step.START if local.runtime_id else Step.PREPARE
    return Step.MONITOR


# -- a failed step ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FailurePlan:
    state: TaskState  # the state to report: the same one while the step is retried
    message: str
    error: str = ""  # the task's error, once it ends
    retry: bool = False  # retry the step after the backoff's delay


def plan_failure(
    state: TaskState, what: str, message: str, *, permanent: bool, reject: bool, failures: int, gave_up: bool
) -> FailurePlan:
    """A prepare (`reject`: the node cannot run this task) or a start failed with `message`,
    `failures` times in a row. A permanent failure ends the task at once; a transient one is
    retried until the backoff gives up, and says so at once: `service ps` shows the message
    while the task is not running yet."""
    if permanent:
        return FailurePlan(TaskState.REJECTED if reject else TaskState.FAILED, f"{what} failed", error=message)
    if gave_up:
        return FailurePlan(TaskState.FAILED, f"{what} failed", error=f"{what} failed: {message}")
    return FailurePlan(state, f"{what} failed: {message} (retrying, attempt {failures + 1})", retry=True)


# -- re-adoption after an agent restart ------------------------------------------------------------
class Resume(enum.Enum):
    """What the cached local state and the container found for a task add up to."""

    NOTHING = "nothing"  # no container and nothing to correct
    FORGET = "forget"  # the recorded container is gone but never started: prepare again
    VANISHED = "vanished"  # the started container is gone: the task failed
    UNTRACKED = "untracked"  # the managers saw it start, but the cache has no record of it
    ADOPT = "adopt"  # record the container, nothing more to do
    STOP_ENDED = "stop ended"  # the task ended but its container still runs: stop it
    ADOPT_RUNNING = "adopt running"  # it runs: watch it (STARTING or RUNNING)
    ADOPT_EXITED = "adopt exited"  # it exited while the agent was down: report how
    ADOPT_CREATED = "adopt created"  # it was prepared but not started: start it


@dataclass(frozen=True)
class ResumePlan:
    action: Resume
    current: ContainerStatus | None = None  # the container to keep
    strays: tuple[ContainerStatus, ...] = field(default=())  # the task's other containers: remove


def plan_resume(local: LocalState, cached: bool, found: list[ContainerStatus]) -> ResumePlan:
    """Reconcile a task's cached local state (`cached`: the cache knew the task) with the
    containers found by its label at agent start. One container is kept: the recorded one, else
    a running one, else any; the others are strays."""
    if not found and local.state.terminal:
        return ResumePlan(Resume.NOTHING)
    current = next((c for c in found if c.runtime_id == local.runtime_id), None)
    if current is None:
        live = [c for c in found if c.state == ContainerState.RUNNING]
        current = (live or found)[0] if found else None
    strays = tuple(c for c in found if c is not current)
    if current is None:
        if local.state.terminal:
            action = Resume.NOTHING
        elif local.started:
            action = Resume.VANISHED
        elif not cached and local.state >= TaskState.STARTING:
            action = Resume.UNTRACKED
        elif local.runtime_id:
            action = Resume.FORGET
        else:
            action = Resume.NOTHING
        return ResumePlan(action, None, strays)
    if local.state.terminal:
        action = Resume.STOP_ENDED if current.state == ContainerState.RUNNING else Resume.ADOPT
    elif current.state == ContainerState.RUNNING:
        action = Resume.ADOPT_RUNNING
    elif current.state in (ContainerState.EXITED, ContainerState.UNKNOWN) and (
        local.started or local.state >= TaskState.STARTING
    ):
        action = Resume.ADOPT_EXITED
    elif current.state == ContainerState.CREATED and local.state == TaskState.PREPARING:
        action = Resume.ADOPT_CREATED
    else:
        action = Resume.ADOPT
    return ResumePlan(action, current, strays)


# -- an exit -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExitPlan:
    outcome: TaskState  # COMPLETE or FAILED
    error: str
    restart_attempt: int | None = None  # restart in place as this attempt instead of reporting the end
    wait: float = 0.0  # ... once this many more seconds have passed (the policy's delay)


def plan_exit(
    policy: RestartPolicy,
    local: LocalState,
    status: ContainerStatus,
    forced: tuple[TaskState, str] | None,
    connected: bool,
    ended_at: float,
    since_exit: float,
) -> ExitPlan:
    """What an exit means. `forced` is the end the agent imposed (stopped as unhealthy);
    `ended_at` the wall clock of the exit, `since_exit` how long ago the agent saw it. While no
    manager is reachable, the agent restarts the task itself under its restart policy (ADR 12);
    otherwise the managers hear the end and decide."""
    outcome, error = forced or exit_outcome(status)
    ran_for = max(0.0, ended_at - local.started_at)
    attempt = next_attempt(policy, outcome, local.attempt, ran_for)
    if attempt is None or connected:
        return ExitPlan(outcome, error)
    return ExitPlan(outcome, error, attempt, wait=max(0.0, policy.delay - since_exit))


# -- containers found at agent start -----------------------------------------------------------------
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
