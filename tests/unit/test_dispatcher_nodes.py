"""The dispatcher with many nodes (#15, ADR 52), on a real Store (LMDB) with the in-memory Raft: a
node change costs each open session O(1) (the managers' addresses and the mesh are computed once
per commit, not once per session), and an agent that reconnects with an unchanged description
commits nothing (after a leader change every node reconnects at once)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from warren.api import convert
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager.backendhistory import BackendHistory
from warren.manager.dispatcher import DispatcherService
from warren.manager.dispatchwire import Assignments, encode_endpoints
from warren.manager.events import EventHub
from warren.manager.hearing import Heartbeats
from warren.manager.inmemory import InMemoryRaft
from warren.manager.routingreports import RoutingReports
from warren.manager.server import caller
from warren.manager.store import Store, open_environment
from warren.model import ClusterInfo, Node, NodeStatus, Service, ServiceSpec, Task, TaskState
from warren.pki import Identity
from warren.state import ClusterState, Delete, Put

SESSIONS = 30
INCREMENTAL = dpb.AssignmentsMessage.INCREMENTAL


def description(index: int, hostname: str = "") -> dpb.NodeDescription:
    key = base64.b64encode(hashlib.sha256(f"node{index}".encode()).digest()).decode()
    return dpb.NodeDescription(
        hostname=hostname or f"n{index}",
        addr=f"127.0.0.1:{20000 + index}",
        wg_public_key=key,
        wg_endpoint=f"127.0.0.1:{30000 + index}",
        overlay=True,
    )


class Cluster:
    def __init__(self, tmp_path: Path) -> None:
        self.store = Store(open_environment(tmp_path / "db"))
        self.hub = EventHub(asyncio.get_running_loop())
        self.store.watch(self.hub.publish)
        self.raft = InMemoryRaft(self.store)
        self.dispatcher = DispatcherService(self.store, self.raft, self.hub, Heartbeats())
        info = ClusterInfo(
            id="c", created_at=1.0, ca_cert_pem="", ca_key_pem="", worker_token_secret="", manager_token_secret=""
        )
        self.store.commit(1, [Put("cluster", info)])
        self.sessions: dict[str, asyncio.Queue[dpb.AssignmentsMessage]] = {}
        self.sent: dict[str, list[Assignments]] = {}  # each session's messages, as the server sends them
        self._tasks: list[asyncio.Task[None]] = []

    def open(self, index: int, desc: dpb.NodeDescription | None = None) -> asyncio.Queue[dpb.AssignmentsMessage]:
        """A session of node `index` (its own identity), read into a queue by its own task."""
        node_id = f"node{index:03}"
        received: asyncio.Queue[dpb.AssignmentsMessage] = asyncio.Queue()

        async def read() -> None:
            caller.set(Identity(node_id, "worker", "c1", dt.datetime(2100, 1, 1, tzinfo=dt.UTC), 1))
            stream: AsyncIterator[dpb.AssignmentsMessage] = self.dispatcher.Session(
                dpb.SessionRequest(description=desc or description(index), specs_by_reference=True), None
            )
            async for message in stream:
                self.sent.setdefault(node_id, []).append(message)
                received.put_nowait(message.decoded())  # as the agent reads it (ADR 57)

        self._tasks.append(asyncio.create_task(read()))
        self.sessions[node_id] = received
        return received

    async def close(self) -> None:
        # Again while any is left: Python 3.11's wait_for may swallow a cancellation that
        # arrives as the session's wait for events completes.
        pending = set(self._tasks)
        for _ in range(50):
            for task in pending:
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=0.2)
            if not pending:
                break
        assert not pending
        self._tasks.clear()

    def state(self) -> ClusterState:
        with self.store.read() as state:
            return state

    def commit(self, *nodes: Node) -> None:
        self.store.commit(self.store.applied_index + 1, [Put("node", n) for n in nodes])


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


_ADDRESSES = st.frozensets(st.sampled_from([f"10.0.0.{i}" for i in range(8)]), max_size=8)
_REPORTS = st.lists(
    st.one_of(
        st.tuples(st.just("sent"), st.integers(0, 3), st.integers(1, 12), _ADDRESSES),
        st.tuples(st.just("applied"), st.integers(0, 3), st.integers(0, 12)),
        st.tuples(st.just("forget"), st.integers(0, 3)),
    ),
    max_size=40,
)


@given(_REPORTS)
def test_routing_snapshot_is_the_union_of_the_sends_since_the_confirmed_one(reports: list[tuple]) -> None:
    """What a node may route to, as the reconciler asks it (membership, equality, size), is the
    union of the backends sent at or after the index it confirmed; a node that confirmed none
    is unknown. The snapshot leaves the union unbuilt (it was 40 % of the leader in S1)."""
    routing = RoutingReports()
    sent: dict[str, dict[int, frozenset[str]]] = {}
    applied: dict[str, int] = {}
    for op, n, *rest in reports:
        node = f"n{n}"
        if op == "sent":
            routing.sent(node, rest[0], rest[1])
            sent.setdefault(node, {})[rest[0]] = rest[1]
        elif op == "applied":
            routing.applied(node, rest[0])
            if rest[0] and rest[0] in sent.get(node, {}) and rest[0] >= applied.get(node, 0):
                applied[node] = rest[0]
        else:
            routing.forget(node)
            sent.pop(node, None)
            applied.pop(node, None)
    known = routing.snapshot()
    assert set(known) == set(applied)
    for node, index in applied.items():
        union = frozenset().union(*(b for i, b in sent[node].items() if i >= index))
        assert known[node] == union and len(known[node]) == len(union) and set(known[node]) == union
        assert all((f"10.0.0.{i}" in known[node]) == (f"10.0.0.{i}" in union) for i in range(8))


class ReferenceRoutingReports:
    """RoutingReports as it was before ADR 72, each version's whole frozenset of backends per
    send: the meaning the interval representation must keep (ADR 33)."""

    MAX_UNCONFIRMED = RoutingReports.MAX_UNCONFIRMED

    def __init__(self) -> None:
        self._sent: dict[str, dict[int, frozenset[str]]] = {}
        self._applied: dict[str, int] = {}

    def sent(self, node_id: str, index: int, backends: frozenset[str]) -> None:
        sent = self._sent.setdefault(node_id, {})
        sent[index] = backends
        if len(sent) > self.MAX_UNCONFIRMED:
            self.forget(node_id)

    def applied(self, node_id: str, index: int) -> None:
        sent = self._sent.get(node_id)
        if not index or sent is None or index not in sent or index < self._applied.get(node_id, 0):
            return
        self._applied[node_id] = index
        for older in [i for i in sent if i < index]:
            del sent[older]

    def forget(self, node_id: str) -> None:
        self._sent.pop(node_id, None)
        self._applied.pop(node_id, None)

    def snapshot(self) -> dict[str, frozenset[str]]:
        return {
            node: frozenset().union(*(b for i, b in self._sent.get(node, {}).items() if i >= applied))
            for node, applied in self._applied.items()
        }


_POOL = [f"10.0.0.{i}" for i in range(8)]
_HISTORY_OPS = st.lists(
    st.one_of(
        # A new endpoint version: its label's step up, its backends, extra addresses "touched"
        # that did not change (a service recomputed with the same backends).
        st.tuples(st.just("version"), st.integers(1, 3), _ADDRESSES, _ADDRESSES),
        st.tuples(st.just("sent"), st.integers(0, 3)),  # the current version, to that node
        st.tuples(st.just("applied"), st.integers(0, 3), st.integers(0, 8)),  # the k-th newest sent, or junk
        st.tuples(st.just("forget"), st.integers(0, 3)),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(_HISTORY_OPS)
@example(  # a node that confirmed the last version holding an address, removed by the next one
    [
        ("version", 1, frozenset({"10.0.0.1"}), frozenset()),
        ("sent", 0),
        ("applied", 0, 0),
        ("version", 1, frozenset(), frozenset()),
    ]
)
@example(  # an address leaving and coming back, and a node holding only the versions around it
    [
        ("version", 1, frozenset({"10.0.0.1"}), frozenset()),
        ("sent", 0),
        ("applied", 0, 0),
        ("version", 2, frozenset(), frozenset()),
        ("sent", 0),
        ("applied", 0, 0),
        ("version", 1, frozenset({"10.0.0.1"}), frozenset()),
        ("sent", 1),
        ("applied", 1, 0),
        ("version", 1, frozenset(), frozenset()),
        ("sent", 1),
    ]
)
def test_routing_from_backend_intervals_means_what_whole_sets_meant(ops: list[tuple]) -> None:
    """ADR 72: versions recorded as intervals per address, sent, confirmed and forgotten in any
    order, answer "may node N route to X" exactly as the whole frozensets of ADR 33 did, also
    after the history forgot the spells no view can ask about any more."""
    history = BackendHistory()
    routing, reference = RoutingReports(), ReferenceRoutingReports()
    backends: frozenset[str] = frozenset()
    current = history.record(1, backends, ())
    sent_to: dict[str, list[int]] = {}
    for op, *args in ops:
        if op == "version":
            step, new, touched = args
            current = history.record(current.at + step, new, (backends ^ new) | touched)
            backends = new
        elif op == "sent":
            node = f"n{args[0]}"
            routing.sent(node, current.at, current)
            reference.sent(node, current.at, backends)
            sent_to.setdefault(node, []).append(current.at)
        elif op == "applied":
            node, k = f"n{args[0]}", args[1]
            indexes = sent_to.get(node, [])
            index = indexes[-1 - k] if k < len(indexes) else k  # a junk index when k is past them
            routing.applied(node, index)
            reference.applied(node, index)
        else:
            routing.forget(f"n{args[0]}")
            reference.forget(f"n{args[0]}")
        assert set(current) == backends
        known, expected = routing.snapshot(), reference.snapshot()
        assert set(known) == set(expected)
        for node, union in expected.items():
            assert [a in known[node] for a in _POOL] == [a in union for a in _POOL], node
            assert set(known[node]) == union and len(known[node]) == len(union)


def test_backend_history_holds_what_versions_changed_not_what_they_hold() -> None:
    """1,000 backends and 200 versions that each move one: the history holds about one spell per
    change (whole sets: 200 x 1,000), and forgets the ended ones once no view can ask."""
    history = BackendHistory()
    backends = {f"10.224.{i // 256}.{i % 256}" for i in range(1_000)}
    views = [history.record(1, backends, backends)]
    for step in range(200):
        gone, new = f"10.224.{step // 256}.{step % 256}", f"10.225.{step // 256}.{step % 256}"
        backends = (backends - {gone}) | {new}
        views.append(history.record(2 + step, backends, {gone, new}))
    assert history.spells() == 1_000 + 200
    assert "10.224.0.0" in views[0] and "10.224.0.0" not in views[1] and "10.225.0.0" in views[1]
    assert len(views[100]) == 1_000
    del views[:-1]  # only the newest is still viewed
    history.record(500, backends, ())
    assert history.spells() == 1_000
    with pytest.raises(ValueError, match="not above"):
        history.record(500, backends, ())


def test_a_removed_node_no_longer_keeps_its_versions_alive() -> None:
    """A node that never confirmed keeps the versions sent to it, and the history every spell
    that ended since; once it is removed (`node rm` revokes it) the routes forget it."""
    history, routing = BackendHistory(), RoutingReports()
    backends = {f"10.224.0.{i}" for i in range(100)}
    routing.sent("gone", 1, history.record(1, backends, backends))
    routing.sent("kept", 2, history.record(2, backends, ()))
    routing.applied("kept", 2)
    for step in range(50):  # the node "kept" confirms each; "gone" none
        old, new = f"10.224.0.{step}", f"10.225.0.{step}"
        backends = (backends - {old}) | {new}
        current = history.record(3 + step, backends, {old, new})
        routing.sent("kept", current.at, current)
        routing.applied("kept", current.at)
    assert history.spells() == 150  # the ended ones kept for "gone"'s version 1
    known = routing.snapshot(revoked={"gone": object()})
    assert set(known) == {"kept"} and "10.224.0.0" not in known["kept"]
    history.record(100, backends, ())
    assert history.spells() == 100
