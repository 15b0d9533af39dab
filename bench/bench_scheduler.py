"""Scheduler throughput: placements per second for a whole cluster's worth of pending tasks.

Goal (single core): >= 50,000/s for 10K tasks on 100 nodes, >= 30,000/s for 100K tasks on
1,000 nodes. The workload mixes services with and without constraints and reservations, 100
replicas per service, with a quarter of the nodes already carrying load.
"""

from __future__ import annotations

import json
import time

from warren.model import Node, NodeStatus, Resources, ServiceSpec, Task, TaskState
from warren.scheduler import schedule

GOALS = {(10_000, 100): 50_000, (100_000, 1_000): 30_000}
CPU = 1_000_000_000
MIB = 1 << 20
REPLICAS_PER_SERVICE = 100


def make_nodes(count: int) -> list[Node]:
    return [
        Node(
            id=f"node-{i:05d}",
            hostname=f"host-{i:05d}",
            status=NodeStatus.READY,
            labels={"zone": "abc"[i % 3], "disk": "ssd" if i % 2 else "hdd"},
            resources=Resources(64 * CPU, 256 * 1024 * MIB),
        )
        for i in range(count)
    ]


def make_spec(index: int) -> ServiceSpec:
    """Every other service reserves resources; every third is pinned to a zone or a disk type."""
    constraints: tuple[str, ...] = ()
    if index % 3 == 1:
        constraints = (f"node.labels.zone=={'abc'[index % 3]}",)
    elif index % 3 == 2:
        constraints = ("node.labels.disk!=hdd", "node.role==worker")
    reservations = Resources(CPU // 10, 128 * MIB) if index % 2 else Resources()
    return ServiceSpec(name=f"svc-{index}", image="busybox", constraints=constraints, reservations=reservations)


def make_workload(tasks: int, nodes: int) -> tuple[list[Node], list[Task], list[Task]]:
    node_list = make_nodes(nodes)
    pending: list[Task] = []
    existing: list[Task] = []
    for s in range(tasks // REPLICAS_PER_SERVICE):
        spec = make_spec(s)
        for slot in range(1, REPLICAS_PER_SERVICE + 1):
            pending.append(
                Task(
                    id=f"task-{s:05d}-{slot:03d}",
                    service_id=f"service-{s:05d}",
                    service_name=spec.name,
                    slot=slot,
                    spec=spec,
                    spec_version=1,
                    state=TaskState.PENDING,
                )
            )
    # Background load: tasks of an unrelated service already running on a quarter of the nodes.
    base = make_spec(1)
    for i, n in enumerate(node_list[: nodes // 4]):
        existing.append(
            Task(
                id=f"old-{i:05d}",
                service_id="service-old",
                service_name="old",
                slot=i + 1,
                spec=base,
                spec_version=1,
                state=TaskState.RUNNING,
                node_id=n.id,
            )
        )
    return node_list, existing, pending


def measure(tasks: int, nodes: int, repeat: int = 3) -> dict[str, object]:
    node_list, existing, pending = make_workload(tasks, nodes)
    best = float("inf")
    placed = 0
    for _ in range(repeat):
        start = time.perf_counter()
        result = schedule(node_list, existing, pending)
        best = min(best, time.perf_counter() - start)
        placed = len(result.assignments)
    rate = placed / best
    return {
        "tasks": tasks,
        "nodes": nodes,
        "placed": placed,
        "seconds": round(best, 4),
        "placements_per_s": round(rate),
        "goal_per_s": GOALS.get((tasks, nodes)),
        "meets_goal": rate >= GOALS.get((tasks, nodes), 0),
    }


def run() -> dict[str, object]:
    return {"name": "scheduler", "cases": [measure(t, n) for t, n in ((10_000, 100), (100_000, 1_000))]}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
