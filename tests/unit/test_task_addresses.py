"""Task addresses on the overlay (ADR 17): a plan's apply hands out each node's lowest free task
address from the state's index of held ones, which must always equal what the tasks hold."""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warren import commands
from warren.model import Node, NodeStatus, Service, ServiceSpec, Task, TaskState
from warren.state import ClusterState, Delete, Put

SPEC = ServiceSpec(name="web", image="busybox", replicas=1)
SUBNETS = {"a": ipaddress.IPv4Network("10.200.3.0/28"), "b": ipaddress.IPv4Network("10.200.4.0/29")}


def _cluster() -> ClusterState:
    state = ClusterState()
    nodes = [
        Node(id=n, hostname=n, status=NodeStatus.READY, overlay=True, overlay_subnet=str(subnet))
        for n, subnet in SUBNETS.items()
    ]
    state.apply([*(Put("node", n) for n in nodes), Put("service", Service(id="s", spec=SPEC))])
    return state


def _place(state: ClusterState, node_id: str, count: int, first_slot: int) -> list[Task]:
    """Apply a plan that starts `count` tasks on `node_id`; the tasks as the state holds them."""
    created = tuple(
        Task(
            id=f"t{first_slot + i}", service_id="s", service_name="web", slot=first_slot + i, spec=SPEC,
            spec_version=1, node_id=node_id, state=TaskState.ASSIGNED,
        )
        for i in range(count)
    )  # fmt: skip
    result, changes = commands.apply(state, commands.ApplyPlan(created=created))
    assert result.ok
    state.apply(changes)
    return [state.tasks[t.id] for t in created]


def _held(state: ClusterState) -> dict[str, dict[int, str]]:
    """The index rebuilt from scratch: every live task's address, by node."""
    held: dict[str, dict[int, str]] = {}
    for task in state.tasks.values():
        if task.overlay_address and task.node_id and not task.state.terminal:
            address = int(ipaddress.IPv4Address(task.overlay_address))
            assert address not in held.get(task.node_id, {}), f"{task.overlay_address} is held twice"
            held.setdefault(task.node_id, {})[address] = task.id
    return held


def test_task_addresses_skip_the_network_node_and_broadcast_and_come_back_when_a_task_ends() -> None:
    state = _cluster()
    tasks = _place(state, "b", 6, 1)  # /29: .0 network, .1 the node, .2-.6 tasks, .7 broadcast
    assert [t.overlay_address for t in tasks[:5]] == [f"10.200.4.{i}" for i in range(2, 7)]
    assert tasks[5].node_id == "" and tasks[5].state == TaskState.PENDING
    assert "no free overlay address" in tasks[5].message
    state.apply([Put("task", Task(**{**_fields(tasks[2]), "state": TaskState.FAILED}))])
    (again,) = _place(state, "b", 1, 10)
    assert again.overlay_address == "10.200.4.4"  # the ended task's, the lowest free one


def test_a_task_only_asked_to_stop_keeps_its_address() -> None:
    state = _cluster()
    tasks = _place(state, "b", 2, 1)
    state.apply([Put("task", Task(**{**_fields(tasks[0]), "desired_state": TaskState.SHUTDOWN}))])
    (new,) = _place(state, "b", 1, 3)
    assert new.overlay_address == "10.200.4.4"


def test_a_snapshot_copy_keeps_its_own_index() -> None:
    state = _cluster()
    _place(state, "a", 3, 1)
    snapshot = state.copy()
    state.apply([Delete("task", "t1")])
    assert _held(snapshot) == snapshot.node_addresses != state.node_addresses == _held(state)


def _fields(task: Task) -> dict[str, object]:
    return {f: getattr(task, f) for f in task.__struct_fields__}


# One step: place n tasks on a node, end a task, delete a task, or re-address a task by hand
# (a state written by an older manager: the index follows whatever the tasks hold).
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("place"), st.sampled_from(sorted(SUBNETS)), st.integers(1, 6)),
        st.tuples(st.just("end"), st.integers(0, 40), st.sampled_from([TaskState.FAILED, TaskState.COMPLETE])),
        st.tuples(st.just("delete"), st.integers(0, 40), st.just(0)),
        st.tuples(st.just("readdress"), st.integers(0, 40), st.integers(2, 14)),
    ),
    max_size=40,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS)
def test_the_index_always_equals_what_the_tasks_hold_and_plans_take_the_lowest_free(steps: list) -> None:
    state = _cluster()
    slot = 1
    for step in steps:
        kind, what, arg = step
        ids = sorted(state.tasks)
        if kind == "place":
            before = _held(state).get(what, {})
            first = int(SUBNETS[what].network_address) + 2
            last = int(SUBNETS[what].broadcast_address) - 1
            free = [a for a in range(first, last + 1) if a not in before]
            placed = _place(state, what, arg, slot)
            slot += arg
            got = [int(ipaddress.IPv4Address(t.overlay_address)) for t in placed if t.overlay_address]
            assert got == free[: len(got)], "not the lowest free addresses, in order"
            assert len(got) == min(arg, len(free))
        elif ids:
            task = state.tasks[ids[what % len(ids)]]
            if kind == "end":
                state.apply([Put("task", Task(**{**_fields(task), "state": arg}))])
            elif kind == "delete":
                state.apply([Delete("task", task.id)])
            elif task.node_id:
                address = str(SUBNETS[task.node_id].network_address + arg)
                if not any(t.overlay_address == address and t.node_id == task.node_id for t in state.tasks.values()):
                    state.apply([Put("task", Task(**{**_fields(task), "overlay_address": address}))])
        assert state.node_addresses == _held(state)
