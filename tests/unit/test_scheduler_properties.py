"""Property tests of the scheduler: every filter respected, the slow reference's choices
whatever the input order, and a service spread within one across nodes."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

from hypothesis import given
from hypothesis import strategies as st

from tests.unit.core_histories import FAST, ZONES
from tests.unit.core_sim import naive_schedule, node, pending_task, running_task, spec
from warren.constraints import matches_all, parse_constraints
from warren.model import Availability, Node, NodeStatus, Task, TaskState
from warren.scheduler import node_is_schedulable, schedule

STATUSES = [NodeStatus.READY] * 4 + [NodeStatus.DOWN, NodeStatus.UNKNOWN]
AVAILABILITIES = [Availability.ACTIVE] * 4 + [Availability.PAUSE, Availability.DRAIN]


@st.composite
def nodes_strategy(draw: st.DrawFn) -> list[Node]:
    count = draw(st.integers(0, 30))
    out = []
    for i in range(count):
        zone = draw(st.sampled_from([*ZONES, None]))
        out.append(
            node(
                f"n{i:02d}",
                labels={"zone": zone} if zone else {},
                cpus=draw(st.sampled_from([0, 1, 2, 4])),
                mem_gb=draw(st.sampled_from([0, 1, 4])),
                status=draw(st.sampled_from([NodeStatus.READY] * 4 + [NodeStatus.DOWN, NodeStatus.UNKNOWN])),
                availability=draw(
                    st.sampled_from([Availability.ACTIVE] * 4 + [Availability.PAUSE, Availability.DRAIN])
                ),
            )
        )
    return out


@st.composite
def workload(draw: st.DrawFn) -> tuple[list[Node], list[Task], list[Task]]:
    nodes = draw(nodes_strategy())
    specs = []
    for i in range(draw(st.integers(1, 5))):
        constraints = draw(
            st.lists(st.sampled_from(["node.labels.zone==a", "node.labels.zone!=b", "node.role==worker"]), max_size=2)
        )
        specs.append(
            spec(
                f"s{i}",
                constraints=tuple(constraints),
                cpus=draw(st.sampled_from([0, 0.25, 1])),
                mem_gb=draw(st.sampled_from([0, 0.5, 2])),
            )
        )
    # Existing tasks, added only where they fit, so the cluster starts within its capacity.
    existing: list[Task] = []
    used: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for i in range(draw(st.integers(0, 20))):
        if not nodes:
            break
        n = draw(st.sampled_from(nodes))
        s_index = draw(st.integers(0, len(specs) - 1))
        s = specs[s_index]
        cpu, mem = s.reservations.nano_cpus, s.reservations.memory_bytes
        if used[n.id][0] + cpu > n.resources.nano_cpus or used[n.id][1] + mem > n.resources.memory_bytes:
            continue
        used[n.id][0] += cpu
        used[n.id][1] += mem
        state = draw(st.sampled_from([TaskState.RUNNING, TaskState.ASSIGNED, TaskState.FAILED]))
        existing.append(running_task(f"e{i:03d}", f"svc{s_index}", s, n.id, slot=i + 1, state=state))
    pending = []
    for s_index, s in enumerate(specs):
        version = draw(st.sampled_from([1, 2]))
        for slot in range(1, draw(st.integers(0, 25)) + 1):
            pending.append(pending_task(f"p{s_index}-{slot:03d}", f"svc{s_index}", s, slot=slot, version=version))
    return nodes, existing, pending


@FAST
@given(workload(), st.randoms(use_true_random=False))
def test_scheduler_respects_every_filter(data: tuple[list[Node], list[Task], list[Task]], rnd: random.Random) -> None:
    nodes, existing, pending = data
    result = schedule(nodes, existing, pending)

    # Every pending task is either placed or explained, never both.
    assert result.assignments.keys() | result.unplaced.keys() == {t.id for t in pending}
    assert not result.assignments.keys() & result.unplaced.keys()
    assert all(reason.startswith("no suitable node") for reason in result.unplaced.values())

    by_id = {n.id: n for n in nodes}
    tasks = {t.id: t for t in pending}
    for task_id, node_id in result.assignments.items():
        n = by_id[node_id]
        assert node_is_schedulable(n)
        assert matches_all(parse_constraints(tasks[task_id].spec.constraints), n)

    # No node is over-committed in a dimension any of its tasks reserves.
    on_node: dict[str, list[Task]] = defaultdict(list)
    for t in existing:
        if not t.state.terminal:
            on_node[t.node_id].append(t)
    for task_id, node_id in result.assignments.items():
        on_node[node_id].append(tasks[task_id])
    for node_id, placed in on_node.items():
        cap = by_id[node_id].resources
        assert sum(t.spec.reservations.nano_cpus for t in placed) <= cap.nano_cpus or not any(
            t.spec.reservations.nano_cpus for t in placed
        )
        assert sum(t.spec.reservations.memory_bytes for t in placed) <= cap.memory_bytes or not any(
            t.spec.reservations.memory_bytes for t in placed
        )

    # Same choices as the slow reference, whatever the input order.
    assert result.assignments == naive_schedule(nodes, existing, pending)
    rnd.shuffle(nodes)
    rnd.shuffle(pending)
    assert schedule(nodes, existing, pending) == result


@FAST
@given(workload())
def test_scheduler_spreads_within_one(data: tuple[list[Node], list[Task], list[Task]]) -> None:
    """Without reservations or constraints, a service's count differs by at most one across nodes."""
    nodes, _, pending = data
    plain = spec("plain")
    tasks = [pending_task(f"q{i:03d}", "plain", plain, slot=i) for i in range(1, len(pending) + 1)]
    result = schedule(nodes, [], tasks)
    ready = [n.id for n in nodes if node_is_schedulable(n)]
    if not ready:
        assert len(result.unplaced) == len(tasks)
        return
    counts = Counter(result.assignments.values())
    per_node = [counts.get(n, 0) for n in ready]
    assert max(per_node) - min(per_node) <= 1
    assert sum(per_node) == len(tasks)
