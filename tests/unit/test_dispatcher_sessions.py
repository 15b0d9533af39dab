"""The dispatcher with many nodes (#15, ADR 52, ADR 57), on a real Store with the in-memory Raft:
a node change costs each open session O(1) (the managers' addresses and the mesh are computed
once per commit), a backend change is encoded once for every session, commits queued behind a
busy session go as one message, and an agent that reconnects unchanged commits nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from tests.unit.dispatcher_cluster import Cluster, description
from warren.api import convert
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager.dispatchwire import Assignments, encode_endpoints
from warren.model import NodeStatus, Service, ServiceSpec, Task, TaskState
from warren.state import ClusterState, Delete, Put

SESSIONS = 30
INCREMENTAL = dpb.AssignmentsMessage.INCREMENTAL


async def until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def quiet(queues: list[asyncio.Queue[dpb.AssignmentsMessage]]) -> None:
    """Empty the queues, then wait until nothing more arrives for a while (sessions wake up
    once a second without a change)."""
    for _ in range(3):
        await asyncio.sleep(0.2)
        for queue in queues:
            while not queue.empty():
                queue.get_nowait()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 60))


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def wrap(self, function):  # type: ignore[no-untyped-def]
        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.calls += 1
            return function(*args, **kwargs)

        return counted


def test_a_node_change_costs_each_session_constant_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from warren.manager import meshlog

    managers, mesh_nodes, mesh_encodings = Counter(), Counter(), Counter()
    monkeypatch.setattr(ClusterState, "manager_addrs", managers.wrap(ClusterState.manager_addrs))
    monkeypatch.setattr(convert, "mesh_node_to_pb", mesh_nodes.wrap(convert.mesh_node_to_pb))
    monkeypatch.setattr(meshlog, "encode_mesh", mesh_encodings.wrap(meshlog.encode_mesh))

    async def scenario() -> None:
        cluster = Cluster(tmp_path)
        try:
            queues = [cluster.open(i) for i in range(SESSIONS)]
            await until(lambda: len(cluster.state().nodes) == SESSIONS and all(not q.empty() for q in queues))
            await quiet(queues)

            # A change to a node that alters neither the managers nor the mesh: nothing is sent,
            # and the nodes are walked once for the commit, not once per session.
            managers.calls = mesh_nodes.calls = 0
            node = cluster.state().nodes["node000"]
            cluster.commit(msgspec.structs.replace(node, status=NodeStatus.DOWN, status_message="test"))
            await quiet(queues)
            assert managers.calls <= 1
            assert mesh_nodes.calls == 0

            # A node joins the mesh: every session gets the new mesh, built and encoded once (ADR 57:
            # copied into each session's message, it was a fifth of the leader's CPU at 1,000 joins).
            managers.calls = mesh_nodes.calls = mesh_encodings.calls = 0
            sent = {node_id: len(messages) for node_id, messages in cluster.sent.items()}
            joined = msgspec.structs.replace(
                node, id="joined", hostname="joined", wg_public_key=node.wg_public_key[:-4] + "AAA=",
                overlay_subnet="10.99.250.0/24",
            )  # fmt: skip
            cluster.commit(joined)
            messages = [await asyncio.wait_for(q.get(), 10) for q in queues]
            assert all(m.type == INCREMENTAL and m.mesh_changed for m in messages)
            assert all(len(m.mesh) == SESSIONS + 1 and "joined" in {n.node_id for n in m.mesh} for m in messages)
            assert managers.calls <= 1
            assert mesh_nodes.calls <= SESSIONS + 1  # once per mesh node, not once per session too
            assert mesh_encodings.calls == 1
            latest = [cluster.sent[node_id][count] for node_id, count in sent.items()]
            assert all(not m.own.mesh and m.mesh is latest[0].mesh for m in latest)
        finally:
            await cluster.close()
            cluster.store.env.close()

    run(scenario())


def test_a_reconnect_with_an_unchanged_description_commits_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = Cluster(tmp_path)
        try:
            await asyncio.wait_for(cluster.open(1).get(), 10)
            registered = cluster.store.applied_index
            node = cluster.state().nodes["node001"]

            # The same agent reconnects (as every agent does after a leader change): no commit.
            await asyncio.wait_for(cluster.open(1).get(), 10)
            assert cluster.store.applied_index == registered
            assert cluster.state().nodes["node001"] == node

            # A changed description is written.
            await asyncio.wait_for(cluster.open(1, description(1, hostname="renamed")).get(), 10)
            assert cluster.store.applied_index == registered + 1
            assert cluster.state().nodes["node001"].hostname == "renamed"

            # A node marked down comes back ready through its registration.
            down = msgspec.structs.replace(cluster.state().nodes["node001"], status=NodeStatus.DOWN)
            cluster.commit(down)
            await asyncio.wait_for(cluster.open(1, description(1, hostname="renamed")).get(), 10)
            assert cluster.state().nodes["node001"].status == NodeStatus.READY
        finally:
            await cluster.close()
            cluster.store.env.close()

    run(scenario())


def test_a_session_behind_sends_one_message_for_every_commit_queued(tmp_path: Path) -> None:
    """Commits that land while a session is busy go out as one message, each task once as the
    last commit left it: with many nodes, a session per commit (each with every endpoint) was
    the leader's work per status report times the nodes."""

    async def scenario() -> None:
        cluster = Cluster(tmp_path)
        try:
            received = cluster.open(1)
            await asyncio.wait_for(received.get(), 10)
            web = Service(id="svc-web", spec=ServiceSpec(name="web", image="busybox"), version=1)

            def task(task_id: str, state: TaskState, desired: TaskState = TaskState.RUNNING) -> Task:
                return Task(
                    id=task_id, service_id=web.id, service_name="web", slot=1, spec=web.spec, spec_version=1,
                    desired_state=desired, state=state, node_id="node001",
                )  # fmt: skip

            def commit(*changes: Put | Delete) -> None:
                cluster.store.commit(cluster.store.applied_index + 1, list(changes))

            # 30 commits in a row, without the session running in between.
            commit(Put("service", web))
            for i in range(10):
                commit(Put("task", task(f"t{i}", TaskState.ASSIGNED)))
                commit(Put("task", task(f"t{i}", TaskState.RUNNING)))
            for i in range(5):
                commit(Put("task", task(f"t{i}", TaskState.SHUTDOWN, TaskState.SHUTDOWN)))
            for i in range(3):
                commit(Delete("task", f"t{i}"))
            message = await asyncio.wait_for(received.get(), 10)
            assert message.type == INCREMENTAL
            # t0-t4 ended (t0-t2 deleted too): removed (a no-op for an agent that never had
            # them), never updated; t5-t9 running, once each.
            assert sorted(message.removed) == [f"t{i}" for i in range(5)]
            assert {t.id: t.state for t in message.updated} == {f"t{i}": "running" for i in range(5, 10)}
            await asyncio.sleep(0.3)
            assert received.empty()
        finally:
            await cluster.close()
            cluster.store.env.close()

    run(scenario())


def test_a_backend_change_is_encoded_once_and_every_session_sends_those_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADR 57: the endpoints go to every session alike; before, each session compared them with
    what it sent and copied them into its own message, O(sessions x backends) per change."""
    from warren.manager import endpointlog

    encodings = Counter()
    monkeypatch.setattr(endpointlog, "encode_endpoints", encodings.wrap(endpointlog.encode_endpoints))

    async def scenario() -> None:
        cluster = Cluster(tmp_path)
        try:
            web = Service(id="svc-web", spec=ServiceSpec(name="web", image="busybox"), version=1, vip="10.201.0.2")

            def backend(i: int) -> Task:
                return Task(
                    id=f"t{i}", service_id=web.id, service_name="web", slot=i + 1, spec=web.spec, spec_version=1,
                    desired_state=TaskState.RUNNING, state=TaskState.RUNNING, node_id="elsewhere",
                    overlay_address=f"10.224.9.{i + 2}",
                )  # fmt: skip

            cluster.store.commit(cluster.store.applied_index + 1, [Put("service", web), Put("task", backend(0))])
            queues = [cluster.open(i) for i in range(SESSIONS)]
            await until(lambda: all(not q.empty() for q in queues))
            # Each COMPLETE carries the endpoints' bytes object itself, no copy per session: gRPC
            # holds a session's last message until its next (1.4 MB each at S2, ADR 72).
            completes = [messages[0] for messages in cluster.sent.values()]
            assert all(m.shared is cluster.dispatcher._endpoints.whole() for m in completes)
            await quiet(queues)
            sent = {node: len(messages) for node, messages in cluster.sent.items()}
            encodings.calls = 0
            cluster.store.commit(cluster.store.applied_index + 1, [Put("task", backend(1))])
            await until(lambda: all(len(cluster.sent[node]) > count for node, count in sent.items()))
            latest = [cluster.sent[node][-1] for node in sent]
            assert encodings.calls == 1  # once per change, not once per session
            assert all(message.shared is latest[0].shared for message in latest)  # the same bytes object
            decoded = latest[0].decoded()
            assert decoded.services_changed and [list(e.backends) for e in decoded.services] == [
                ["10.224.9.2", "10.224.9.3"]
            ]
            assert all(not message.own.services and not message.own.services_changed for message in latest)
        finally:
            await cluster.close()
            cluster.store.env.close()

    run(scenario())


def test_an_assignments_message_with_shared_endpoints_reads_as_one_message() -> None:
    """What the agent parses is the message the dispatcher sent before ADR 57: the protocol is unchanged."""
    endpoint = dpb.ServiceEndpoint(name="web", vip="10.201.0.2", backends=["10.224.0.2", "10.224.1.2"])
    own = dpb.AssignmentsMessage(
        type=INCREMENTAL, session_id="s", applies_to=3, version=4, removed=["t9"], mesh_changed=True
    )
    whole = dpb.AssignmentsMessage()
    whole.CopyFrom(own)
    whole.services.append(endpoint)
    whole.services_changed, whole.services_index = True, 42
    framed = Assignments(own, encode_endpoints([endpoint], 42))
    assert framed.decoded() == whole and framed.size() == len(framed.encode())
    assert Assignments(own).decoded() == own
