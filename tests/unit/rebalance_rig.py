"""What the rebalance tests build on (ADR 36): tasks of one service laid out on nodes, and a
simulated cluster whose one service converged on n1 before more nodes joined."""

from __future__ import annotations

from tests.unit.core_sim import Sim, node
from warren.model import ServiceSpec, Task, TaskState

NOW = 1000.0


def placed(index: int, node_id: str, *, ready: bool = True, created_at: float = 1.0) -> Task:
    return Task(
        id=f"t{index:03d}",
        service_id="s1",
        service_name="web",
        slot=index,
        spec=ServiceSpec(name="web", image="app"),
        spec_version=1,
        state=TaskState.RUNNING if ready else TaskState.STARTING,
        node_id=node_id,
        created_at=created_at,
        ready_at=created_at if ready else 0.0,
    )


def layout(counts: list[int]) -> list[Task]:
    """counts[i] tasks on node n{i}."""
    tasks: list[Task] = []
    for i, count in enumerate(counts):
        for _ in range(count):
            tasks.append(placed(len(tasks) + 1, f"n{i}"))
    return tasks


def cluster_with(spec_: ServiceSpec, nodes: int = 1) -> tuple[Sim, str]:
    sim = Sim()
    sim.add_node(node("n1"))
    service_id = sim.create_service(spec_)
    sim.converge()
    for i in range(2, nodes + 1):
        sim.add_node(node(f"n{i}"))
    return sim, service_id
