"""Handlers of volume commands (ADR 40): create, remove, and the binding of volumes to the node
of their first task, which a plan carries."""

from __future__ import annotations

import msgspec

from warren import mounts
from warren.commands.types import Changes, CreateVolume, RemoveVolume, Result, error
from warren.model import Task, Volume
from warren.state import ClusterState, Delete, Put
from warren.text import shown


def create_volume(state: ClusterState, cmd: CreateVolume) -> tuple[Result, Changes]:
    volume = cmd.volume
    try:
        mounts.check_volume_name(volume.name)
        mounts.check_volume_options(volume.driver, volume.options)
    except mounts.MountError as exc:
        return error("invalid_argument", str(exc)), []
    if state.volume_by_name(volume.name) is not None:
        return error("already_exists", f"volume name {shown(volume.name)} is already in use"), []
    if volume.id in state.volumes:
        return error("already_exists", f"volume id {volume.id} is already in use"), []
    if volume.node_id and volume.node_id not in state.nodes:
        return error("not_found", f"node {volume.node_id} not found"), []
    return Result(id=volume.id), [Put("volume", volume)]


def remove_volume(state: ClusterState, cmd: RemoveVolume) -> tuple[Result, Changes]:
    volume = state.volumes.get(cmd.volume_id)
    if volume is None:
        return error("not_found", f"volume {cmd.volume_id} not found"), []
    users = mounts.users(state, volume.name)
    if users:
        more = f" and {len(users) - 3} more" if len(users) > 3 else ""
        return error(
            "failed_precondition", f"volume {volume.name} is in use by {', '.join(users[:3])}{more}: remove them first"
        ), []
    return Result(id=volume.id), [Delete("volume", volume.id)]


class VolumeBinding:
    """The volumes' nodes as a plan applies: its new bindings first, then each placement is
    checked against them (a plan computed from a stale snapshot must not split a task from its
    volume)."""

    def __init__(self, state: ClusterState) -> None:
        self._state = state
        self.homes = {v.name: v.node_id for v in state.volumes.values() if v.node_id}

    def bind(self, volumes: tuple[Volume, ...]) -> Changes:
        """Create or bind the plan's volumes; one that lives on a node already keeps it."""
        changes: Changes = []
        for wanted in volumes:
            current = self._state.volume_by_name(wanted.name)
            if not wanted.node_id or wanted.node_id not in self._state.nodes or wanted.name in self.homes:
                continue
            if current is None:
                new = wanted
            else:
                new = msgspec.structs.replace(current, node_id=wanted.node_id, updated_at=wanted.updated_at)
            self.homes[new.name] = new.node_id
            changes.append(Put("volume", new))
        return changes

    def allows(self, task: Task, node_id: str) -> bool:
        """Every volume the task mounts is on `node_id` or not yet bound anywhere."""
        return all(self.homes.get(name, node_id) == node_id for name in mounts.volume_names(task.spec))
