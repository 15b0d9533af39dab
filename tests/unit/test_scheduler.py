"""Scheduler: filters, spread, resources and the reasons given for pending tasks."""

from __future__ import annotations

import random
from collections import Counter

import msgspec

from tests.unit.core_sim import GB, naive_schedule, node, pending_task, running_task, spec
from warren.model import Availability, NodeStatus, Resources, ServiceSpec, Task, TaskState
from warren.scheduler import fits, reserved_by_node, schedule


def pending(
    service_id: str, count: int, s: ServiceSpec | None = None, version: int = 1, prefix: str = "t"
) -> list[Task]:
    """`count` pending tasks of one service, with ids `<prefix><service>-<slot>`."""
    s = s or spec(service_id)
    return [
        pending_task(f"{prefix}{service_id}-{i:03d}", service_id, s, slot=i, version=version)
        for i in range(1, count + 1)
    ]


def test_spreads_evenly_then_by_node_id() -> None:
    nodes = [node("n3"), node("n1"), node("n2")]
    result = schedule(nodes, [], pending("a", 7))
    assert not result.unplaced
    counts = Counter(result.assignments.values())
    assert counts == {"n1": 3, "n2": 2, "n3": 2}
    # Slot order follows node-id order on ties: slot 1 on n1, slot 2 on n2, slot 3 on n3.
    assert [result.assignments[f"ta-{i:03d}"] for i in (1, 2, 3, 4)] == ["n1", "n2", "n3", "n1"]


def test_prefers_fewest_tasks_of_the_service_before_fewest_overall() -> None:
    nodes = [node("n1"), node("n2")]
    s_other, s_a = spec("other"), spec("a")
    busy = [running_task(f"o{i}", "other", s_other, "n1", slot=i) for i in range(5)]
    mine = [running_task("a-old", "a", s_a, "n2")]
    result = schedule(nodes, [*busy, *mine], pending("a", 1))
    # n2 has fewer tasks overall, but n1 has none of service a: spread the service first.
    assert result.assignments == {"ta-001": "n1"}
    # Among nodes without the service, the less loaded one wins.
    result = schedule([node("n1"), node("n2"), node("n3")], [*busy, *mine], pending("a", 1))
    assert result.assignments == {"ta-001": "n3"}


def test_only_ready_active_nodes_are_used_and_reason_counts_them() -> None:
    nodes = [
        node("down", status=NodeStatus.DOWN),
        node("unknown", status=NodeStatus.UNKNOWN),
        node("drained", availability=Availability.DRAIN),
        node("paused", availability=Availability.PAUSE),
    ]
    result = schedule(nodes, [], pending("a", 2))
    assert result.assignments == {}
    assert result.unplaced["ta-001"] == "no suitable node: 2 nodes not ready, 1 node drained, 1 node paused"
    result = schedule([*nodes, node("ok")], [], pending("a", 2))
    assert set(result.assignments.values()) == {"ok"}


def test_constraints_filter_and_explain() -> None:
    nodes = [node(f"n{i}", labels={"zone": "a" if i < 3 else "b"}) for i in range(5)]
    s = spec("a", constraints=("node.labels.zone==b",))
    result = schedule(nodes, [], pending("a", 4, s))
    assert set(result.assignments.values()) == {"n3", "n4"}
    assert not result.unplaced
    s = spec("a", constraints=("node.labels.zone==c",))
    result = schedule(nodes, [], pending("a", 1, s))
    assert result.unplaced == {"ta-001": "no suitable node: constraint node.labels.zone==c not satisfied on 5 nodes"}


def test_reason_names_each_filter_in_order() -> None:
    nodes = [
        node("n1", labels={"zone": "a"}),
        node("n2", labels={"zone": "b"}),
        node("n3", labels={"zone": "b", "disk": "hdd"}),
        node("n4", labels={"zone": "b", "disk": "ssd"}, mem_gb=1),
        node("n5", labels={"zone": "b", "disk": "ssd"}, cpus=0.5),
        node("n6", labels={"zone": "b"}, availability=Availability.PAUSE),
    ]
    s = spec("a", constraints=("node.labels.zone==b", "node.labels.disk==ssd"), cpus=1, mem_gb=2)
    result = schedule(nodes, [], pending("a", 1, s))
    assert result.unplaced["ta-001"] == (
        "no suitable node: 1 node paused, constraint node.labels.zone==b not satisfied on 1 node, "
        "constraint node.labels.disk==ssd not satisfied on 2 nodes, insufficient cpu on 1 node, "
        "insufficient memory on 1 node"
    )


def test_no_nodes_and_invalid_constraint_reasons() -> None:
    assert schedule([], [], pending("a", 1)).unplaced == {"ta-001": "no suitable node: the cluster has no nodes"}
    s = spec("a", constraints=("node.zone==x",))
    reason = schedule([node("n1")], [], pending("a", 1, s)).unplaced["ta-001"]
    assert reason.startswith("cannot be placed: invalid constraint 'node.zone==x'")


def test_reservations_never_overcommit() -> None:
    nodes = [node("n1", cpus=2, mem_gb=4), node("n2", cpus=1, mem_gb=8)]
    s = spec("a", cpus=0.5, mem_gb=1)
    result = schedule(nodes, [], pending("a", 10, s))
    counts = Counter(result.assignments.values())
    assert counts == {"n1": 4, "n2": 2}  # n1: 4 x 0.5 cpu; n2: 2 x 0.5 cpu
    assert len(result.unplaced) == 4
    assert set(result.unplaced.values()) == {"no suitable node: insufficient cpu on 2 nodes"}


def test_existing_tasks_reserve_until_terminal() -> None:
    s = spec("a", mem_gb=3)
    n = node("n1", mem_gb=4)
    on_node = running_task("old", "a", s, "n1")
    assert schedule([n], [on_node], pending("a", 1, s, prefix="new")).unplaced
    # Being stopped still holds the memory; having stopped frees it.
    stopping = msgspec.structs.replace(on_node, desired_state=TaskState.SHUTDOWN)
    assert schedule([n], [stopping], pending("a", 1, s, prefix="new")).unplaced
    stopped = msgspec.structs.replace(stopping, state=TaskState.SHUTDOWN)
    assert schedule([n], [stopped], pending("a", 1, s, prefix="new")).assignments == {"newa-001": "n1"}


def test_tasks_being_stopped_do_not_count_for_spread() -> None:
    s = spec("a")
    stopping = [running_task(f"old{i}", "a", s, "n1", slot=i, desired_state=TaskState.SHUTDOWN) for i in range(3)]
    result = schedule([node("n1"), node("n2")], stopping, pending("a", 1))
    assert result.assignments == {"ta-001": "n1"}


def test_zero_capacity_takes_only_zero_reservations() -> None:
    n = node("n1", cpus=0, mem_gb=0)
    assert schedule([n], [], pending("a", 3)).assignments.keys() == {"ta-001", "ta-002", "ta-003"}
    s = spec("b", mem_gb=0.001)
    result = schedule([n], [], pending("b", 1, s))
    assert result.unplaced == {"tb-001": "no suitable node: insufficient memory on 1 node"}


def test_fits_and_reserved_by_node() -> None:
    n = node("n1", cpus=1, mem_gb=1)
    assert fits(n, Resources(), Resources(10**9, GB))
    assert not fits(n, Resources(1, 0), Resources(10**9, 0))
    assert fits(n, Resources(10**9, GB), Resources())
    s = spec("a", cpus=0.5, mem_gb=0.5)
    done = running_task("x", "a", s, "n1", state=TaskState.FAILED)
    used = reserved_by_node([running_task("a1", "a", s, "n1"), running_task("a2", "a", s, "n1", slot=2), done])
    assert used == {"n1": Resources(10**9, GB)}


def test_spec_versions_are_placed_as_separate_groups() -> None:
    old = pending("a", 2, spec("a"), version=1, prefix="old")
    new = pending("a", 2, spec("a", mem_gb=1), version=2, prefix="new")
    nodes = [node("n1"), node("n2")]
    result = schedule(nodes, [], [*new, *old])
    # The service count carries across groups, so all four tasks still spread 2/2.
    assert Counter(result.assignments.values()) == {"n1": 2, "n2": 2}


def test_result_does_not_depend_on_input_order() -> None:
    rng = random.Random(7)
    nodes = [node(f"n{i}", labels={"zone": "ab"[i % 2]}, cpus=2, mem_gb=4) for i in range(12)]
    tasks = [
        *pending("a", 20, spec("a", cpus=0.25)),
        *pending("b", 9, spec("b", constraints=("node.labels.zone==a",), mem_gb=1)),
        *pending("c", 40, spec("c")),
    ]
    first = schedule(nodes, [], tasks)
    shuffled_nodes, shuffled_tasks = nodes[:], tasks[:]
    rng.shuffle(shuffled_nodes)
    rng.shuffle(shuffled_tasks)
    assert schedule(shuffled_nodes, [], shuffled_tasks) == first


def test_small_groups_on_large_clusters_match_the_reference() -> None:
    """The small-group shortcut (only the first k feasible nodes) must not change any choice."""
    rng = random.Random(3)
    nodes = [node(f"n{i:03d}", labels={"zone": "abc"[i % 3]}, cpus=rng.choice([1, 2, 4])) for i in range(200)]
    tasks = []
    for s_index in range(60):
        constraints = ("node.labels.zone!=b",) if s_index % 4 == 0 else ()
        s = spec(f"s{s_index}", constraints=constraints, cpus=rng.choice([0, 0.5, 1]))
        tasks += pending(f"s{s_index:02d}", rng.randint(1, 12), s)
    existing = [running_task(f"e{i}", "s01", spec("s1"), f"n{i:03d}", slot=i) for i in range(0, 200, 7)]
    result = schedule(nodes, existing, tasks)
    assert result.assignments == naive_schedule(nodes, existing, tasks)
    assert len(result.assignments) + len(result.unplaced) == len(tasks)


def test_small_group_skips_nodes_already_running_the_service() -> None:
    """Nodes holding the service are candidates on their own count, never twice."""
    nodes = [node(f"n{i:02d}") for i in range(40)]
    other, mine = spec("other"), spec("a")
    existing = [
        running_task(f"o{i}-{j}", "other", other, f"n{i:02d}", slot=i * 3 + j) for i in range(36) for j in range(3)
    ]
    existing += [running_task(f"a{i}", "a", mine, f"n{i:02d}", slot=i) for i in range(36, 40)]
    result = schedule(nodes, existing, pending("a", 2))
    assert result.assignments == {"ta-001": "n00", "ta-002": "n01"}
    assert result.assignments == naive_schedule(nodes, existing, pending("a", 2))


def test_a_node_on_the_overlay_takes_as_many_tasks_as_its_subnet_has_addresses() -> None:
    # A /29 holds 5 task addresses (.2-.6); a node off the overlay has no such limit.
    small = msgspec.structs.replace(node("n1"), overlay=True, overlay_subnet="10.50.0.0/29")
    result = schedule([small], [], pending("a", 7))
    assert len(result.assignments) == 5
    assert set(result.unplaced.values()) == {"no suitable node: no free overlay address on 1 node"}
    off = msgspec.structs.replace(node("n2"), overlay_subnet="10.50.1.0/29")
    result = schedule([small, off], [], pending("a", 12))
    assert Counter(result.assignments.values()) == {"n1": 5, "n2": 7} and not result.unplaced
    # Tasks already there hold addresses until they end.
    there = [running_task(f"r{i}", "b", spec("b"), "n1", slot=i) for i in range(1, 5)]
    assert list(schedule([small], there, pending("a", 3)).assignments.values()) == ["n1"]


def test_the_reason_quotes_why_nodes_are_not_ready() -> None:
    failing = msgspec.structs.replace(
        node("n1", status=NodeStatus.UNKNOWN), status_message="its session is failing: RESOURCE_EXHAUSTED: too big"
    )
    result = schedule([failing, node("n2", status=NodeStatus.DOWN)], [], pending("a", 1))
    assert result.unplaced["ta-001"] == (
        "no suitable node: 2 nodes not ready (node host-n1: its session is failing: RESOURCE_EXHAUSTED: too big)"
    )
    many = [msgspec.structs.replace(node(f"m{i}", status=NodeStatus.DOWN), status_message="x" * 300) for i in range(5)]
    reason = schedule(many, [], pending("a", 1)).unplaced["ta-001"]
    assert reason.count("node host-m") == 3 and reason.endswith("; 2 others)")
    assert ("x" * 197 + "...") in reason and "x" * 198 not in reason
