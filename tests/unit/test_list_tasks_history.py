"""ListTasks without history (ADR 55): a task that failed on its own keeps desired state running,
but once a newer task holds its slot it is history, listed only with include_history (`service
ps --all`), as Swarm's `docker service ps -f desired-state=running` shows it."""

from __future__ import annotations

import asyncio
from typing import Any

from warren.api.v1 import control_pb2 as cpb
from warren.manager.controlapi import ControlService
from warren.manager.inmemory import InMemoryRaft, InMemoryState
from warren.model import Node, NodeStatus, Resources, Service, ServiceMode, ServiceSpec, Task, TaskState
from warren.state import ClusterState, Put

WEB = ServiceSpec(name="web", image="x", replicas=3)
AGENT = ServiceSpec(name="agent", image="x", mode=ServiceMode.GLOBAL)
RUNNING, FAILED, SHUTDOWN = TaskState.RUNNING, TaskState.FAILED, TaskState.SHUTDOWN


def _task(task_id: str, slot: int, node: str, state: TaskState, at: float, **fields: Any) -> Task:
    spec, service = (WEB, "svc-web") if slot else (AGENT, "svc-agent")
    return Task(
        id=task_id,
        service_id=service,
        service_name=spec.name,
        slot=slot,
        spec=spec,
        spec_version=1,
        node_id=node,
        state=state,
        created_at=at,
        **fields,
    )


TASKS = [
    # slot 1: failed on n1, replaced by a running task on n2
    _task("s1-failed", 1, "n1", FAILED, 1.0),
    _task("s1-new", 1, "n2", RUNNING, 2.0),
    # slot 2: failed, its replacement not created yet (restart delay): the failure shows
    _task("s2-failed-old", 2, "n1", FAILED, 1.0),
    _task("s2-failed", 2, "n1", FAILED, 3.0),
    # slot 3: running; an older task stopped by an update (desired shutdown) and one still stopping
    _task("s3-run", 3, "n2", RUNNING, 4.0),
    _task("s3-old", 3, "n1", SHUTDOWN, 1.0, desired_state=SHUTDOWN),
    _task("s3-stopping", 3, "n1", RUNNING, 2.0, desired_state=SHUTDOWN),
    # a global task on n1 failed and was replaced there; on n2 one runs
    _task("g-n1-failed", 0, "n1", FAILED, 1.0),
    _task("g-n1-new", 0, "n1", RUNNING, 2.0),
    _task("g-n2", 0, "n2", RUNNING, 1.0),
]


def _control() -> ControlService:
    state = ClusterState()
    nodes = [Node(id=n, hostname=n, status=NodeStatus.READY, resources=Resources()) for n in ("n1", "n2")]
    state.apply([Put("node", n) for n in nodes])
    state.apply([Put("service", Service(id="svc-web", spec=WEB)), Put("service", Service(id="svc-agent", spec=AGENT))])
    state.apply([Put("task", t) for t in TASKS])
    store = InMemoryState(state)
    return ControlService(store, InMemoryRaft(store, "127.0.0.1:1"), raft_secret="s")


def _ids(**request: Any) -> set[str]:
    reply = asyncio.run(_control().ListTasks(cpb.ListTasksRequest(**request), None))
    return {t.id for t in reply.tasks}


def test_by_default_a_replaced_failed_task_is_history() -> None:
    current = {"s1-new", "s2-failed", "s3-run", "s3-stopping", "g-n1-new", "g-n2"}
    assert _ids() == current
    assert _ids(service="web") == {"s1-new", "s2-failed", "s3-run", "s3-stopping"}


def test_history_lists_every_task() -> None:
    assert _ids(include_history=True) == {t.id for t in TASKS}


def test_a_nodes_listing_drops_a_failed_task_replaced_on_another_node() -> None:
    assert _ids(node="n1") == {"s2-failed", "s3-stopping", "g-n1-new"}
    assert _ids(node="n1", include_history=True) == {t.id for t in TASKS if t.node_id == "n1"}


def test_a_state_filter_applies_to_the_current_tasks() -> None:
    assert _ids(states=["failed"]) == {"s2-failed"}
    assert _ids(states=["failed"], include_history=True) == {"s1-failed", "s2-failed-old", "s2-failed", "g-n1-failed"}
