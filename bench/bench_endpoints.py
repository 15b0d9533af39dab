"""The dispatcher's CPU per backend change with many open sessions (ADR 57). In-process: a real
Store (LMDB) and DispatcherService with the in-memory Raft, N node sessions read by one task each,
a service with a VIP and 3 backends per node; then one task becomes a backend, CHANGES times.
Each change sends every session the new endpoints: the figure is the process CPU from the
commit until every session holds the message encoded as gRPC would send it (no network)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from bench.common import figure
from warren.network import ipam

BACKENDS_PER_NODE = 3
CHANGES = 5


def _encoded(message: Any) -> bytes:
    """The bytes gRPC sends for what a session yields (the dispatcher's response serializer)."""
    encode = getattr(message, "encode", None)
    return encode() if encode is not None else message.SerializeToString()


async def _case(nodes: int, root: Path) -> dict[str, object]:
    from tests.unit.test_dispatcher_nodes import Cluster
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

        from tests.unit.test_dispatcher_nodes import description
        from warren.api.v1 import dispatcher_pb2 as dpb
        from warren.manager.server import caller
        from warren.pki import Identity

        caller.set(Identity(f"node{index:03}", "worker", "c1", dt.datetime(2100, 1, 1, tzinfo=dt.UTC), 1))
        stream = cluster.dispatcher.Session(
            dpb.SessionRequest(description=description(index), specs_by_reference=True), None
        )
        async for message in stream:
            data = _encoded(message)
            received[index] += 1
            if index == 0:
                sizes.append(len(data))

    readers = [asyncio.create_task(read(i)) for i in range(nodes)]
    while min(received) < 1:
        failed = [t for t in readers if t.done()]
        if failed:
            raise RuntimeError(f"a session ended: {failed[0].exception()!r}")
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.5)  # the joins' node changes settle
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


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
