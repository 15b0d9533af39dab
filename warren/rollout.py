"""Rolling updates and rollbacks (ADR 33), pure: how far a service's rollout has come, and what
the reconciler does next.

Everything is derived from the replicated state (the tasks' versions, states, health and
`ready_at`, and the service's `update_status`), so a new leader continues where the last one
stopped. A task of the version being rolled out *succeeds* once it has been ready (running,
and healthy if it has a health check) for the monitor period, and *fails* if it ends or turns
unhealthy first. `parallelism` lanes each replace one task at a time; a lane is free again
`delay` seconds after its task succeeded, or as soon as its task failed or was stopped.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec

from warren.model import (
    FailureAction,
    RolloutState,
    Service,
    Task,
    TaskState,
    UpdateConfig,
    UpdateOrder,
    UpdateStatus,
    host_ports,
    is_stopping,
)


class Outcome(enum.Enum):
    PENDING = "pending"  # on its way, or ready for less than the monitor period
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"  # stopped on purpose, or lost with its node: neither success nor failure


def outcome(task: Task, monitor: float, now: float) -> Outcome:
    if is_stopping(task):  # told to stop, or draining before its stop
        return Outcome.STOPPED
    if task.state in (TaskState.FAILED, TaskState.REJECTED, TaskState.COMPLETE) or task.health == "unhealthy":
        return Outcome.FAILED  # a service's task that exits, even with 0, has failed
    if task.state.terminal:  # orphaned with its node, or shut down by its agent
        return Outcome.STOPPED
    if task.ready_at > 0 and now >= task.ready_at + monitor:
        return Outcome.SUCCEEDED
    return Outcome.PENDING


def failure(task: Task) -> str:
    """One line on why a new task failed, for the rollout's status."""
    name = f"{task.service_name}.{task.slot}" if task.slot else f"{task.service_name} on node {task.node_id[:12]}"
    if task.health == "unhealthy":
        why = "failed its health check"
    elif task.state == TaskState.REJECTED:
        why = f"was rejected: {task.error or task.message}"
    elif task.state == TaskState.COMPLETE:
        why = "exited with status 0"
    else:
        why = f"failed: {task.error or task.message or 'no reason given'}"
    return f"task {name} {why} (image {task.spec.image})"


@dataclass(frozen=True)
class Progress:
    succeeded: int
    failed: tuple[Task, ...]  # oldest failure first
    busy: int  # lanes taken: pending tasks, and successes still within their delay
    pending: int


def progress(new_tasks: Iterable[Task], config: UpdateConfig, now: float) -> Progress:
    """How the tasks of the version being rolled out are doing (those created since it started)."""
    succeeded = busy = pending = 0
    failed: list[Task] = []
    for task in new_tasks:
        result = outcome(task, config.monitor, now)
        if result == Outcome.SUCCEEDED:
            succeeded += 1
            busy += now < task.ready_at + config.monitor + config.delay
        elif result == Outcome.PENDING:
            pending += 1
            busy += 1
        elif result == Outcome.FAILED:
            failed.append(task)
    failed.sort(key=lambda t: (t.updated_at, t.id))
    return Progress(succeeded, tuple(failed), busy, pending)


def failures_exceed(failed: int, replicas: int, ratio: float) -> bool:
    """More tasks failed than `ratio` of the replicas allows (ratio 0: the first failure)."""
    return failed > ratio * max(replicas, 1)


def settings(service: Service) -> UpdateConfig:
    """The settings in effect: the rollback's while rolling back. A service publishing a
    host-mode port updates stop-first (ADR 46): the new task could not start beside the old one
    on its node, which holds the port until it ends."""
    status = service.update_status
    rolling_back = status is not None and status.state.rolling_back
    config = service.spec.rollback if rolling_back else service.spec.update
    if config.order == UpdateOrder.START_FIRST and host_ports(service.spec.ports):
        return msgspec.structs.replace(config, order=UpdateOrder.STOP_FIRST)
    return config


@dataclass(frozen=True)
class Step:
    start: int  # how many more outdated tasks to replace now
    status: UpdateStatus | None = None  # the status to commit, if it changes
    revert: bool = False  # the failure action is rollback: return to the previous spec


def step(service: Service, new_tasks: Sequence[Task], outdated: int, replicas: int, now: float) -> Step:
    """One pass of the rollout of `service.version`. `new_tasks`: the service's tasks of that
    version, live or ended (those created before the rollout started do not count);
    `outdated`: how many of its live tasks still run an older version; `replicas`: how many
    tasks it should have (the nodes it runs on, for a global service). With `revert`, the
    status is that of the rollback, which is version + 1 (versions only go up)."""
    status = service.update_status
    config = settings(service)
    if status is None or status.to_version != service.version or not status.state.active:
        # Paused, or done: a paused rollout starts nothing. Outdated tasks left after a rollout
        # ended (a node that came back) are replaced at the configured pace, without a status.
        halted = (RolloutState.PAUSED, RolloutState.ROLLBACK_PAUSED)
        if status is not None and status.to_version == service.version and status.state in halted:
            return Step(0)
        if outdated == 0:  # nothing to replace, whatever the lanes: every pass of a settled service
            return Step(0)
        lanes = config.parallelism or outdated
        busy = progress(new_tasks, config, now).busy
        return Step(max(0, min(outdated, lanes - busy)))

    done = progress((t for t in new_tasks if t.created_at >= status.started_at), config, now)
    # Tasks adopted from the rollout this one replaced (a settings-only change): not yet ready,
    # they hold this one open too. Their failures are not this rollout's.
    carried = sum(
        1 for t in new_tasks if t.created_at < status.started_at and outcome(t, config.monitor, now) == Outcome.PENDING
    )
    if done.failed and failures_exceed(len(done.failed), replicas, config.max_failure_ratio):
        action = config.failure_action
        if action != FailureAction.CONTINUE:
            cause = failure(done.failed[0])
            if len(done.failed) > 1:
                cause = f"{len(done.failed)} new tasks failed, the first: {cause}"
            if not status.state.rolling_back and action == FailureAction.ROLLBACK:
                back = UpdateStatus(
                    RolloutState.ROLLBACK_STARTED,
                    now,
                    service.version,
                    service.version + 1,
                    message=f"rolled back: {cause}",
                )
                return Step(0, back, revert=True)
            paused = RolloutState.ROLLBACK_PAUSED if status.state.rolling_back else RolloutState.PAUSED
            return Step(0, _moved(status, paused, now, f"paused: {cause}"))
    if outdated == 0 and done.pending == 0 and carried == 0:
        completed = RolloutState.ROLLBACK_COMPLETED if status.state.rolling_back else RolloutState.COMPLETED
        message = status.message if completed == RolloutState.ROLLBACK_COMPLETED else ""
        return Step(0, msgspec.structs.replace(status, state=completed, completed_at=now, message=message))
    lanes = config.parallelism or outdated + done.pending
    return Step(max(0, min(outdated, lanes - done.busy)))


def _moved(status: UpdateStatus, state: RolloutState, now: float, message: str) -> UpdateStatus:
    ended = 0.0 if state.active else now
    return msgspec.structs.replace(status, state=state, completed_at=ended, message=message)
