"""Handlers of task commands: a scheduling pass's plan and an agent's status reports."""

from __future__ import annotations

import msgspec

from warren import strategy
from warren.commands.nodes import node_status_change
from warren.commands.overlay import Addresses
from warren.commands.services import apply_rollouts
from warren.commands.types import OK, ApplyPlan, Changes, ReportTaskStatus, Result, TaskUpdate
from warren.commands.volumes import VolumeBinding
from warren.model import Resources, Task, TaskState, can_transition, host_ports, is_ready, is_stopping
from warren.scheduler import fits, host_ports_by_node, reserved_by_node
from warren.state import ClusterState, Delete, Put


def _task_update(task: Task, update: TaskUpdate) -> Task | None:
    """The task after `update`, or None when the update is stale or changes nothing."""
    if update.state is not None and update.state != task.state and not can_transition(task.state, update.state):
        return None
    if update.desired_state is not None and update.desired_state < task.desired_state:
        return None
    fields = {
        name: value
        for name in (
            "state",
            "desired_state",
            "node_id",
            "message",
            "error",
            "exit_code",
            "runtime_id",
            "health",
            "draining_since",
        )
        if (value := getattr(update, name)) is not None and value != getattr(task, name)
    }
    if not fields:
        return None
    if fields.get("state") == TaskState.RUNNING:
        fields["started_at"] = update.at
    updated = msgspec.structs.replace(task, updated_at=update.at, **fields)
    if is_ready(updated) != (task.ready_at > 0):  # ADR 33: a rollout's monitor counts from here
        updated = msgspec.structs.replace(updated, ready_at=update.at if is_ready(updated) else 0.0)
    return updated


def _adopted(state: ClusterState, task: Task, version: int | None) -> Task:
    """The task adopted into `version` of its service (ADR 33): its spec becomes that version's.
    Only a live task, into the service's current version, when it already runs that spec
    (`strategy.matches`); else unchanged."""
    service = state.services.get(task.service_id)
    if version is None or version == task.spec_version or service is None or service.version != version:
        return task
    if task.state.terminal or is_stopping(task) or not strategy.matches(task.spec, service.spec):
        return task
    return msgspec.structs.replace(task, spec=service.spec, spec_version=version)


class _Placement:
    """Re-checks placements of a plan at apply time. A plan is computed from a snapshot; if it
    commits late (a timed-out proposal applied after the next pass re-planned), its placements
    must not over-commit a node or fill a slot twice."""

    def __init__(self, state: ClusterState, stopping: set[str]) -> None:
        self._state = state
        self._stopping = stopping
        # Each read from the state for the nodes and services the plan touches only, when first
        # needed: built from every task, they took a few percent of the leader's Raft thread per
        # plan at 100,000 tasks (#15).
        self._reserved: dict[str, Resources] = {}  # node id -> reserved by its live tasks
        self._slots: dict[str, set[tuple[int, int]]] = {}  # service id -> (slot, version) held
        self._relocated: dict[str, set[str]] = {}  # service id -> tasks a rebalance's live task replaces (ADR 36)
        self._ports: dict[str, set[tuple[int, str]]] = {}  # node id -> host ports held (ADR 46)

    def fits(self, task: Task, node_id: str) -> bool:
        node = self._state.nodes.get(node_id)
        if node is None or not self._ports_free(task, node_id):
            return False
        need = task.spec.reservations
        if need.nano_cpus == 0 and need.memory_bytes == 0:
            return True
        used = self._reserved.get(node_id)
        if used is None:
            used = self._reserved[node_id] = reserved_by_node(self._state.node_tasks(node_id)).get(node_id, Resources())
        if not fits(node, used, need):
            return False
        self._reserved[node_id] = used + need
        return True

    def _ports_free(self, task: Task, node_id: str) -> bool:
        """No live task on the node holds one of the task's host ports; if so, it takes them."""
        ports = host_ports(task.spec.ports)
        if not ports:
            return True
        held = self._ports.get(node_id)
        if held is None:
            held = self._ports[node_id] = host_ports_by_node(self._state.node_tasks(node_id)).get(node_id, set())
        if not ports.isdisjoint(held):
            return False
        held |= ports
        return True

    def _live(self, task: Task) -> bool:
        return task.slot >= 1 and not is_stopping(task) and not task.state.terminal and task.id not in self._stopping

    def claim_slot(self, task: Task) -> bool:
        """A replicated slot holds one live task of each version (start-first: the old one
        serves while the new one gets ready, ADR 33); tasks this plan stops free theirs. A
        rebalance's move (ADR 36) may join the live task of its slot it replaces, once."""
        if task.slot < 1:
            return True
        slots = self._slots.get(task.service_id)
        if slots is None:
            live = [t for t in self._state.service_tasks(task.service_id) if self._live(t)]
            slots = self._slots[task.service_id] = {(t.slot, t.spec_version) for t in live}
            self._relocated[task.service_id] = {t.relocates for t in live if t.relocates}
        relocated = self._relocated[task.service_id]
        if task.relocates:
            held = self._state.tasks.get(task.id)
            if held is not None and held.relocates == task.relocates and self._live(held):
                return True  # the move itself, adopted into a new version: it holds its claim already
            old = self._state.tasks.get(task.relocates)
            if old is None or (old.service_id, old.slot) != (task.service_id, task.slot) or not self._live(old):
                return False
            if task.relocates in relocated:
                return False
            relocated.add(task.relocates)
            return True
        key = (task.slot, task.spec_version)
        if key in slots:
            return False
        slots.add(key)
        return True


def apply_plan(state: ClusterState, cmd: ApplyPlan) -> tuple[Result, Changes]:
    changes: Changes = []
    stopping = {
        u.id
        for u in cmd.updated
        if (u.desired_state is not None and u.desired_state > TaskState.RUNNING)
        or (u.state is not None and u.state.terminal)
        or u.draining_since
    }
    placement = _Placement(state, stopping)
    addresses = Addresses(state)
    volumes = VolumeBinding(state)
    changes.extend(volumes.bind(cmd.volumes))
    for task in cmd.created:
        if task.service_id not in state.services or task.id in state.tasks:
            continue
        if not placement.claim_slot(task):
            continue
        if task.node_id and (not volumes.allows(task, task.node_id) or not placement.fits(task, task.node_id)):
            # Stale placement: keep the task, unplaced, for the next pass to place.
            task = msgspec.structs.replace(task, node_id="", state=TaskState.PENDING)
        if task.node_id:
            placed = addresses.assign(task, task.node_id)
            if placed is None and task.slot < 1:
                continue  # a global task: the next pass creates it if the node has room again
            task = placed or msgspec.structs.replace(
                task, node_id="", state=TaskState.PENDING, message="pending: no free overlay address on its node"
            )
        changes.append(Put("task", task))
    for update in cmd.updated:
        current = state.tasks.get(update.id)
        if current is None:
            continue
        # Assigning a node is only valid for a task that holds none yet (the scheduler's view
        # may be stale if the task was already placed or stopped meanwhile), and only where
        # the task still fits.
        moving_to = update.node_id if update.node_id is not None and update.node_id != current.node_id else None
        if moving_to is not None and (
            current.node_id or not volumes.allows(current, moving_to) or not placement.fits(current, moving_to)
        ):
            continue
        adopted = _adopted(state, current, update.spec_version)
        if adopted is not current and not placement.claim_slot(adopted):
            adopted = current  # its slot has a live task of that version: one only
        new = _task_update(adopted, update)
        if new is None and adopted is not current:
            new = msgspec.structs.replace(adopted, updated_at=update.at)
        if new is not None and moving_to is not None:
            new = addresses.assign(new, moving_to)  # None: stays pending
        if new is not None:
            changes.append(Put("task", new))
    for task_id in cmd.deleted:
        if task_id in state.tasks:
            changes.append(Delete("task", task_id))
    for status in cmd.node_status:
        changes.extend(node_status_change(state, status))
    changes.extend(apply_rollouts(state, cmd.rollouts))
    return OK, changes


def _reported(state: ClusterState, node_id: str, update: TaskUpdate) -> Task | None:
    """The task after an agent's report, or None when the report changes nothing."""
    task = state.tasks.get(update.id)
    if task is None or task.node_id != node_id or update.node_id not in (None, node_id):
        return None
    return _task_update(task, update)


def report_task_status(state: ClusterState, cmd: ReportTaskStatus) -> tuple[Result, Changes]:
    changes: Changes = []
    for update in cmd.updates:
        new = _reported(state, cmd.node_id, update)
        if new is not None:
            changes.append(Put("task", new))
    return OK, changes


def reports_with_news(state: ClusterState, cmd: ReportTaskStatus) -> ReportTaskStatus:
    """The reports of `cmd` that change something in `state` (ADR 53): a report of what the
    state already holds ("running" for a running task, a resend after a reconnect) needs no
    Raft entry. One that is news now is checked again when applied, as any report."""
    news = tuple(u for u in cmd.updates if _reported(state, cmd.node_id, u) is not None)
    return cmd if len(news) == len(cmd.updates) else ReportTaskStatus(cmd.node_id, news)
