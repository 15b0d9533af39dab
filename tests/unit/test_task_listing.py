"""ListTasks at scale (#15, `service ps` of 10,000 tasks): the cheaper `without_history` and the
node listing read from the node's index decide as the straightforward versions did, over random
histories; the CLI reads whole lists in the largest pages; a table scans for control characters
once and still escapes them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.api.pages import MAX_PAGE_SIZE, all_pages
from warren.api.v1 import control_pb2 as cpb
from warren.cli import output
from warren.manager import paging, tasklist
from warren.manager.controlapi import ControlService
from warren.manager.inmemory import InMemoryRaft, InMemoryState
from warren.model import (
    Node,
    NodeStatus,
    Resources,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskState,
    without_history,
)
from warren.state import ClusterState, Put

SPECS = {
    "svc-a": ServiceSpec(name="a", image="x", replicas=4),
    "svc-b": ServiceSpec(name="b", image="x", replicas=4),
    "svc-g": ServiceSpec(name="g", image="x", mode=ServiceMode.GLOBAL),
}
NODES = ["n1", "n2", "n3"]


def reference_without_history(tasks: list[Task]) -> list[Task]:
    """The definition (ADR 55), as it was written before it was made cheaper: the newest
    desired-running task of every slot, and each task that has not ended."""

    def slot(t: Task) -> tuple[str, int, str]:
        return (t.service_id, t.slot, "" if t.slot else t.node_id)

    newest: dict[tuple[str, int, str], Task] = {}
    for t in tasks:
        if t.desired_state == TaskState.RUNNING:
            held = newest.get(slot(t))
            if held is None or (t.created_at, t.id) > (held.created_at, held.id):
                newest[slot(t)] = t
    return [t for t in tasks if not t.state.terminal or newest.get(slot(t)) is t]


@st.composite
def task_sets(draw: Any) -> list[Task]:
    count = draw(st.integers(min_value=0, max_value=30))
    tasks = []
    for i in range(count):
        service = draw(st.sampled_from(sorted(SPECS)))
        spec = SPECS[service]
        tasks.append(
            Task(
                id=f"t{i:03d}",
                service_id=service,
                service_name=spec.name,
                slot=0 if spec.mode == ServiceMode.GLOBAL else draw(st.integers(min_value=1, max_value=4)),
                spec=spec,
                spec_version=1,
                node_id=draw(st.sampled_from(["", *NODES])),
                state=draw(st.sampled_from(list(TaskState))),
                desired_state=draw(st.sampled_from([TaskState.RUNNING, TaskState.SHUTDOWN])),
                created_at=float(draw(st.integers(min_value=0, max_value=5))),  # ties: broken by id
            )
        )
    return tasks


@settings(max_examples=200, deadline=None)
@given(task_sets())
def test_without_history_decides_as_its_definition(tasks: list[Task]) -> None:
    assert without_history(tasks) == reference_without_history(tasks)


def _state(tasks: list[Task]) -> ClusterState:
    state = ClusterState()
    state.apply([Put("node", Node(id=n, hostname=n, status=NodeStatus.READY, resources=Resources())) for n in NODES])
    state.apply([Put("service", Service(id=service_id, spec=spec)) for service_id, spec in SPECS.items()])
    state.apply([Put("task", t) for t in tasks])
    return state


@settings(max_examples=150, deadline=None)
@given(task_sets(), st.sampled_from(NODES), st.booleans(), st.sampled_from(["", "svc-a"]))
def test_a_nodes_listing_from_its_index_is_the_clusters_listing_filtered(
    tasks: list[Task], node_id: str, include_history: bool, service_id: str
) -> None:
    """Before: every task of the cluster, without history, then the node's. Now: the node's
    tasks and only the services of its ended ones; the same tasks come out."""
    state = _state(tasks)
    everything = state.service_tasks(service_id) if service_id else list(state.tasks.values())
    expected = everything if include_history else reference_without_history(everything)
    expected = [t for t in expected if t.node_id == node_id]
    chosen = tasklist.listed(
        tasklist.candidates(state, service_id, node_id, include_history), node_id, include_history, ()
    )
    assert sorted(t.id for t in chosen) == sorted(t.id for t in expected)


def test_a_nodes_listing_gathers_no_task_of_a_service_that_has_no_failed_task_there() -> None:
    spec_a, spec_b = SPECS["svc-a"], SPECS["svc-b"]
    tasks = [
        Task(id="a1", service_id="svc-a", service_name="a", slot=1, spec=spec_a, spec_version=1, node_id="n1",
             state=TaskState.FAILED, created_at=1.0),
        Task(id="a1-new", service_id="svc-a", service_name="a", slot=1, spec=spec_a, spec_version=1, node_id="n2",
             state=TaskState.RUNNING, created_at=2.0),
        Task(id="b1", service_id="svc-b", service_name="b", slot=1, spec=spec_b, spec_version=1, node_id="n1",
             state=TaskState.RUNNING, created_at=1.0),
        Task(id="b2", service_id="svc-b", service_name="b", slot=2, spec=spec_b, spec_version=1, node_id="n3",
             state=TaskState.RUNNING, created_at=1.0),
    ]  # fmt: skip
    state = _state(tasks)
    assert sorted(t.id for t in tasklist.candidates(state, "", "n1", include_history=False)) == ["a1", "a1-new", "b1"]
    assert sorted(t.id for t in tasklist.candidates(state, "", "n1", include_history=True)) == ["a1", "b1"]
    listed = tasklist.listed(tasklist.candidates(state, "", "n1", False), "n1", False, ())
    assert [t.id for t in listed] == ["b1"]  # a1 failed and its slot runs on n2 now: history


def test_the_cli_reads_a_whole_list_in_the_largest_pages_and_keeps_an_asked_size() -> None:
    state = ClusterState()
    spec = ServiceSpec(name="web", image="x", replicas=2500)
    state.apply([Put("service", Service(id="svc-web", spec=spec))])
    state.apply(
        [
            Put("task", Task(id=f"t{i:05d}", service_id="svc-web", service_name="web", slot=i + 1, spec=spec,
                             spec_version=1, state=TaskState.RUNNING))
            for i in range(2500)
        ]
    )  # fmt: skip
    store = InMemoryState(state)
    control = ControlService(store, InMemoryRaft(store, "127.0.0.1:1"), raft_secret="s")
    sizes: list[int] = []

    def call(request: cpb.ListTasksRequest) -> cpb.ListTasksResponse:
        sizes.append(request.page_size)
        return asyncio.run(control.ListTasks(request, None))

    request = cpb.ListTasksRequest(service="web")
    tasks = all_pages(call, request, "tasks")
    assert len({t.id for t in tasks}) == len(tasks) == 2500
    assert sizes == [MAX_PAGE_SIZE] and MAX_PAGE_SIZE == paging.MAX_PAGE_SIZE  # one call, not three
    assert request.page_size == 0  # the caller's request is left as it was

    sizes.clear()
    assert len(all_pages(call, cpb.ListTasksRequest(service="web", page_size=1000), "tasks")) == 2500
    assert sizes == [1000, 1000, 1000]


def test_a_table_escapes_a_control_character_in_any_row_and_aligns_on_the_escaped_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [(f"task-{i}", "running") for i in range(500)] + [("evil\x1b[2J", "running")]
    output.print_table(["NAME", "STATE"], rows)
    lines = capsys.readouterr().out.splitlines()
    assert "\x1b" not in "".join(lines) and lines[-1] == "evil\\x1b[2J  running"
    assert lines[1] == "task-0" + " " * (len("evil\\x1b[2J") - len("task-0") + 2) + "running"
