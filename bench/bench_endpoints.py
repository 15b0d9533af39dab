"""The dispatcher's CPU per backend change with many open sessions (ADRs 57, 65). In-process: a
real Store (LMDB) and DispatcherService with the in-memory Raft, N node sessions read by one task
each; then one task becomes a backend, CHANGES times. Each change sends every session the new
endpoints: the figure is the process CPU from the commit until every session holds the message
encoded as gRPC would send it (no network).

Two shapes: one service with 3 backends per node (ADR 57's figure), and `--services S` services
of `--backends B` tasks each (issue #15's S1: 1,000 x 10), where the sessions ask for endpoint
deltas if the code knows them (ADR 65) and one agent's parse and `AssignmentSet.apply` of each
message is timed apart (and not counted in the leader's CPU). `--compare BASE` runs that shape
alternately against the tree at BASE (old) and this one (new), each in its own process, and
reports the ratios. `--creating N` times S1 while services are being created instead: the last
N of `--services` come one per commit, each with its tasks placed over the nodes and running
(#15: what every session and agent pays per message then); `--apply` times only one agent's
apply of deltas that add a service (pure function)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from bench.common import figure
from bench.endpoint_sessions import (
    as_sent,
    first_messages,
    make_backend,
    make_service,
    median_ms,
    open_sessions,
    running_services,
    timed_changes,
    with_overlay_room,
)
from warren.network import ipam

BACKENDS_PER_NODE = 3
CHANGES = 5


async def _case(nodes: int, root: Path) -> dict[str, object]:
    from tests.unit.dispatcher_cluster import Cluster
    from warren.model import Service, ServiceSpec, Task, TaskState
    from warren.state import Put

    cluster = Cluster(root)
    spec = ServiceSpec(name="web", image="x", replicas=nodes * BACKENDS_PER_NODE)
    service = Service(id="s1", spec=spec, vip="10.201.0.2", version=1)

    def backend(i: int) -> Task:
        return Task(
            id=f"t{i:06d}",
            service_id="s1",
            service_name="web",
            slot=i + 1,
            spec=spec,
            spec_version=1,
            state=TaskState.RUNNING,
            desired_state=TaskState.RUNNING,
            node_id=f"node{i % nodes:03}",
            overlay_address=f"10.{224 + (i % nodes) // 256}.{(i % nodes) % 256}.{2 + i // nodes}",
        )

    total = nodes * BACKENDS_PER_NODE
    with cluster.store.read() as state:
        assert state.cluster is not None
        info = msgspec.structs.replace(state.cluster, overlay_range=ipam.DEFAULT_OVERLAY)  # room for 4,096 nodes
    cluster.store.commit(cluster.store.applied_index + 1, [Put("cluster", info)])
    cluster.store.commit(cluster.store.applied_index + 1, [Put("service", service)])
    cluster.store.commit(cluster.store.applied_index + 1, [Put("task", backend(i)) for i in range(total)])
    received = [0] * nodes
    sizes: list[int] = []

    async def read(index: int) -> None:
        import datetime as dt

        from tests.unit.dispatcher_cluster import description
        from warren.api.v1 import dispatcher_pb2 as dpb
        from warren.manager.server import caller
        from warren.pki import Identity

        caller.set(Identity(f"node{index:03}", "worker", "c1", dt.datetime(2100, 1, 1, tzinfo=dt.UTC), 1))
        stream = cluster.dispatcher.Session(
            dpb.SessionRequest(description=description(index), specs_by_reference=True), None
        )
        async for message in stream:
            data = as_sent(message)
            received[index] += 1
            if index == 0:
                sizes.append(len(data))

    readers = [asyncio.create_task(read(i)) for i in range(nodes)]
    await first_messages(received, readers)
    cpu: list[float] = []
    for change in range(CHANGES):
        before = list(received)
        start = time.process_time()
        extra = backend(total + change)
        extra_id = f"x{change}"
        cluster.store.commit(
            cluster.store.applied_index + 1,
            [
                Put(
                    "task",
                    Task(
                        **{
                            **{f: getattr(extra, f) for f in extra.__struct_fields__},
                            "id": extra_id,
                            "overlay_address": f"10.239.255.{2 + change}",
                        }
                    ),
                )
            ],
        )
        deadline = time.monotonic() + 120
        while any(r <= b for r, b in zip(received, before, strict=True)):
            if time.monotonic() > deadline or any(t.done() for t in readers):
                behind = sum(r <= b for r, b in zip(received, before, strict=True))
                ended = [t.exception() for t in readers if t.done()][:1]
                raise RuntimeError(f"change {change}: {behind} sessions got nothing; ended: {ended!r}")
            await asyncio.sleep(0.001)
        cpu.append(time.process_time() - start)
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    return {
        "nodes": nodes,
        "backends": total + CHANGES,
        "cpu_per_change_ms": round(sorted(cpu)[len(cpu) // 2] * 1000, 1),
        "cpu_per_change_ms_all": [round(c * 1000, 1) for c in cpu],
        "message_bytes": sizes[-1] if sizes else 0,
        "load_average": os.getloadavg()[0],
    }


def _services_case(services: int, backends: int, sessions: int, root: Path) -> dict[str, object]:
    return asyncio.run(_services_scenario(services, backends, sessions, root))


async def _services_scenario(services: int, per_service: int, sessions: int, root: Path) -> dict[str, object]:

    from tests.unit.dispatcher_cluster import Cluster
    from warren.api.v1 import dispatcher_pb2 as dpb
    from warren.state import Put

    cluster = Cluster(root)
    deltas = "endpoint_deltas" in dpb.SessionRequest.DESCRIPTOR.fields_by_name  # the new code
    all_services = running_services(cluster, services, per_service)
    flags = ("endpoint_deltas", "endpoint_patches")
    received, agent_cpu, sizes, readers = await open_sessions(cluster, sessions, flags)
    changes = []
    for change in range(CHANGES):
        k = (change * 97) % services
        extra = msgspec.structs.replace(
            make_backend(k, 0, all_services[k], per_service),
            id=f"x{change}",
            slot=per_service + 1,
            overlay_address=f"10.239.255.{2 + change}",
        )
        changes.append(Put("task", extra))
    leader, agent, _ = await timed_changes(cluster, [[c] for c in changes], received, readers, agent_cpu)

    return {
        "deltas": deltas,
        "patches": "endpoint_patches" in dpb.SessionRequest.DESCRIPTOR.fields_by_name,
        "services": services,
        "backends": services * per_service,
        "sessions": sessions,
        "leader_cpu_per_change_ms": median_ms(leader),
        "agent_cpu_per_change_ms": median_ms(agent),
        "leader_cpu_per_change_ms_all": [round(c * 1000, 2) for c in leader],
        "agent_cpu_per_change_ms_all": [round(c * 1000, 3) for c in agent],
        "message_bytes": sizes[-1] if sizes else 0,
        "load_average": os.getloadavg()[0],
    }


def _creating_case(
    services: int, per_service: int, sessions: int, creates: int, batch: int, root: Path
) -> dict[str, object]:
    return asyncio.run(_creating_scenario(services, per_service, sessions, creates, batch, root))


async def _creating_scenario(
    services: int, per_service: int, sessions: int, creates: int, batch: int, root: Path
) -> dict[str, object]:
    """S1 while its services are being created (#15): `services` services of `per_service`
    tasks spread over the `sessions` nodes, all running but the last `creates` services; then
    those come `batch` per commit, each with its tasks placed and running. Every commit sends
    every session a message (services added to the endpoints; some also get tasks and their
    specs), so the leader's CPU per message is its CPU per commit / sessions."""
    from tests.unit.dispatcher_cluster import Cluster
    from warren import gcpolicy
    from warren.api.v1 import dispatcher_pb2 as dpb
    from warren.state import Put

    gcpolicy.settle()  # as a serving manager collects (ADR 67)
    cluster = Cluster(root)
    deltas = "endpoint_deltas" in dpb.SessionRequest.DESCRIPTOR.fields_by_name
    with_overlay_room(cluster)
    all_services = [make_service(k, per_service) for k in range(services)]

    def created(k: int) -> list[Any]:
        tasks = [
            make_backend(k, j, all_services[k], per_service, f"node{(k * per_service + j) % sessions:04}")
            for j in range(per_service)
        ]
        return [Put("service", all_services[k])] + [Put("task", t) for t in tasks]

    first = services - creates
    cluster.store.commit(cluster.store.applied_index + 1, [c for k in range(first) for c in created(k)])
    # As an agent asks for them (those this code's SessionRequest has), as the services case does.
    flags = ("endpoint_deltas", "endpoint_patches")
    received, agent_cpu, sizes, readers = await open_sessions(cluster, sessions, flags)
    commits = [
        [c for k in range(at, min(at + batch, services)) for c in created(k)] for at in range(first, services, batch)
    ]
    leader, agent, store = await timed_changes(cluster, commits, received, readers, agent_cpu)
    sessions_cpu = [spent - commit for spent, commit in zip(leader, store, strict=True)]
    return {
        "deltas": deltas,
        "services": services,
        "tasks_per_node": services * per_service // sessions,
        "sessions": sessions,
        "creates": creates,
        "changes_per_commit": len(commits[0]),
        "leader_cpu_per_change_ms": median_ms(leader),
        "store_cpu_per_change_ms": median_ms(store),
        "sessions_cpu_per_message_ms": median_ms([c / sessions for c in sessions_cpu]),
        "agent_cpu_per_change_ms": median_ms(agent),
        "leader_cpu_per_change_ms_all": [round(c * 1000, 2) for c in leader],
        "agent_cpu_per_change_ms_all": [round(c * 1000, 3) for c in agent],
        "message_bytes": sizes[-1] if sizes else 0,
        "load_average": os.getloadavg()[0],
    }


def _apply_case(services: int, per_service: int, messages: int = 500) -> dict[str, object]:
    """Pure function: one agent's parse and `AssignmentSet.apply` of endpoint deltas that each
    add one service amid `services` held (as every message does while S1's services are created,
    #15). The new names fall between the held ones, so an order kept by appending would show."""
    from warren.agent.assignments import AssignmentSet
    from warren.api.v1 import dispatcher_pb2 as dpb
    from warren.manager.dispatchwire import encode_endpoint_delta

    def entry(k: int) -> Any:
        backends = [f"10.{224 + k // 6400}.{(k // 25) % 256}.{(k % 25) * 10 + j}" for j in range(per_service)]
        return dpb.ServiceEndpoint(name=f"svc{k:05}", vip=f"10.201.{k // 250}.{2 + k % 250}", backends=backends)

    held = AssignmentSet()
    whole = [entry(2 * k) for k in range(services)]
    held.apply(
        dpb.AssignmentsMessage(
            type=dpb.AssignmentsMessage.COMPLETE, version=1, services=whole, services_changed=True, services_index=1
        )
    )
    encoded = []
    for n in range(messages):
        head = dpb.AssignmentsMessage(type=dpb.AssignmentsMessage.INCREMENTAL, applies_to=n + 1, version=n + 2)
        encoded.append(head.SerializeToString() + encode_endpoint_delta([entry(2 * n + 1)], [], n + 1, n + 2))
    start = time.process_time()
    for data in encoded:
        held.apply(dpb.AssignmentsMessage.FromString(data))
    spent = time.process_time() - start
    return {
        "services": services,
        "messages": messages,
        "agent_cpu_per_change_ms": round(spent / messages * 1000, 4),
        "leader_cpu_per_change_ms": 0.0,
        "message_bytes": len(encoded[-1]),
        "load_average": os.getloadavg()[0],
    }


def _mesh_case(sessions: int, root: Path) -> dict[str, object]:
    return asyncio.run(_mesh_scenario(sessions, root))


async def _mesh_scenario(sessions: int, root: Path) -> dict[str, object]:
    """`sessions` nodes on the overlay, each with its session; then CHANGES nodes join the mesh
    one at a time (ADR 65's mesh deltas; the whole mesh to every node before)."""

    from tests.unit.dispatcher_cluster import Cluster
    from warren.api.v1 import dispatcher_pb2 as dpb
    from warren.model import Node
    from warren.state import Put

    cluster = Cluster(root)
    deltas = "mesh_deltas" in dpb.SessionRequest.DESCRIPTOR.fields_by_name
    with cluster.store.read() as state:
        assert state.cluster is not None
        info = msgspec.structs.replace(state.cluster, overlay_range=ipam.DEFAULT_OVERLAY)
    cluster.store.commit(cluster.store.applied_index + 1, [Put("cluster", info)])
    received, agent_cpu, sizes, readers = await open_sessions(cluster, sessions, ("mesh_deltas",))
    joins = [
        Put(
            "node",
            Node(
                id=f"joined{change}",
                hostname=f"joined{change}",
                overlay_subnet=f"10.239.{change}.0/24",
                overlay=True,
                wg_public_key=f"key{change}",
                wg_endpoint=f"127.0.0.1:{45000 + change}",
            ),
        )
        for change in range(CHANGES)
    ]
    leader, agent, _ = await timed_changes(cluster, [[j] for j in joins], received, readers, agent_cpu)

    return {
        "deltas": deltas,
        "mesh_nodes": sessions + CHANGES,
        "sessions": sessions,
        "leader_cpu_per_change_ms": median_ms(leader),
        "agent_cpu_per_change_ms": median_ms(agent),
        "leader_cpu_per_change_ms_all": [round(c * 1000, 2) for c in leader],
        "agent_cpu_per_change_ms_all": [round(c * 1000, 3) for c in agent],
        "message_bytes": sizes[-1] if sizes else 0,
        "load_average": os.getloadavg()[0],
    }


def _one_side(tree: Path, args: list[str]) -> dict[str, object]:
    """One services case run by the code of `tree` (its warren, tests and bench packages)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--one", *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(base: Path, rounds: int, args: list[str]) -> dict[str, object]:
    """The services case, old (the tree at `base`) and new (this tree) alternated, `rounds` each."""
    here = Path(__file__).resolve().parents[1]
    runs: list[dict[str, object]] = []
    for _ in range(rounds):
        for side, tree in (("old", base), ("new", here)):
            result = _one_side(tree, args)
            result["side"] = side
            runs.append(result)
            print(json.dumps(result), file=sys.stderr)

    def median(side: str, key: str) -> float:
        values = sorted(float(r[key]) for r in runs if r["side"] == side)  # type: ignore[arg-type]
        return values[len(values) // 2]

    keys = ("leader_cpu_per_change_ms", "agent_cpu_per_change_ms", "message_bytes")
    keys += ("store_cpu_per_change_ms", "sessions_cpu_per_message_ms") if "--creating" in args else ()
    medians = {side: {key: median(side, key) for key in keys} for side in ("old", "new")}
    ratios = {key: round(medians["new"][key] / medians["old"][key], 4) for key in keys if medians["old"][key]}
    return {"runs": runs, "medians": medians, "new_over_old": ratios}


def run() -> dict[str, object]:
    cases = []
    for nodes in [int(n) for n in os.environ.get("WARREN_BENCH_ENDPOINT_NODES", "300,1000").split(",")]:
        root = Path(tempfile.mkdtemp(prefix=f"warren-bench-endpoints{nodes}-"))
        try:
            cases.append(asyncio.run(_case(nodes, root)))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "name": "endpoints",
        "cases": [],
        "detail": cases,
        "figures": [
            figure(
                f"Dispatcher CPU per backend change, {c['nodes']:,} sessions, {c['backends']:,} backends (in-process)",
                c["cpu_per_change_ms"],
                "ms",
            )
            for c in cases
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=0, help="the services shape: this many services")
    parser.add_argument("--backends", type=int, default=10, help="backends per service")
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--mesh", action="store_true", help="joins to the mesh, not backend changes")
    parser.add_argument(
        "--creating",
        type=int,
        default=0,
        help="the last this many services created one per commit, not backend changes",
    )
    parser.add_argument("--compare", type=Path, help="a tree with the old code, run alternately with this one")
    parser.add_argument("--batch", type=int, default=1, help="with --creating: services per commit")
    parser.add_argument("--apply", action="store_true", help="only one agent's apply of deltas adding a service")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a compare run's side
    options = parser.parse_args()
    if not options.services and not options.mesh:
        print(json.dumps(run(), indent=2))
        return
    args = ["--services", str(options.services), "--backends", str(options.backends)]
    args += ["--sessions", str(options.sessions)] + (["--mesh"] if options.mesh else [])
    args += ["--creating", str(options.creating), "--batch", str(options.batch)] if options.creating else []
    args += ["--apply"] if options.apply else []
    if options.compare:
        print(json.dumps(compare(options.compare, options.rounds, args), indent=2))
        return
    root = Path(tempfile.mkdtemp(prefix="warren-bench-endpoint-services-"))
    try:
        if options.apply:
            print(json.dumps(_apply_case(options.services, options.backends)))
        elif options.mesh:
            print(json.dumps(_mesh_case(options.sessions, root)))
        elif options.creating:
            case = _creating_case(
                options.services, options.backends, options.sessions, options.creating, options.batch, root
            )
            print(json.dumps(case))
        else:
            print(json.dumps(_services_case(options.services, options.backends, options.sessions, root)))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
