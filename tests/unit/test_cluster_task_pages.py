"""A ListTasks page of the whole cluster (no service or node named) reads only the services it
reaches, in name order from its token (#15), and holds what the pass over every task gave:
the same tasks and the same next token, page after page, with removed services' tasks still
held by nodes and history, whatever the page size and the states asked for."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from warren.api import convert, names
from warren.api.v1 import control_pb2 as cpb
from warren.manager import controlapi, paging, tasklist
from warren.manager.controlapi import ControlService
from warren.manager.inmemory import InMemoryRaft, InMemoryState
from warren.model import Service, ServiceSpec, Task, TaskState
from warren.state import ClusterState, Delete, Put

NAMES = ["a", "ab", "b", "web"]
SPARSE = tasklist._SPARSE
STATES = [TaskState.PENDING, TaskState.RUNNING, TaskState.FAILED, TaskState.SHUTDOWN, TaskState.COMPLETE]

# A task: (service, slot (0: a global task), node, state, desired running?, created at).
tasks_strategy = st.lists(
    st.tuples(
        st.integers(0, 5),
        st.integers(0, 3),
        st.sampled_from(["", "n1", "n2"]),
        st.sampled_from(STATES),
        st.booleans(),
        st.integers(0, 4),
    ),
    max_size=40,
)


def _state(services: list[tuple[str, bool]], tasks: list[Any]) -> ClusterState:
    """Services s0.. named from NAMES (two may share a name if one was removed), each kept or
    removed after its tasks were put, as RemoveService leaves the tasks nodes still hold."""
    state = ClusterState()
    for number, (name, _) in enumerate(services):
        state.apply([Put("service", Service(id=f"s{number}", spec=ServiceSpec(name=name, image="x")))])
    for number, (service, slot, node, task_state, running, created) in enumerate(tasks):
        service %= len(services)
        spec = state.services[f"s{service}"].spec
        desired = TaskState.RUNNING if running else TaskState.SHUTDOWN
        task = Task(id=f"t{number:03d}", service_id=f"s{service}", service_name=spec.name, slot=slot, spec=spec,
                    spec_version=1, node_id=node or ("" if slot else "n1"), state=task_state, desired_state=desired,
                    created_at=float(created))  # fmt: skip
        state.apply([Put("task", task)])
    state.apply([Delete("service", f"s{n}") for n, (_, kept) in enumerate(services) if not kept])
    return state


def _old_page(state: ClusterState, request: cpb.ListTasksRequest) -> tuple[list[str], str]:
    """The page as ListTasks made it before (#15): a pass over every task of the cluster."""
    states = {names.task_state(s) for s in request.states}
    tasks = tasklist.listed(list(state.tasks.values()), "", request.include_history, states)
    reply = cpb.ListTasksResponse()
    token = paging.page(
        "tasks", tasks, controlapi._task_order, controlapi._TASK_KEY,
        lambda t: convert.task_to_pb(t, into=reply.tasks), reply.tasks, request.page_size, request.page_token,
    )  # fmt: skip
    return [t.id for t in reply.tasks], token


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(NAMES), st.booleans()), min_size=1, max_size=6),
    tasks_strategy,
    st.integers(1, 6),
    st.booleans(),
    st.sampled_from([[], ["running"], ["failed", "pending"]]),
)
def test_each_page_is_the_one_a_pass_over_every_task_gave(
    services: list[tuple[str, bool]], tasks: list[Any], size: int, include_history: bool, states: list[str]
) -> None:
    names = [name for name, kept in services if kept]
    services = [(name, kept or name not in names) for name, kept in services]  # one live service a name
    state = _state(services, tasks)
    store = InMemoryState(state)
    control = ControlService(store, InMemoryRaft(store, "127.0.0.1:1"), raft_secret="s")
    expected = _old_page(state, cpb.ListTasksRequest(page_size=1000, include_history=include_history, states=states))
    for sparse in (0, 10**9):  # the services holding tasks always sorted, or the index always walked
        tasklist._SPARSE = sparse
        try:
            request = cpb.ListTasksRequest(page_size=size, include_history=include_history, states=states)
            listed: list[str] = []
            while True:
                reply = asyncio.run(control.ListTasks(request, None))
                ids = [t.id for t in reply.tasks]
                assert (ids, reply.next_page_token) == _old_page(state, request)
                listed += ids
                if not reply.next_page_token:
                    break
                request.page_token = reply.next_page_token
        finally:
            tasklist._SPARSE = SPARSE
        assert listed == expected[0]


def test_a_page_reads_only_the_services_it_reaches(monkeypatch: pytest.MonkeyPatch) -> None:
    """At S2's 100,000 tasks a page of 100 of the whole cluster was a pass over all of them."""
    state = ClusterState()
    for i in range(300):
        spec = ServiceSpec(name=f"svc-{i:04d}", image="x")
        state.apply([Put("service", Service(id=f"s{i}", spec=spec))])
        task = Task(id="", service_id=f"s{i}", service_name=spec.name, slot=1, spec=spec, spec_version=1)
        state.apply(
            [Put("task", replace(task, id=f"s{i}.{r}", slot=r + 1, state=TaskState.RUNNING)) for r in range(10)]
        )
    store = InMemoryState(state)
    control = ControlService(store, InMemoryRaft(store, "127.0.0.1:1"), raft_secret="s")
    keyed = 0
    real = controlapi._task_order

    def counting(task: Task) -> tuple[str, int, str, float, str]:
        nonlocal keyed
        keyed += 1
        return real(task)

    monkeypatch.setattr(controlapi, "_task_order", counting)
    first = asyncio.run(control.ListTasks(cpb.ListTasksRequest(page_size=25), None))
    second = asyncio.run(control.ListTasks(cpb.ListTasksRequest(page_size=25, page_token=first.next_page_token), None))
    assert [t.id for t in second.tasks][:2] == ["s2.5", "s2.6"]  # after s0's and s1's 10 and s2's first 5
    assert keyed <= 200, f"two pages of 25 took the key of {keyed} tasks out of 3,000"


def test_a_page_skips_the_services_scaled_to_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """With most services at zero replicas a page read every service's tasks to fill itself: 44 ms
    at p50 for 10,000 services under a write load (bench_api_cluster)."""
    state = ClusterState()
    for i in range(2_000):
        spec = ServiceSpec(name=f"svc-{i:04d}", image="x")
        state.apply([Put("service", Service(id=f"s{i}", spec=spec))])
        if i % 500 == 7:
            task = Task(id=f"s{i}.1", service_id=f"s{i}", service_name=spec.name, slot=1, spec=spec, spec_version=1)
            state.apply([Put("task", task)])
    store = InMemoryState(state)
    control = ControlService(store, InMemoryRaft(store, "127.0.0.1:1"), raft_secret="s")
    read: list[str] = []
    real = state.service_tasks
    monkeypatch.setattr(state, "service_tasks", lambda service_id: read.append(service_id) or real(service_id))
    reply = asyncio.run(control.ListTasks(cpb.ListTasksRequest(page_size=100), None))
    assert [t.id for t in reply.tasks] == ["s7.1", "s507.1", "s1007.1", "s1507.1"]
    assert sorted(read) == ["s1007", "s1507", "s507", "s7"], f"the page read {len(read)} services' tasks"


def test_an_empty_task_set_of_a_removed_service_names_nothing() -> None:
    """`tasks_by_service` is a defaultdict: a reader's lookup of a removed service leaves an
    empty set behind (the reconciler's stops read it so), which must not break a listing."""
    state = _state([("web", True), ("gone", False)], [(0, 1, "n1", TaskState.RUNNING, True, 0)])
    assert not state.tasks_by_service["s1"]  # the lookup leaves the empty set
    store = InMemoryState(state)
    control = ControlService(store, InMemoryRaft(store, "127.0.0.1:1"), raft_secret="s")
    reply = asyncio.run(control.ListTasks(cpb.ListTasksRequest(page_size=10), None))
    assert [t.id for t in reply.tasks] == ["t000"] and not reply.next_page_token
