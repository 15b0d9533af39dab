"""Which node a named volume lives on, decided by a pass (ADR 40): pure functions.

A volume is bound to the node of the first task placed that mounts it; the pass's plan then
records the binding, creating the volume with the options of the mount that named it.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from warren import mounts
from warren.model import Task, Volume
from warren.state import ClusterState


def bind_late(state: ClusterState, homes: dict[str, str], bound: dict[str, tuple[str, Task]]) -> None:
    """A task placed while its volume was not bound (a plan committed late) binds it now: adds
    to `bound` (name -> (node, a task mounting it)) the volumes with no home in `homes`."""
    for service_id in sorted(state.coupled_services):  # those that mount volumes are among them
        service = state.services[service_id]
        if not service.spec.mounts:
            continue
        names = [n for n in mounts.volume_names(service.spec) if n not in homes]
        for name in names:
            if name in bound:
                continue
            for task_id in sorted(state.tasks_by_service.get(service.id, ())):
                task = state.tasks[task_id]
                if task.node_id and not task.state.terminal and name in mounts.volume_names(task.spec):
                    bound[name] = (task.node_id, task)
                    break


def volumes_bound(
    state: ClusterState, bound: dict[str, tuple[str, Task]], new_id: Callable[[], str], now: float
) -> tuple[Volume, ...]:
    """The volumes of `bound`, each with its node: existing ones updated, missing ones created."""
    out = []
    for name, (node_id, task) in sorted(bound.items()):
        volume = state.volume_by_name(name)
        if volume is None:
            options = next((m.volume_options for m in task.spec.mounts if m.source == name), {})
            volume = Volume(id=new_id(), name=name, options=dict(options), created_at=now)
        out.append(msgspec.structs.replace(volume, node_id=node_id, updated_at=now))
    return tuple(out)
