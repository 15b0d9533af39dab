"""`depends_on` (#14, ADR 49): a service's new tasks are not placed until the services it depends
on meet their condition. Read from the replicated state on every pass, so a new leader holds
exactly what the old one held. Pure."""

from __future__ import annotations

from warren.model import Service, ServiceDependency, ServiceMode, Task, TaskState
from warren.state import ClusterState

STARTED = "service_started"
HEALTHY = "service_healthy"
COMPLETED = "service_completed_successfully"
CONDITIONS = (STARTED, HEALTHY, COMPLETED)


def _needed(service: Service, tasks: list[Task]) -> int:
    """How many tasks must meet the condition: every replica; for a global service, every
    task meant to run (at least one)."""
    if service.spec.mode == ServiceMode.REPLICATED:
        return service.spec.replicas
    return max(1, sum(1 for t in tasks if t.desired_state == TaskState.RUNNING and not t.state.terminal))


def _meets(task: Task, condition: str, version: int) -> bool:
    if condition == COMPLETED:
        return task.state == TaskState.COMPLETE and task.exit_code == 0 and task.spec_version == version
    if task.desired_state != TaskState.RUNNING:
        return False
    if condition == HEALTHY:
        # A check passed: the spec's, or the image's HEALTHCHECK the agent found (ADR 42), which
        # only the agent knows; a task with no check at all never reports "healthy".
        return task.state == TaskState.RUNNING and task.health == "healthy"
    # Started: its process runs. A task with a health check is reported STARTING, with a health
    # status, from its start until its first healthy probe (the agent's readiness).
    return task.state == TaskState.RUNNING or (task.state == TaskState.STARTING and task.health != "")


def unmet(state: ClusterState, dependency: ServiceDependency) -> str:
    """Why `dependency` is not met ('' when it is)."""
    service = state.service_by_name(dependency.service)
    if service is None:
        return f"service {dependency.service} does not exist" if dependency.required else ""
    tasks = state.service_tasks(service.id)
    needed = _needed(service, tasks)
    met = sum(1 for t in tasks if _meets(t, dependency.condition, service.version))
    if met >= needed:
        return ""
    what = {STARTED: "running", HEALTHY: "healthy", COMPLETED: "completed successfully"}.get(
        dependency.condition, dependency.condition
    )
    if dependency.condition == HEALTHY and service.spec.health is None and _unchecked(tasks):
        what += " (it has no health check: none in its spec, none in its image)"
    return f"{met}/{needed} tasks of {dependency.service} {what}"


def _unchecked(tasks: list[Task]) -> bool:
    """A task runs with no health status: the agent found no check to run, so it never turns
    healthy (with one, it is STARTING with a status until its first healthy probe)."""
    return any(t.state == TaskState.RUNNING and t.desired_state == TaskState.RUNNING and not t.health for t in tasks)


def waiting_for(state: ClusterState, service: Service) -> str:
    """The pending reason of the service's new tasks while a dependency is unmet, else ''."""
    reasons = [why for d in service.depends_on if (why := unmet(state, d))]
    return f"waiting for dependencies: {'; '.join(reasons)}" if reasons else ""
