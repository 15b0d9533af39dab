"""Cluster events (ADR 45): what `warren events` shows, derived from committed changes. Pure.

Every manager applies the same Raft entries to the same state, so deriving events from an
entry's changes and the state before them gives every manager the same events. An event's id is
(Raft index, position in that entry), and its time is the command's own timestamp, never a
manager's clock: a client may resume on another manager after the last id it saw.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Literal

import msgspec

from warren.commands import types as ct
from warren.model import Node, NodeStatus, RolloutState, Service, Task, TaskState
from warren.state import Change, ClusterState, Delete, Put, StoredObject

EventType = Literal["service", "task", "node", "secret", "config", "network", "volume", "cluster"]
EVENT_TYPES: tuple[EventType, ...] = ("service", "task", "node", "secret", "config", "network", "volume", "cluster")

# The actions of each type; a rollout's actions are named after the state it moved to.
_ROLLOUT_ACTIONS: dict[RolloutState, str] = {
    RolloutState.UPDATING: "rollout_started",
    RolloutState.CANARY: "rollout_canary",
    RolloutState.PAUSED: "rollout_paused",
    RolloutState.COMPLETED: "rollout_completed",
    RolloutState.ROLLBACK_STARTED: "rollback_started",
    RolloutState.ROLLBACK_PAUSED: "rollback_paused",
    RolloutState.ROLLBACK_COMPLETED: "rollback_completed",
    RolloutState.REBALANCING: "rebalance_started",
    RolloutState.REBALANCE_PAUSED: "rebalance_paused",
}
_TASK_ACTIONS = tuple(state.label for state in TaskState)
ACTIONS: dict[EventType, tuple[str, ...]] = {
    "service": ("create", "update", "remove", *_ROLLOUT_ACTIONS.values()),
    "task": (*_TASK_ACTIONS, "exec"),
    "node": ("join", "ready", "down", "active", "pause", "drain", "promote", "demote", "remove"),
    "secret": ("create", "update", "remove"),
    "config": ("create", "update", "remove"),
    "network": ("create", "update", "remove"),
    "volume": ("create", "update", "remove"),
    "cluster": ("init", "leader", "nodes_unreachable", "nodes_reachable"),
}
ALL_ACTIONS = frozenset(a for actions in ACTIONS.values() for a in actions)
FILTER_KEYS = ("type", "service", "node", "event")

# Stored objects whose events are only created/updated/removed, found by name. "network" is the
# Network of #14, whose commands come from another part: mapped here once its changes exist.
_NAMED_KINDS = frozenset({"secret", "config", "volume", "network"})


class Event(msgspec.Struct, frozen=True):
    """One event. (index, position) is its id, unique and ordered across the cluster."""

    index: int
    position: int
    time: float
    type: str
    action: str
    actor_id: str
    actor_name: str = ""
    attributes: dict[str, str] = {}

    @property
    def id(self) -> str:
        return format_id(self.index, self.position)

    @property
    def key(self) -> tuple[int, int]:
        return (self.index, self.position)


def format_id(index: int, position: int) -> str:
    return f"{index}.{position}"


def parse_id(text: str) -> tuple[int, int]:
    """An event id "INDEX.POSITION" as (index, position); ValueError says what is wrong."""
    index, dot, position = text.strip().partition(".")
    if not dot or not index.isdigit() or not position.isdigit() or len(text) > 41:
        raise ValueError(f"invalid event id {text[:60]!r}: expected INDEX.POSITION, as `warren events` prints")
    return int(index), int(position)


def command_time(command: object) -> float:
    """The command's own timestamp (0 when it carries none): the time of its events, the same on
    every manager."""
    at = getattr(command, "at", None)
    if isinstance(at, int | float) and at > 0:
        return float(at)
    if isinstance(command, ct.CreateService):
        return command.service.created_at
    if isinstance(command, ct.CreateSecret):
        return command.secret.created_at
    if isinstance(command, ct.CreateConfig):
        return command.config.created_at
    if isinstance(command, ct.CreateVolume):
        return command.volume.created_at
    if isinstance(command, ct.RegisterNode):
        return command.node.updated_at or command.node.created_at
    if isinstance(command, ct.InitCluster):
        return command.cluster.created_at
    if isinstance(command, ct.ReportTaskStatus):
        return max((u.at for u in command.updates), default=0.0)
    if isinstance(command, ct.ApplyPlan):
        times = [t.created_at for t in command.created] + [u.at for u in command.updated]
        return max(times + [s.at for s in command.node_status], default=0.0)
    return 0.0


def derive(
    before: ClusterState, command: object, changes: Sequence[Change], index: int, first_position: int, time: float
) -> list[Event]:
    """The events of one command's `changes`, applied to `before`, numbered from `first_position`
    within Raft entry `index`. The same inputs give the same events on every manager."""
    drafts: list[tuple[str, str, str, str, dict[str, str]]] = []
    if isinstance(command, ct.AnnounceLeader):
        node = before.nodes.get(command.node_id)
        attributes = {"term": str(command.term), "raft_addr": command.raft_addr}
        drafts.append(("cluster", "leader", command.node_id, node.hostname if node else "", attributes))
    if isinstance(command, ct.RecordExec):
        drafts.extend(_exec_events(before, command))
    if isinstance(command, ct.RecordNodesSilence):  # ADR 69
        node = before.nodes.get(command.node_id)
        action = "nodes_unreachable" if command.held else "nodes_reachable"
        attributes = {"silent": str(command.silent), "of": str(command.counted)}
        drafts.append(("cluster", action, command.node_id, node.hostname if node else "", attributes))
    seen: dict[tuple[str, str], StoredObject | None] = {}  # what earlier changes of this entry left
    for change in changes:
        key = (change.kind, change.obj.id if isinstance(change, Put) else change.id)
        old = seen[key] if key in seen else _lookup(before, change.kind, key[1])
        new = change.obj if isinstance(change, Put) else None
        seen[key] = new
        drafts.extend(_object_events(before, change, old, new))
    return [
        Event(index, first_position + i, time, kind, action, actor_id, name, attrs)
        for i, (kind, action, actor_id, name, attrs) in enumerate(drafts)
    ]


def _lookup(state: ClusterState, kind: str, obj_id: str) -> StoredObject | None:
    table: Mapping[str, StoredObject]
    if kind == "task":
        table = state.tasks
    elif kind == "service":
        table = state.services
    elif kind == "node":
        table = state.nodes
    elif kind == "cluster":
        return state.cluster
    elif kind in _NAMED_KINDS:  # networks: once the state has them (#14)
        table = getattr(state, f"{kind}s", {})
    else:
        return None
    return table.get(obj_id)


Draft = tuple[str, str, str, str, dict[str, str]]


def _object_events(state: ClusterState, change: Change, old: object, new: object) -> list[Draft]:
    kind = change.kind
    if kind == "service":
        return _service_events(old if isinstance(old, Service) else None, new if isinstance(new, Service) else None)
    if kind == "task" and isinstance(new, Task):
        return _task_events(state, old if isinstance(old, Task) else None, new)
    if kind == "node":
        return _node_events(old if isinstance(old, Node) else None, new if isinstance(new, Node) else None)
    if kind == "cluster" and old is None and new is not None:
        return [("cluster", "init", getattr(new, "id", ""), "", {})]
    if kind in _NAMED_KINDS:
        subject = new if new is not None else old
        if subject is None:
            return []
        action = "remove" if isinstance(change, Delete) else "create" if old is None else "update"
        return [(kind, action, getattr(subject, "id", ""), getattr(subject, "name", ""), {})]
    return []


def _service_events(old: Service | None, new: Service | None) -> list[Draft]:
    subject = new or old
    if subject is None:
        return []
    name, attributes = subject.spec.name, {"version": str(subject.version)}
    if new is None:
        return [("service", "remove", subject.id, name, attributes)]
    if old is None:
        return [("service", "create", new.id, name, attributes)]
    drafts: list[Draft] = []
    if old.version != new.version or old.spec != new.spec:
        drafts.append(("service", "update", new.id, name, {**attributes, "old_version": str(old.version)}))
    status, before = new.update_status, old.update_status
    if status is not None and (
        before is None or before.state != status.state or before.to_version != status.to_version
    ):
        rollout = {
            "from_version": str(status.from_version),
            "to_version": str(status.to_version),
            "message": status.message,
        }
        drafts.append(("service", _ROLLOUT_ACTIONS[status.state], new.id, name, rollout))
    return drafts


def _exec_events(state: ClusterState, command: ct.RecordExec) -> list[Draft]:
    """The audit event of an exec (ADR 59); the command is shown as a shell would quote it."""
    task = state.tasks.get(command.task_id)
    if task is None:
        return []
    attributes = _task_attributes(state, task) | {
        "command": shlex.join(command.command),
        "admin": command.admin,
        "tty": "true" if command.tty else "false",
    }
    cert = state.admin_certs.get(command.admin)
    if cert is not None:  # a named admin certificate (ADR 24): who, for a person
        attributes["admin_name"] = cert.name
    return [("task", "exec", task.id, _task_name(task), attributes)]


def _task_attributes(state: ClusterState, task: Task) -> dict[str, str]:
    attributes = {"service_id": task.service_id, "service": task.service_name, "slot": str(task.slot)}
    if task.node_id:
        node = state.nodes.get(task.node_id)
        attributes |= {"node_id": task.node_id, "node": node.hostname if node else ""}
    return attributes


def _task_name(task: Task) -> str:
    return f"{task.service_name}.{task.slot}" if task.slot else f"{task.service_name}.{task.node_id[:12]}"


def _task_events(state: ClusterState, old: Task | None, new: Task) -> list[Draft]:
    if old is not None and old.state == new.state:
        return []
    attributes = _task_attributes(state, new)
    if new.exit_code is not None:
        attributes["exit_code"] = str(new.exit_code)
    if new.error:
        attributes["error"] = new.error
    if new.message:
        attributes["message"] = new.message
    return [("task", new.state.label, new.id, _task_name(new), attributes)]


def _node_events(old: Node | None, new: Node | None) -> list[Draft]:
    subject = new or old
    if subject is None:
        return []
    drafts: list[Draft] = []

    def add(action: str, **extra: str) -> None:
        drafts.append(("node", action, subject.id, subject.hostname, {"role": subject.role.value, **extra}))

    if new is None:
        add("remove")
        return drafts
    if old is None:
        add("join")
    if new.status != (old.status if old else NodeStatus.UNKNOWN) and new.status != NodeStatus.UNKNOWN:
        add(new.status.value, **({"message": new.status_message} if new.status_message else {}))
    if old is not None and new.availability != old.availability:
        add(new.availability.value)
    if old is not None and new.role != old.role:
        add("promote" if new.role.value == "manager" else "demote")
    return drafts


class EventFilter(msgspec.Struct, frozen=True):
    """Docker's filters: several values of one key match any of them (OR); keys combine (AND).
    `service` and `node` match a name or an id."""

    types: frozenset[str] = frozenset()
    services: frozenset[str] = frozenset()
    nodes: frozenset[str] = frozenset()
    actions: frozenset[str] = frozenset()

    def matches(self, event: Event) -> bool:
        if self.types and event.type not in self.types:
            return False
        if self.actions and event.action not in self.actions:
            return False
        if self.services and not self.services & _refs(event, "service"):
            return False
        return not self.nodes or bool(self.nodes & _refs(event, "node"))


def _refs(event: Event, kind: str) -> set[str]:
    """The names and ids of the `kind` (service or node) an event is about."""
    refs = {event.attributes.get(kind, ""), event.attributes.get(f"{kind}_id", "")}
    if event.type == kind:
        refs |= {event.actor_id, event.actor_name}
    refs.discard("")
    return refs


def parse_filters(pairs: Sequence[tuple[str, str]]) -> EventFilter:
    """An EventFilter from (key, value) pairs; ValueError names a bad key or value."""
    values: dict[str, set[str]] = {key: set() for key in FILTER_KEYS}
    for key, value in pairs:
        if key not in values:
            raise ValueError(f"unknown event filter {key[:40]!r}: use one of {', '.join(FILTER_KEYS)}")
        if not value or len(value) > 253:
            raise ValueError(f"event filter {key}= needs a value (at most 253 characters)")
        if key == "type" and value not in EVENT_TYPES:
            raise ValueError(f"unknown event type {value[:40]!r}: use one of {', '.join(EVENT_TYPES)}")
        if key == "event" and value not in ALL_ACTIONS:
            raise ValueError(f"unknown event {value[:40]!r}: use one of {', '.join(sorted(ALL_ACTIONS))}")
        values[key].add(value)
    return EventFilter(
        frozenset(values["type"]), frozenset(values["service"]), frozenset(values["node"]), frozenset(values["event"])
    )
