"""Tasks, and what is read of them everywhere: what their agent reports, whether they stop,
serve or are ready."""

from __future__ import annotations

import msgspec

from warren.model.spec import ServiceSpec
from warren.model.states import TaskState

# Read once, as in `states`: each `TaskState.X` is a lookup on the enum class (#15).
_RUNNING = TaskState.RUNNING


class Task(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """One instance of a service. `slot` numbers replicas (1..N); global tasks use slot 0 and
    are identified by their node. `spec_version` is the service version the task runs.
    Untracked by the cycle collector (gc=False, ADR 55): a task holds only immutable values, so
    it is never in a cycle, and a collection need not visit 100,000 of them."""

    id: str
    service_id: str
    service_name: str
    slot: int
    spec: ServiceSpec
    spec_version: int
    desired_state: TaskState = TaskState.RUNNING
    state: TaskState = TaskState.NEW
    node_id: str = ""
    message: str = ""
    error: str = ""
    exit_code: int | None = None
    runtime_id: str = ""
    health: str = ""
    attempt: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float = 0.0
    # Since when it has been running and not unhealthy (healthy, if it has a health check); 0
    # while it is not. A rollout counts a new task a success once ready for the monitor period.
    ready_at: float = 0.0
    overlay_address: str = ""  # its address in its node's subnet (ADR 17), allocated when placed
    # When the reconciler took it out of the load balancing to stop it (ADR 33): it keeps
    # running, desired RUNNING, until the nodes stop routing to it; 0 while it is not.
    draining_since: float = 0.0
    # The id of the task of the same slot this one replaces on another node (a rebalance, ADR
    # 36): both run the same version, and the old one serves until this one is ready.
    relocates: str = ""


# What an agent reports of its task: every other field is the managers' to set.
_STATUS_BLANK: dict[str, object] = {
    "state": TaskState.NEW,
    "message": "",
    "error": "",
    "exit_code": None,
    "runtime_id": "",
    "health": "",
    "updated_at": 0.0,
    "started_at": 0.0,
    "ready_at": 0.0,
}


def same_but_status(a: Task, b: Task) -> bool:
    """Whether two versions of a task differ only in what its agent reports (SwarmKit's
    `TasksEqualStable`): the fields are blanked rather than the others listed, so that a field
    added to Task later counts as the managers'."""
    return msgspec.structs.replace(a, **_STATUS_BLANK) == msgspec.structs.replace(b, **_STATUS_BLANK)


def is_stopping(task: Task) -> bool:
    """Told to stop, or draining before its stop (ADR 33): it no longer holds its slot."""
    return task.desired_state > _RUNNING or task.draining_since > 0


def is_routed(task: Task) -> bool:
    """May take new connections from the load balancers (a VIP's backends): running, fit to
    serve (healthy, with a health check), not stopping, and on the overlay."""
    if not task.overlay_address or task.desired_state != _RUNNING or task.draining_since:
        return False
    return is_ready(task)


def without_history(tasks: list[Task]) -> list[Task]:
    """What a task listing shows unless asked for history (ADR 55): every task that has not
    ended, and an ended one only if it is still desired running and the newest of its slot (of
    its node, for a global task), which tells why the slot has no live task yet. A task that
    failed on its own keeps desired state running (its slot's restart count); once a newer one
    takes its slot it is history, as Swarm's restart marks it shutdown."""

    def slot(t: Task) -> tuple[str, int, str]:
        return (t.service_id, t.slot, "" if t.slot else t.node_id)

    # Only an ended task still desired running (one that failed) can be its slot's newest; ended
    # tasks told to stop are history. So only the slots of those need their newest: 10,000 tasks
    # running beside 50,000 stopped by updates cost two passes, not a key per task (#15).
    failed_slots = {slot(t) for t in tasks if t.state >= TaskState.COMPLETE and t.desired_state == TaskState.RUNNING}
    if not failed_slots:
        return [t for t in tasks if t.state < TaskState.COMPLETE]
    failed_numbers = {key[1] for key in failed_slots}
    newest: dict[tuple[str, int, str], Task] = {}
    for t in tasks:
        if t.desired_state == TaskState.RUNNING and t.slot in failed_numbers and (key := slot(t)) in failed_slots:
            held = newest.get(key)
            if held is None or (t.created_at, t.id) > (held.created_at, held.id):
                newest[key] = t
    return [
        t
        for t in tasks
        if t.state < TaskState.COMPLETE or (t.desired_state == TaskState.RUNNING and newest.get(slot(t)) is t)
    ]


def is_ready(task: Task) -> bool:
    """Running and fit to serve: healthy if its spec has a health check, else not unhealthy."""
    if task.state != _RUNNING:
        return False
    return task.health == "healthy" if task.spec.health is not None else task.health != "unhealthy"
