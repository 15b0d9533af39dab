"""The reconcile pass at 10,000 tasks / 1,000 services on 100 nodes, every task running, right
after one service was scaled (ADR 53). Pure function, in-process: what one pass of the leader's
control loop costs, without the snapshot copy or the Raft write.

- "full": the pass over every service (what every pass did before ADR 53; the safety net now).
- "incremental": the pass that visits only the services changed since the last pass.
"""

from __future__ import annotations

import itertools
import json
import time

from bench.common import figure
from warren import reconciler
from warren.model import Node, NodeStatus, Resources, Service, ServiceSpec, Task, TaskState
from warren.state import ClusterState, Put

CPU = 1_000_000_000
GIB = 1 << 30
SERVICES = 1_000
REPLICAS = 10
NODES = 100


def make_state() -> ClusterState:
    state = ClusterState()
    changes: list[Put] = []
    for n in range(NODES):
        node = Node(
            id=f"node-{n:04d}",
            hostname=f"host-{n:04d}",
            status=NodeStatus.READY,
            resources=Resources(64 * CPU, 256 * GIB),
        )
        changes.append(Put("node", node))
    for s in range(SERVICES):
        spec = ServiceSpec(name=f"svc-{s:04d}", image="busybox", replicas=REPLICAS)
        service = Service(id=f"service-{s:04d}", spec=spec, version=1, created_at=1.0)
        changes.append(Put("service", service))
        for slot in range(1, REPLICAS + 1):
            task = Task(
                id=f"task-{s:04d}-{slot:02d}",
                service_id=service.id,
                service_name=spec.name,
                slot=slot,
                spec=spec,
                spec_version=1,
                desired_state=TaskState.RUNNING,
                state=TaskState.RUNNING,
                node_id=f"node-{(s * REPLICAS + slot) % NODES:04d}",
                created_at=1.0,
                updated_at=1.0,
                started_at=1.0,
            )
            changes.append(Put("task", task))
    state.apply(changes)  # type: ignore[arg-type]
    return state


def scale_one(state: ClusterState) -> str:
    """Scale one service up by one replica, as a ScaleService commit would."""
    service = state.services["service-0500"]
    spec = service.spec
    state.apply(
        [
            Put(
                "service",
                Service(id=service.id, spec=type(spec)(**{**_fields(spec), "replicas": 11}), version=2, created_at=1.0),
            )
        ]
    )
    return service.id


def _fields(spec: ServiceSpec) -> dict[str, object]:
    return {f: getattr(spec, f) for f in spec.__struct_fields__}


def timed(run: object, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    return best


def run(repeat: int = 5) -> dict[str, object]:
    state = make_state()
    changed = scale_one(state)
    heartbeats = {n: 100.0 for n in state.nodes}
    config = reconciler.ReconcileConfig()
    ids = itertools.count()

    def new_id() -> str:
        return f"new-{next(ids)}"

    def full() -> None:
        plan = reconciler.reconcile(state, 100.0, heartbeats, config, new_id)
        assert len(plan.created) == 1, plan

    cases: dict[str, float] = {"full": timed(full, repeat)}
    incremental = getattr(reconciler, "reconcile_pass", None)
    if incremental is not None:  # ADR 53

        def only_changed() -> None:
            plan, _unsettled = incremental(
                state, 100.0, heartbeats, config, new_id, visit=reconciler.Visit(services=frozenset({changed}))
            )
            assert len(plan.created) == 1, plan

        cases["incremental"] = timed(only_changed, repeat)
    figures = [
        figure(
            f"Reconcile pass ({name}), {SERVICES * REPLICAS:,} tasks / {SERVICES:,} services, one changed",
            round(sec * 1000, 2),
            "ms",
        )
        for name, sec in cases.items()
    ]
    return {"name": "reconcile", "what": "pure function, in-process", "figures": figures}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
