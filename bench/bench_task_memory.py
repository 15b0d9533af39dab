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

The leader's memory at S2's shape (ADR 72): `--leader [SIZE...]` measures `dispatcher_memory`
(the state, 1,000 sessions at 100,000 tasks and endpoint churn, traced by structure), and
`--leader-compare BASE_TREE [SIZE...]` runs it against an old tree and this one alternately.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import msgspec

from bench.common import figure
from bench.endpoint_sessions import first_messages
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


# -- the leader's dispatcher at S2's size (F4) ---------------------------------------------------

SERVICE_REPLICAS = 1_000  # S2: 100 services x 1,000 replicas
SESSION_TASKS = 100  # tasks per node: 1,000 nodes and sessions at 100,000 tasks
CHURN_CHANGES = 120  # commits of the churn, each draining CHURN_BATCH backends and adding as many
CHURN_BATCH = 10
CONFIRM_EVERY = (10, 60)  # a node confirms its newest endpoints every this many commits (heartbeats)
DEAD_SHARE = 0.2  # sessions that end during the churn (their routes stay, as a silent node's)


def _address(n: int) -> str:
    return f"10.{224 + n // 65536}.{(n // 256) % 256}.{n % 256}"


def dispatcher_memory(tasks: int, changes: int = CHURN_CHANGES, seed: int = 15) -> dict[str, object]:
    """The leader's memory with `tasks` running backends of `tasks // 1,000` services with VIPs,
    on `tasks // 100` nodes, each with an open session read as gRPC reads it, then
    `changes` commits of endpoint churn (a rolling update: CHURN_BATCH backends drain and as many
    new ones start per commit). Nodes confirm their newest endpoints every 10-60 commits, as
    heartbeats do while commits come fast; DEAD_SHARE of the sessions end on the way. Traced with
    tracemalloc from before the state is built: the holders by structure and by line."""
    root = Path(tempfile.mkdtemp(prefix="warren-bench-leader-memory-"))
    try:
        return asyncio.run(_dispatcher_scenario(tasks, changes, random.Random(seed), root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _dispatcher_scenario(tasks: int, changes: int, rng: random.Random, root: Path) -> dict[str, object]:
    from tests.unit.dispatcher_cluster import Cluster
    from warren.network import ipam

    services = max(1, tasks // SERVICE_REPLICAS)
    nodes = max(1, tasks // SESSION_TASKS)
    gc.collect()
    tracemalloc.start()
    started = time.perf_counter()
    cluster = Cluster(root)
    with cluster.store.read() as state:
        assert state.cluster is not None
        info = msgspec.structs.replace(state.cluster, overlay_range=ipam.DEFAULT_OVERLAY)
    cluster.store.commit(cluster.store.applied_index + 1, [Put("cluster", info)])
    specs = [ServiceSpec(name=f"svc{k:03}", image="x", replicas=SERVICE_REPLICAS) for k in range(services)]
    all_services = [
        Service(id=f"s{k:03}", spec=spec, vip=f"10.201.{k // 250}.{2 + k % 250}", version=1)
        for k, spec in enumerate(specs)
    ]
    cluster.store.commit(cluster.store.applied_index + 1, [Put("service", s) for s in all_services])

    def task(n: int, service: Service, slot: int, **fields: object) -> Task:
        return Task(
            id=f"t{n:07}",
            service_id=service.id,
            service_name=service.spec.name,
            slot=slot,
            spec=service.spec,
            spec_version=1,
            state=TaskState.RUNNING,
            desired_state=TaskState.RUNNING,
            node_id=f"node{n % nodes:04}",
            overlay_address=_address(n),
            **fields,  # type: ignore[arg-type]
        )

    backends = [task(n, all_services[n // SERVICE_REPLICAS], n % SERVICE_REPLICAS + 1) for n in range(tasks)]
    for first in range(0, tasks, 10_000):
        cluster.store.commit(
            cluster.store.applied_index + 1, [Put("task", t) for t in backends[first : first + 10_000]]
        )
    state_bytes, state_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    received, readers = await _open_grpc_like_sessions(cluster, nodes)
    opened_bytes, opened_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    routes = cluster.dispatcher._heartbeats.routes
    period = [rng.randint(*CONFIRM_EVERY) for _ in range(nodes)]
    phase = [rng.randrange(p) for p in period]
    dies_at = {i: rng.randrange(changes) for i in rng.sample(range(1, nodes), int(nodes * DEAD_SHARE))}
    next_id = tasks
    for change in range(changes):
        for i, at in dies_at.items():
            if at == change:
                readers[i].cancel()
        live = [i for i, r in enumerate(readers) if not r.done() and dies_at.get(i, changes) > change]
        service = all_services[change % services]
        old = [backends[n] for n in range(change * CHURN_BATCH, (change + 1) * CHURN_BATCH)]
        batch = [Put("task", msgspec.structs.replace(t, draining_since=10.0 + change)) for t in old]
        for _ in range(CHURN_BATCH):
            batch.append(Put("task", task(next_id, service, SERVICE_REPLICAS + next_id)))
            next_id += 1
        before = list(received)
        cluster.store.commit(cluster.store.applied_index + 1, batch)
        deadline = time.monotonic() + 120
        while any(received[i] <= before[i] for i in live):
            if time.monotonic() > deadline:
                raise RuntimeError(f"change {change}: a session got nothing")
            await asyncio.sleep(0.001)
        for i in live:  # the heartbeats of the nodes whose turn it is confirm the newest sent
            if (change + phase[i]) % period[i] == 0:
                sent = routes._sent.get(f"node{i:04}")
                if sent:
                    routes.applied(f"node{i:04}", max(sent))
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    total, churn_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    seconds = time.perf_counter() - started
    pinned = {id(b) for sent in routes._sent.values() for b in sent.values()}
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    cluster.store.env.close()

    def mib(size: float) -> float:
        return round(size / 2**20, 1)

    by_file: dict[str, int] = {}
    for stat in snapshot.statistics("filename"):
        name = stat.traceback[0].filename
        short = name.split("/warren/", 1)[-1] if "/warren/" in name else name.rsplit("/", 2)[-1]
        by_file[short] = by_file.get(short, 0) + stat.size
    lines = [
        {"at": f"{s.traceback[0].filename.rsplit('/', 2)[-1]}:{s.traceback[0].lineno}", "mib": mib(s.size)}
        for s in snapshot.statistics("lineno")[:12]
    ]
    return {
        "tasks": tasks,
        "services": services,
        "sessions": nodes,
        "changes": changes,
        "seconds": round(seconds, 1),
        "state_mib": mib(state_bytes),
        "after_sessions_opened_mib": mib(opened_bytes),
        "after_churn_mib": mib(total),
        "peak_mib": {"state": mib(state_peak), "sessions": mib(opened_peak), "churn": mib(churn_peak)},
        "bytes_per_task": round(total / tasks),
        "routing_versions_pinned": len(pinned),
        "rss_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "top_files_mib": {k: mib(v) for k, v in sorted(by_file.items(), key=lambda kv: -kv[1])[:10]},
        "top_lines": lines,
    }


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
    leader = dispatcher_memory(10_000)  # 100,000 takes minutes: `--leader 100000`
    results["leader"] = leader
    figures.append(
        figure(
            "Leader's traced memory at 10,000 tasks, 100 sessions, after endpoint churn (in-process)",
            leader["after_churn_mib"],  # type: ignore[arg-type]
            "MiB",
        )
    )
    results["figures"] = figures
    return results


async def _open_grpc_like_sessions(cluster: Any, sessions: int) -> tuple[list[int], list[asyncio.Task]]:
    """`sessions` node sessions that take endpoint and mesh deltas, each read as gRPC's server
    reads a stream: it serializes each message, drops the bytes once sent (here: at once, a fast
    client) and holds the message itself until the next. Returns once every session got its
    first message and the joins' node changes have settled."""
    import datetime as dt

    from tests.unit.dispatcher_cluster import description
    from warren.api.v1 import dispatcher_pb2 as dpb
    from warren.manager.server import caller
    from warren.pki import Identity

    received = [0] * sessions
    flags = {f: True for f in ("endpoint_deltas", "mesh_deltas") if f in dpb.SessionRequest.DESCRIPTOR.fields_by_name}

    async def read(index: int) -> None:
        caller.set(Identity(f"node{index:04}", "worker", "c1", dt.datetime(2100, 1, 1, tzinfo=dt.UTC), 1))
        request = dpb.SessionRequest(description=description(index), specs_by_reference=True, **flags)
        async for message in cluster.dispatcher.Session(request, None):
            encode = getattr(message, "encode", None)
            data = encode() if encode is not None else message.SerializeToString()
            del data  # sent: gRPC drops the bytes; `message` stays until the next one
            received[index] += 1

    readers = [asyncio.create_task(read(i)) for i in range(sessions)]
    await first_messages(received, readers)
    return received, readers


def compare_leader(base: Path, sizes: tuple[int, ...]) -> None:
    """`dispatcher_memory` at each size, the tree at `base` (old) then this one (new), each in its
    own process running this file (copied into neither tree: it imports what each tree has)."""
    here = Path(__file__).resolve().parents[1]
    for size in sizes:
        for side, tree in (("old", base), ("new", here)):
            out = subprocess.run(
                [sys.executable, "-c", _ONE_SIDE, str(Path(__file__).resolve()), str(size)],
                cwd=tree,
                env={**os.environ, "PYTHONPATH": str(tree)},
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps({"side": side, "load_average": os.getloadavg()[0], **row}), flush=True)


# Runs this file's `dispatcher_memory` with the `warren`, `tests` and `bench` of the current tree.
_ONE_SIDE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("leader_memory", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(module.dispatcher_memory(int(sys.argv[2]))))
"""


if __name__ == "__main__":
    if sys.argv[1:2] == ["--leader"]:  # the dispatcher at S2's shape, one line per size
        for size in tuple(int(a) for a in sys.argv[2:]) or SIZES:
            print(json.dumps(dispatcher_memory(size)), flush=True)
        sys.exit(0)
    if sys.argv[1:2] == ["--leader-compare"]:  # BASE_TREE [SIZE...]: old and new in one run
        compare_leader(Path(sys.argv[2]), tuple(int(a) for a in sys.argv[3:]) or SIZES)
        sys.exit(0)
    for size in tuple(int(a) for a in sys.argv[1:]) or SIZES:  # one line per size, as each ends
        print(json.dumps(measure(size, reloaded=size <= 10_000)), flush=True)
