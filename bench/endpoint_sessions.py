"""What the endpoint benchmarks (bench_endpoints, bench_endpoint_runs, bench_reconnect) run
against, in-process: services of running backends committed to a test cluster's store
(`running_services`, one service and one backend with `make_service` and `make_backend`), node
sessions opened on its dispatcher (`open_sessions`), each message as gRPC would send it
(`as_sent`), and commits timed until every session has its message (`timed_changes`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec

from warren.network import ipam


def as_sent(message: Any) -> bytes:
    """The bytes gRPC sends for what a session yields (the dispatcher's response serializer)."""
    encode = getattr(message, "encode", None)
    return encode() if encode is not None else message.SerializeToString()


async def open_sessions(
    cluster: Any, sessions: int, flags: tuple[str, ...]
) -> tuple[list[int], list[float], list[int], list[asyncio.Task]]:
    """`sessions` node sessions on the dispatcher, each counting its messages (`received`); the
    first also parses and applies them as an agent does, and records that CPU (`agent_cpu`) and
    the message sizes, after its whole first message. `flags`: the SessionRequest fields that ask
    for deltas (or patches), set if the code under test has them. Returns once every session
    got its first message and the joins' node changes have settled."""
    import datetime as dt

    from tests.unit.dispatcher_cluster import description
    from warren.agent.assignments import AssignmentSet
    from warren.api.v1 import dispatcher_pb2 as dpb
    from warren.manager.server import caller
    from warren.pki import Identity

    received = [0] * sessions
    agent_cpu: list[float] = []
    sizes: list[int] = []

    async def read(index: int) -> None:
        caller.set(Identity(f"node{index:04}", "worker", "c1", dt.datetime(2100, 1, 1, tzinfo=dt.UTC), 1))
        fields = dpb.SessionRequest.DESCRIPTOR.fields_by_name
        extra = {flag: True for flag in flags if flag in fields}
        request = dpb.SessionRequest(description=description(index), specs_by_reference=True, **extra)
        held = AssignmentSet()
        async for message in cluster.dispatcher.Session(request, None):
            data = as_sent(message)  # the leader's serialization, as gRPC's
            if index == 0:
                start = time.process_time()
                held.apply(dpb.AssignmentsMessage.FromString(data))
                if received[0]:
                    agent_cpu.append(time.process_time() - start)
                    sizes.append(len(data))
            received[index] += 1

    readers = [asyncio.create_task(read(i)) for i in range(sessions)]
    await first_messages(received, readers)
    return received, agent_cpu, sizes, readers


async def timed_changes(
    cluster: Any, commits: list[list[Any]], received: list[int], readers: list[asyncio.Task], agent_cpu: list[float]
) -> tuple[list[float], list[float], list[float]]:
    """Make each commit and wait until every session got a message: the process CPU of each,
    split into the leader's and one agent's (`agent_cpu`, which the readers append to), and the
    part of the leader's that the store's commit itself took. Then stop the readers and close
    the store."""
    leader: list[float] = []
    agent: list[float] = []
    store: list[float] = []
    for number, changes in enumerate(commits):
        before, agent_before = list(received), sum(agent_cpu)
        start = time.process_time()
        cluster.store.commit(cluster.store.applied_index + 1, changes)
        store.append(time.process_time() - start)
        deadline = time.monotonic() + 120
        while any(r <= b for r, b in zip(received, before, strict=True)):
            if time.monotonic() > deadline or any(t.done() for t in readers):
                raise RuntimeError(f"change {number}: a session got nothing")
            await asyncio.sleep(0.001)
        spent = time.process_time() - start
        agent.append(sum(agent_cpu) - agent_before)
        leader.append(spent - agent[-1])
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    cluster.store.env.close()
    return leader, agent, store


def median_ms(values: list[float]) -> float:
    return round(sorted(values)[len(values) // 2] * 1000, 3)


def make_service(k: int, per_service: int) -> Any:
    from warren.model import Service, ServiceSpec

    spec = ServiceSpec(name=f"svc{k:04}", image="x", replicas=per_service)
    return Service(id=f"s{k:04}", spec=spec, vip=f"10.201.{k // 250}.{2 + k % 250}", version=1)


def make_backend(k: int, j: int, service: Any, per_service: int, node_id: str = "elsewhere") -> Any:
    """Task `j` of service `k`, running with its overlay address: one of the service's backends."""
    from warren.model import Task, TaskState

    n = k * per_service + j
    return Task(
        id=f"t{k:04}-{j:03}",
        service_id=service.id,
        service_name=service.spec.name,
        slot=j + 1,
        spec=service.spec,
        spec_version=1,
        state=TaskState.RUNNING,
        desired_state=TaskState.RUNNING,
        node_id=node_id,
        overlay_address=f"10.{224 + n // 65536}.{(n // 256) % 256}.{n % 256}",
    )


def with_overlay_room(cluster: Any) -> None:
    from warren.state import Put

    with cluster.store.read() as state:
        assert state.cluster is not None
        info = msgspec.structs.replace(state.cluster, overlay_range=ipam.DEFAULT_OVERLAY)
    cluster.store.commit(cluster.store.applied_index + 1, [Put("cluster", info)])


def running_services(cluster: Any, services: int, per_service: int) -> list[Any]:
    """`services` services of `per_service` running backends each, committed to the cluster's
    store (with room for their addresses); the services."""
    from warren.state import Put

    with_overlay_room(cluster)
    all_services = [make_service(k, per_service) for k in range(services)]
    cluster.store.commit(cluster.store.applied_index + 1, [Put("service", s) for s in all_services])
    cluster.store.commit(
        cluster.store.applied_index + 1,
        [
            Put("task", make_backend(k, j, s, per_service))
            for k, s in enumerate(all_services)
            for j in range(per_service)
        ],
    )
    return all_services


async def first_messages(received: list[int], readers: list[asyncio.Task[Any]]) -> None:
    """Wait until every session (`readers`, counting into `received`) got its first message, then
    for the joins' node changes to settle; a session that ended meanwhile raises."""
    while min(received) < 1:
        failed = [t for t in readers if t.done()]
        if failed:
            raise RuntimeError(f"a session ended: {failed[0].exception()!r}")
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.5)
