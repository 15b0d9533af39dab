"""Bytes per task in the manager's state, in-process, at 10,000 and 100,000 tasks (issue #15).

What is measured: the memory a ClusterState holds per task, with tracemalloc, after the tasks
went the way they go on a manager: each pass's ApplyPlan is encoded and decoded by the Raft
codec and applied by `commands.apply` (so every created task arrives with its own decoded copy
of its spec, as it does from the log), then two status reports per task (starting, running) are
applied the same way, and finally the state is reloaded from the store's encoding of each
object, as a restarted manager reads LMDB. Many services (100 replicas each) on nodes on the
overlay (100 tasks each), with specs carrying env, labels, a health check, ports and constraints.

`python3 -m bench.bench_task_memory` prints the figures; `bench.run --only task_memory` records
them. To compare two commits in one run, run this file against each tree (PYTHONPATH).
"""

from __future__ import annotations

import gc
import json
import sys
import time
import tracemalloc

import msgspec

from bench.common import figure
from warren import commands
from warren.commands import codec
from warren.commands.types import ApplyPlan, TaskUpdate
from warren.model import HealthCheck, Node, NodeStatus, PortConfig, Resources, Service, ServiceSpec, Task, TaskState
from warren.state import ClusterState, Put

SIZES = (10_000, 100_000)
REPLICAS = 100  # per service
TASKS_PER_NODE = 100
PLAN_TASKS = 500  # tasks per ApplyPlan, as a reconcile pass proposes them


def _spec(index: int) -> ServiceSpec:
    return ServiceSpec(
        name=f"svc-{index:05d}",
        image=f"registry.example.com/team/app-{index % 50}:1.{index % 7}",
        command=("/app/server",),
        args=("--port", "8080", "--log-level", "info"),
        env={"APP_ENV": "production", "APP_SERVICE": f"svc-{index:05d}", "GOMAXPROCS": "2"},
        replicas=REPLICAS,
        constraints=("node.labels.zone != dmz",),
        reservations=Resources(50_000_000, 32 << 20),
        limits=Resources(500_000_000, 256 << 20),
        health=HealthCheck(kind="http", target="http://127.0.0.1:8080/healthz", interval=10.0),
        ports=(PortConfig(target=8080, published=30000 + index % 2000),),
        labels={"team": f"team-{index % 20}", "tier": "backend"},
    )


def build(tasks: int) -> ClusterState:
    """A ClusterState holding `tasks` running tasks, reached through the codec and the commands."""
    state = ClusterState()
    node_count = max(1, tasks // TASKS_PER_NODE)
    nodes = [
        Node(
            id=f"node{n:021d}",
            hostname=f"host-{n:04d}",
            status=NodeStatus.READY,
            resources=Resources(64_000_000_000, 256 << 30),
            overlay=True,
            overlay_subnet=f"10.{128 + n // 256}.{n % 256}.0/24",
            wg_public_key="k" * 44,
        )
        for n in range(node_count)
    ]
    state.apply([Put("node", n) for n in nodes])
    services = [Service(id=f"svc{s:022d}", spec=_spec(s), created_at=1.0) for s in range(tasks // REPLICAS)]
    state.apply([Put("service", s) for s in services])

    def propose(plan: ApplyPlan) -> None:
        decoded = codec.decode(codec.encode(plan))  # as every manager applies the entry
        assert isinstance(decoded, ApplyPlan)
        _result, changes = commands.apply(state, decoded)
        state.apply(changes)

    created: list[Task] = []
    n = 0
    for service in services:
        for slot in range(1, REPLICAS + 1):
            created.append(
                Task(
                    id=f"task{n:021d}",
                    service_id=service.id,
                    service_name=service.spec.name,
                    slot=slot,
                    spec=service.spec,
                    spec_version=service.version,
                    state=TaskState.ASSIGNED,
                    node_id=nodes[n % node_count].id,
                    created_at=2.0,
                    updated_at=2.0,
                )
            )
            n += 1
            if len(created) == PLAN_TASKS:
                propose(ApplyPlan(created=tuple(created)))
                created = []
    if created:
        propose(ApplyPlan(created=tuple(created)))
    ids = list(state.tasks)
    for step, (task_state, message) in enumerate(((TaskState.STARTING, "starting"), (TaskState.RUNNING, "started"))):
        for first in range(0, len(ids), PLAN_TASKS):
            updates = tuple(
                TaskUpdate(
                    id=i, at=3.0 + step, state=task_state, message=message, runtime_id=f"warren-{i}", health="healthy"
                )
                for i in ids[first : first + PLAN_TASKS]
            )
            propose(ApplyPlan(updated=updates))
    return state


def reload(state: ClusterState) -> ClusterState:
    """The same state as a restarted manager reads it from LMDB: each object decoded alone."""
    encoder = msgspec.msgpack.Encoder()
    loaded = ClusterState()
    loaded.apply([Put("node", msgspec.msgpack.decode(encoder.encode(n), type=Node)) for n in state.nodes.values()])
    loaded.apply(
        [Put("service", msgspec.msgpack.decode(encoder.encode(s), type=Service)) for s in state.services.values()]
    )
    loaded.apply([Put("task", msgspec.msgpack.decode(encoder.encode(t), type=Task)) for t in state.tasks.values()])
    return loaded


def measure(tasks: int, reloaded: bool = True) -> dict[str, float]:
    """Bytes per task, live and (with `reloaded`) after a reload as from LMDB."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    state = build(tasks)
    gc.collect()
    live = tracemalloc.get_traced_memory()[0] - base
    seconds = time.perf_counter() - started
    assert len(state.tasks) == tasks, len(state.tasks)
    assert all(t.overlay_address for t in state.tasks.values())
    row = {"tasks": tasks, "bytes_per_task": round(live / tasks), "build_seconds": round(seconds, 2)}
    if reloaded:
        base = tracemalloc.get_traced_memory()[0]
        loaded = reload(state)
        gc.collect()
        row["bytes_per_task_reloaded"] = round((tracemalloc.get_traced_memory()[0] - base) / tasks)
        del loaded
    tracemalloc.stop()
    return row


def run() -> dict[str, object]:
    rows = [measure(size, reloaded=size <= 10_000) for size in SIZES]  # a reload of 100K doubles the time
    results: dict[str, object] = {"name": "task_memory", "sizes": rows}
    figures = []
    for row in rows:
        figures.append(
            figure(f"State bytes per task at {row['tasks']:,} (in-process, via the codec)", row["bytes_per_task"], "B")
        )
        if "bytes_per_task_reloaded" in row:
            figures.append(
                figure(f"  the same, reloaded as from LMDB at {row['tasks']:,}", row["bytes_per_task_reloaded"], "B")
            )
    results["figures"] = figures
    return results


if __name__ == "__main__":
    for size in tuple(int(a) for a in sys.argv[1:]) or SIZES:  # one line per size, as each ends
        print(json.dumps(measure(size, reloaded=size <= 10_000)), flush=True)
