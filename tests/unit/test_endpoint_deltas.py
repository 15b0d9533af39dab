"""Endpoint and mesh deltas (#15, ADR 65), on a real Store (LMDB) with the in-memory Raft and the
agent's own AssignmentSet reading every message: an agent that announces deltas gets, after the
first whole list of a session, only the services whose endpoints changed (the nodes whose mesh
entry changed), and holds exactly the whole list at every index (mesh version); an agent that
does not still gets whole lists; a delta onto another index than the one held resynchronises;
the leader recomputes only the services a commit touched."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import tempfile
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.unit.test_dispatcher_nodes import description
from tests.waiting import async_wait_for as until
from warren import strategy
from warren.agent.assignments import AssignmentSet, MeshMember, VersionGap
from warren.api import convert
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager import changelog, endpointlog, endpoints
from warren.manager.dispatcher import DispatcherService
from warren.manager.dispatchwire import encode_endpoint_delta
from warren.manager.events import EventHub
from warren.manager.hearing import Heartbeats
from warren.manager.inmemory import InMemoryRaft
from warren.manager.server import caller
from warren.manager.store import Store, open_environment
from warren.model import (
    ClusterInfo,
    DeployConfig,
    DeployStrategy,
    Network,
    NetworkAttachment,
    Node,
    PortConfig,
    RolloutState,
    Service,
    ServiceSpec,
    Task,
    TaskState,
    UpdateStatus,
)
from warren.network.endpointdigest import endpoint_of
from warren.network.lb import Endpoint
from warren.pki import Identity
from warren.state import Change, ClusterState, Delete, Put

SERVICES = 3
TASKS = 3  # per service


@dataclass
class Agent:
    """One node's session, read by its own task into the agent's AssignmentSet."""

    deltas: bool
    assignments: AssignmentSet = field(default_factory=AssignmentSet)
    patches: bool = False  # takes patches of a service's backends and members too
    runs: bool = False  # and applies a delta's entries in order (ADR 78)
    services: tuple[Endpoint, ...] = ()
    seen: dict[int, tuple[Endpoint, ...]] = field(default_factory=dict)  # services_index -> set held
    mesh: tuple[MeshMember, ...] = ()
    mesh_seen: dict[int, tuple[MeshMember, ...]] = field(default_factory=dict)  # mesh version -> mesh held
    messages: list[dpb.AssignmentsMessage] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # cleared: the reader stops reading
    gaps: list[str] = field(default_factory=list)
    digests: bool = False  # sends the digests of the endpoints it holds with a new session (ADR 81)
    reader: asyncio.Task[None] | None = None

    @property
    def index(self) -> int:
        return self.assignments.endpoints_index


class Rig:
    def __init__(self, root: Path) -> None:
        self.store = Store(open_environment(root / "db"))
        self.hub = EventHub(asyncio.get_running_loop())
        self.store.watch(self.hub.publish)
        self.dispatcher = DispatcherService(self.store, InMemoryRaft(self.store), self.hub, Heartbeats())
        info = ClusterInfo(
            id="c", created_at=1.0, ca_cert_pem="", ca_key_pem="", worker_token_secret="", manager_token_secret=""
        )
        self.store.commit(1, [Put("cluster", info)])
        self._readers: list[asyncio.Task[None]] = []

    def commit(self, changes: list[Change]) -> None:
        self.store.commit(self.store.applied_index + 1, changes)

    def open(self, index: int, agent: Agent) -> Agent:
        agent.gate.set()

        async def read() -> None:
            caller.set(Identity(f"node{index:03}", "worker", "c1", dt.datetime(2100, 1, 1, tzinfo=dt.UTC), 1))
            request = dpb.SessionRequest(
                description=description(index),
                specs_by_reference=True,
                endpoint_deltas=agent.deltas,
                endpoint_patches=agent.patches,
                endpoint_runs=agent.runs,
                mesh_deltas=agent.deltas,
                endpoint_digests=agent.assignments.endpoint_digests() if agent.digests else [],
            )
            agent.assignments.reset()
            async for sent in self.dispatcher.Session(request, None):
                message = sent.decoded()  # the bytes the agent parses (ADR 57)
                agent.messages.append(message)
                try:
                    delta = agent.assignments.apply(message)
                except VersionGap as exc:
                    agent.gaps.append(str(exc))
                    return  # as the agent's session does: it reopens
                if delta.services is not None:
                    agent.services = delta.services
                    agent.seen[delta.services_index] = delta.services
                if delta.mesh is not None:
                    agent.mesh = delta.mesh
                    agent.mesh_seen[agent.assignments.mesh_version] = delta.mesh
                await agent.gate.wait()

        agent.reader = asyncio.create_task(read())
        self._readers.append(agent.reader)
        return agent

    async def reopen(self, index: int, agent: Agent) -> dpb.AssignmentsMessage:
        """End the agent's session and open a new one, as after a leader change: its COMPLETE."""
        assert agent.reader is not None
        agent.reader.cancel()
        await asyncio.gather(agent.reader, return_exceptions=True)
        first = len(agent.messages)
        self.open(index, agent)
        await until(lambda: len(agent.messages) > first, timeout=10, interval=0.005, message="a COMPLETE")
        return agent.messages[first]

    def truth(self) -> tuple[Endpoint, ...]:
        """The whole list computed afresh from the state, as the agent converts it."""
        with self.store.read() as state:
            return tuple(endpoint_of(e) for e in endpoints.all_endpoints(state))

    async def settled(self, agents: list[Agent]) -> None:
        """Until each reading agent holds the leader's current version (every commit delivered)."""

        def caught_up() -> bool:
            log = self.dispatcher._endpoints
            target = log.current().at
            if log._through != self.store.applied_index:  # a commit not yet delivered
                return False
            return all(a.messages and a.index == target for a in agents if a.gate.is_set())

        await until(caught_up, timeout=10, interval=0.005, message="the agents hold the current endpoints")

    def mesh_truth(self) -> tuple[MeshMember, ...]:
        """The whole mesh computed afresh from the state, as the agent reads it."""
        with self.store.read() as state:
            nodes = sorted((n for n in state.nodes.values() if n.overlay_subnet and n.overlay), key=lambda n: n.id)
            return tuple(MeshMember(n.id, n.wg_public_key, n.wg_endpoint, n.overlay_subnet) for n in nodes)

    async def mesh_settled(self, agents: list[Agent]) -> None:
        def caught_up() -> bool:
            version = self.dispatcher._current_nodes().mesh_version  # the live state's mesh
            reading = [a for a in agents if a.gate.is_set()]
            return all(a.messages and a.assignments.mesh_version == version for a in reading)

        await until(caught_up, timeout=10, interval=0.005, message="the agents hold the current mesh")

    async def close(self) -> None:
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self.store.env.close()


# A service's deployment (ADR 35): each but "" routes only some of its tasks, by spec version.
ROLLOUTS = {
    "": (1, DeployStrategy.ROLLING, None),
    "canary": (2, DeployStrategy.CANARY, RolloutState.CANARY),
    "blue-green": (2, DeployStrategy.BLUE_GREEN, RolloutState.UPDATING),
    "switched": (2, DeployStrategy.BLUE_GREEN, RolloutState.COMPLETED),
    "rollback": (1, DeployStrategy.ROLLING, RolloutState.ROLLBACK_STARTED),
}


def _spec(k: int, version: int = 1, ports: int = 0, network: bool = False, strategy: str = "") -> ServiceSpec:
    deploy = DeployConfig(ROLLOUTS[strategy][1], canary_weight=20 if strategy == "canary" else None)
    return ServiceSpec(
        name=f"s{k}",
        image=f"busybox:{version}",
        replicas=2,
        ports=tuple(PortConfig(target=80, published=8000 + k * 10 + p) for p in range(ports)),
        networks=(NetworkAttachment("n1"),) if network else (),
        deploy=deploy,
    )


def _service(k: int, vip: bool = True, ports: int = 0, network: bool = False, rollout: str = "") -> Service:
    version, _, state = ROLLOUTS[rollout]
    status = None if state is None else UpdateStatus(state, 1.0, 3 - version, version)
    spec = _spec(k, version, ports, network, rollout)
    return Service(
        id=f"svc{k}", spec=spec, version=version, vip=f"10.201.0.{k + 2}" if vip else "", update_status=status
    )


TASK_STATES = {
    "running": dict(state=TaskState.RUNNING),
    "starting": dict(state=TaskState.STARTING),
    "failed": dict(state=TaskState.FAILED),
    "draining": dict(state=TaskState.RUNNING, draining_since=1.0),
    "unhealthy": dict(state=TaskState.RUNNING, health="unhealthy"),
    "no address": dict(state=TaskState.RUNNING, overlay_address=""),
}


def _task(k: int, j: int, how: str, address: int, version: int = 1) -> Task:
    fields: dict = dict(state=TaskState.RUNNING, overlay_address=f"10.224.{k}.{2 + j * 4 + address}")
    fields.update(TASK_STATES[how])
    return Task(
        id=f"t{k}-{j}",
        service_id=f"svc{k}",
        service_name=f"s{k}",
        slot=j + 1,
        spec=_spec(k, version),
        spec_version=version,
        desired_state=TaskState.RUNNING,
        node_id="elsewhere",
        **fields,
    )


def _change(op: tuple) -> Change:
    match op:
        case ("task", k, j, how, address, version):
            return Put("task", _task(k, j, how, address, version))
        case ("drop", k, j):
            return Delete("task", f"t{k}-{j}")
        case ("service", k, vip, ports, network, rollout):
            return Put("service", _service(k, vip, ports, network, rollout))
        case ("rm", k):
            return Delete("service", f"svc{k}")
        case ("network", internal):
            return Put("network", Network(id="net1", name="n1", internal=internal))
    raise AssertionError(op)


services = st.integers(0, SERVICES - 1)
tasks = st.integers(0, TASKS - 1)
versions = st.integers(1, 2)
rollouts = st.sampled_from(sorted(ROLLOUTS))
ops = st.one_of(
    st.tuples(st.just("task"), services, tasks, st.sampled_from(sorted(TASK_STATES)), st.integers(0, 3), versions),
    st.tuples(st.just("drop"), services, tasks),
    st.tuples(st.just("service"), services, st.booleans(), st.integers(0, 2), st.booleans(), rollouts),
    st.tuples(st.just("rm"), services),
    st.tuples(st.just("network"), st.booleans()),
)  # fmt: skip
# Each step: one commit of 1-4 changes, whether the lagging agent reads meanwhile, and whether
# the test waits for the agents before the next commit (if not, sessions take several at once).
steps = st.lists(st.tuples(st.lists(ops, min_size=1, max_size=4), st.booleans(), st.booleans()), max_size=14)


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 120))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=steps)
@example(history=[([("task", 0, 0, "failed", 0, 1)], False, True)])  # a backend leaves by ending
@example(  # the lagging agent misses two versions that changed different services
    history=[
        ([("task", 1, 0, "running", 0, 1)], True, True),
        ([("task", 0, 1, "running", 0, 1)], True, True),
        ([("task", 1, 1, "running", 0, 1)], True, True),
    ]
)
@example(  # the lagging agents miss a backend leaving and coming back: no net patch for it
    history=[
        ([("task", 0, 1, "running", 0, 1), ("task", 0, 2, "running", 0, 1)], False, True),
        ([("task", 1, 0, "running", 0, 1)], True, True),  # a blocked reader still takes the next one
        ([("task", 0, 0, "failed", 0, 1)], True, True),
        ([("task", 0, 0, "running", 0, 1)], True, True),
    ]
)
@example(  # a canary service's tasks change, then it is promoted, then switched blue/green
    history=[
        ([("task", 0, 1, "running", 0, 2), ("service", 0, True, 0, False, "canary")], False, True),
        ([("task", 0, 2, "running", 1, 1)], True, True),
        ([("service", 0, True, 0, False, "")], False, True),
        ([("task", 0, 1, "draining", 0, 2)], True, False),
        ([("service", 0, True, 1, False, "switched"), ("task", 0, 1, "running", 0, 2)], False, True),
        ([("service", 0, True, 1, False, "rollback")], False, True),
    ]
)
@example(  # a task of a canary service changes version only: it becomes a canary
    history=[
        ([("service", 0, True, 0, False, "canary"), ("task", 0, 1, "running", 0, 1)], False, True),
        ([("task", 0, 1, "running", 0, 2)], False, True),
    ]
)
def test_deltas_give_exactly_the_whole_list_at_every_index(history: list) -> None:
    """A random history of endpoint changes (tasks coming, going, draining, failing, of either of
    two versions; services created, removed, losing their VIP, changing ports, in or out of a
    canary, a blue/green set or a rollback; a network turning internal): an agent
    that takes deltas holds, at every index it is sent, exactly what an agent sent whole lists
    holds at that index, and both hold the whole list of the current state once settled."""

    async def scenario(root: Path) -> None:
        rig = Rig(root)
        try:
            rig.commit([Put("service", _service(k)) for k in range(2)] + [Put("task", _task(0, 0, "running", 0))])
            whole = Agent(deltas=False)
            steady = Agent(deltas=True, assignments=AssignmentSet())
            lagging = Agent(deltas=True, assignments=AssignmentSet())
            patched = Agent(deltas=True, patches=True, assignments=AssignmentSet())
            patched_lagging = Agent(deltas=True, patches=True)
            runs = Agent(deltas=True, patches=True, runs=True)
            runs_lagging = Agent(deltas=True, patches=True, runs=True)
            every = (whole, steady, lagging, patched, patched_lagging, runs, runs_lagging)
            agents = [rig.open(i + 1, a) for i, a in enumerate(every)]
            await rig.settled(agents)
            versions = []  # each version's view with its backends then: still right later (ADR 72)
            for changes, lag, wait in history:
                for slow in (lagging, patched_lagging, runs_lagging):
                    if lag:
                        slow.gate.clear()
                    else:
                        slow.gate.set()
                rig.commit([_change(op) for op in changes])
                if wait:
                    await rig.settled(agents)
                    truth = rig.truth()
                    assert all(a.services == truth for a in agents if a.gate.is_set())
                    # What RoutingReports records for the version: all its backends (ADR 33).
                    backends = rig.dispatcher._endpoints.current().backends
                    assert backends == {b for e in truth for b in e.backends}
                    versions.append((backends, frozenset(backends)))
            for slow in (lagging, patched_lagging, runs_lagging):
                slow.gate.set()
            await rig.settled(agents)
            truth = rig.truth()
            for agent in agents:
                assert agent.services == truth
                assert not agent.gaps
            seen = frozenset().union(*(then for _view, then in versions))
            for view, then in versions:  # as sets, and member by member as the reconciler asks
                assert view == then and {a for a in seen if a in view} == then
            for agent in every[1:]:
                for index, held in agent.seen.items():
                    if index in whole.seen:
                        assert held == whole.seen[index], f"index {index}"
            # The old agent only ever got whole lists; the others only deltas after the first;
            # only those that announced patches got patches, and only those that take runs got
            # a service twice in one message.
            assert not any(m.services_delta for m in whole.messages)
            for agent in every[1:]:
                assert agent.messages[0].services_changed and not agent.messages[0].services_delta
                assert not any(m.services_changed for m in agent.messages[1:])
            for agent in (whole, steady, lagging):
                assert not any(e.patch for m in agent.messages for e in m.services)
            for agent in every[:-2]:
                assert all(len({e.name for e in m.services}) == len(m.services) for m in agent.messages)
        finally:
            await rig.close()

    with tempfile.TemporaryDirectory(prefix="warren-deltas-") as root:
        _run(scenario(Path(root)))


def _node(i: int, key: int, endpoint: int, subnet: bool, overlay: bool) -> Node:
    return Node(
        id=f"m{i}",
        hostname=f"m{i}",
        wg_public_key=f"key{i}-{key}",
        wg_endpoint=f"127.0.0.1:{40000 + i * 10 + endpoint}",
        overlay_subnet=f"10.230.{i}.0/24" if subnet else "",
        overlay=overlay,
    )


nodes = st.integers(0, 4)
node_ops = st.one_of(
    st.tuples(st.just("node"), nodes, st.integers(0, 2), st.integers(0, 1), st.booleans(), st.booleans()),
    st.tuples(st.just("gone"), nodes),
)
node_steps = st.lists(st.tuples(st.lists(node_ops, min_size=1, max_size=3), st.booleans(), st.booleans()), max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=node_steps)
@example(  # the lagging agent misses versions that changed different nodes, one of them leaving
    history=[
        ([("node", 0, 0, 0, True, True)], True, True),
        ([("node", 1, 0, 0, True, True)], True, True),
        ([("gone", 0)], True, True),
    ]
)
def test_mesh_deltas_give_exactly_the_whole_mesh_at_every_version(history: list) -> None:
    """Nodes joining, leaving, changing key, endpoint or subnet, turning the overlay on and off:
    an agent that takes mesh deltas holds, at every mesh version it is sent, exactly the mesh an
    agent sent whole meshes holds, and both hold the mesh of the current state once settled."""

    async def scenario(root: Path) -> None:
        rig = Rig(root)
        try:
            whole = Agent(deltas=False)
            steady = Agent(deltas=True, assignments=AssignmentSet())
            lagging = Agent(deltas=True, assignments=AssignmentSet())
            agents = [rig.open(1, whole), rig.open(2, steady), rig.open(3, lagging)]
            await rig.mesh_settled(agents)
            for changes, lag, wait in history:
                if lag:
                    lagging.gate.clear()
                else:
                    lagging.gate.set()
                rig.commit(
                    [Put("node", _node(*op[1:])) if op[0] == "node" else Delete("node", f"m{op[1]}") for op in changes]
                )
                if wait:
                    await rig.mesh_settled(agents)
                    truth = rig.mesh_truth()
                    assert all(a.mesh == truth for a in agents if a.gate.is_set())
            lagging.gate.set()
            await rig.mesh_settled(agents)
            truth = rig.mesh_truth()
            for agent in agents:
                assert agent.mesh == truth
                assert not agent.gaps
            for agent in (steady, lagging):
                for version, held in agent.mesh_seen.items():
                    if version in whole.mesh_seen:
                        assert held == whole.mesh_seen[version], f"mesh version {version}"
            assert not any(m.mesh_delta for m in whole.messages)
            for agent in (steady, lagging):
                assert agent.messages[0].mesh_changed and not agent.messages[0].mesh_delta
                assert not any(m.mesh_changed for m in agent.messages[1:])
        finally:
            await rig.close()

    with tempfile.TemporaryDirectory(prefix="warren-mesh-deltas-") as root:
        _run(scenario(Path(root)))


def test_a_join_sends_an_agent_that_takes_deltas_one_mesh_entry(tmp_path: Path) -> None:
    """With 20 nodes in the mesh, a join is one MeshNode to an agent that takes deltas, the
    whole mesh to one that does not; a mesh delta onto another version is a gap."""

    async def scenario() -> None:
        rig = Rig(tmp_path)
        try:
            rig.commit([Put("node", _node(i, 0, 0, True, True)) for i in range(20)])
            new, old = rig.open(1, Agent(deltas=True)), rig.open(2, Agent(deltas=False))
            await rig.mesh_settled([new, old])
            counts = len(new.messages), len(old.messages)
            rig.commit([Put("node", _node(25, 0, 0, True, True))])
            await rig.mesh_settled([new, old])
            delta, whole = new.messages[counts[0]], old.messages[counts[1]]
            assert delta.mesh_delta and [m.node_id for m in delta.mesh] == ["m25"]
            assert whole.mesh_changed and len(whole.mesh) == len(rig.mesh_truth()) > 20
            assert new.mesh == old.mesh == rig.mesh_truth()
            new.assignments.mesh_version += 5  # as if it had missed one
            rig.commit([Delete("node", "m25")])
            await until(lambda: new.gaps, message="the gap")
            assert "mesh delta onto version" in new.gaps[0]
        finally:
            await rig.close()

    _run(scenario())


def _count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> dict[str, int]:
    """Count the calls of `owner.name` from now on, in the returned {"calls": n}."""
    counted = {"calls": 0}
    real = getattr(owner, name)

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        counted["calls"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return counted


def test_a_delta_carries_only_the_changed_services_and_the_leader_recomputes_only_those(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 50 services, one task becoming a backend is one entry on the wire to an agent that
    takes deltas, all 50 to an agent that does not announce them (an older one), and one
    service's endpoint computed on the leader (50 before, per change)."""
    built = _count_calls(monkeypatch, convert, "endpoint_to_pb")

    async def scenario() -> None:
        rig = Rig(tmp_path)
        try:
            rig.commit([Put("service", _service(k)) for k in range(50)])
            rig.commit([Put("task", _task(k, 0, "running", 0)) for k in range(50)])
            new, old = rig.open(1, Agent(deltas=True)), rig.open(2, Agent(deltas=False))
            await rig.settled([new, old])
            sent, base = (len(new.messages), len(old.messages)), new.index
            built["calls"], rebuilds = 0, rig.dispatcher._endpoints.rebuilds
            rig.commit([Put("task", _task(7, 1, "running", 0))])
            await rig.settled([new, old])
            assert built["calls"] == 1
            assert rig.dispatcher._endpoints.rebuilds == rebuilds  # no recomputation of all
            delta = new.messages[sent[0]]
            assert delta.services_delta and [e.name for e in delta.services] == ["s7"]
            assert list(delta.services[0].backends) == ["10.224.7.2", "10.224.7.6"]
            assert delta.services_base == base and delta.services_index > base
            whole = old.messages[sent[1]]
            assert whole.services_changed and len(whole.services) == 50
            assert new.services == old.services == rig.truth()
        finally:
            await rig.close()

    _run(scenario())


def test_a_plain_service_is_recomputed_from_the_changes_without_reading_its_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADR 75: a service whose strategy routes every task alike is recomputed from what its
    changed tasks give it, not from its 300 tasks; a change that gives it nothing new (a task
    starting, then running unready) makes no version; a canary's is read from its tasks."""
    read = _count_calls(monkeypatch, strategy, "routing")

    async def scenario() -> None:
        rig = Rig(tmp_path)
        try:
            rig.commit([Put("service", _service(k)) for k in range(2)])
            rig.commit([Put("task", _task(0, j, "running", 0)) for j in range(300)])
            agent = rig.open(1, Agent(deltas=True))
            await rig.settled([agent])
            log = rig.dispatcher._endpoints
            read["calls"], rebuilds, at = 0, log.rebuilds, log.current().at
            # One record per task, never walked by a garbage collection (ADR 55).
            assert len(log._counted) == 300 and not any(map(gc.is_tracked, log._counted.values()))
            rig.commit([Put("task", _task(1, 0, "starting", 0))])  # a member, not yet a backend
            await rig.settled([agent])
            assert log.current().at > at and read["calls"] == 0
            at = log.current().at
            rig.commit([Put("task", _task(1, 0, "unhealthy", 0))])  # running, but not ready
            rig.commit([Put("task", _task(0, 7, "running", 0))])  # as it was
            await rig.settled([agent])
            assert log.current().at == at, "a version that changed nothing"
            rig.commit([Put("task", _task(0, 7, "draining", 0))])
            await rig.settled([agent])
            assert log.current().at > at and read["calls"] == 0 and log.rebuilds == rebuilds
            assert agent.services == rig.truth()
            read["calls"] = 0
            rig.commit([Put("service", _service(0, rollout="canary")), Put("task", _task(0, 8, "running", 0, 2))])
            await rig.settled([agent])
            assert read["calls"] == 1  # the canary's service: its tasks read
            assert agent.services == rig.truth()
        finally:
            await rig.close()

    _run(scenario())


def test_a_task_is_not_sent_back_to_its_node_for_a_status_the_node_reported(tmp_path: Path) -> None:
    """SwarmKit's rule (#15): a task the node holds is sent again when the managers change it
    (here: its desired state), not when the only change is the status its agent reported
    (preparing, starting, running, healthy). Up to ASSIGNED the state is the managers' own."""

    async def scenario() -> None:
        rig = Rig(tmp_path)
        try:
            rig.commit([Put("service", _service(0))])
            agent = rig.open(1, Agent(deltas=True))
            await rig.settled([agent])
            task = msgspec.structs.replace(_task(0, 0, "starting", 0), node_id="node001", state=TaskState.PENDING)

            def sent() -> list[tuple[str, str]]:
                return [(t.state, t.desired_state) for m in agent.messages for t in m.updated if t.id == task.id]

            for state in (TaskState.PENDING, TaskState.ASSIGNED):
                task = msgspec.structs.replace(task, state=state)
                rig.commit([Put("task", task)])
                await until(lambda s=state: sent()[-1:] == [(s.label, "running")], message=f"{state.label} sent")
            for state, fields in (
                (TaskState.PREPARING, {"message": "preparing"}),
                (TaskState.STARTING, {"message": "starting", "runtime_id": "c1"}),
                (TaskState.RUNNING, {"message": "started", "started_at": 5.0, "ready_at": 5.0, "health": "healthy"}),
            ):
                task = msgspec.structs.replace(task, state=state, updated_at=5.0, **fields)
                rig.commit([Put("task", task)])
                await rig.settled([agent])  # its endpoint changed meanwhile: messages went out
            rig.commit([Put("task", msgspec.structs.replace(task, desired_state=TaskState.SHUTDOWN))])
            await until(lambda: sent()[-1:] == [("running", "shutdown")], message="the desired state sent")
            assert sent() == [("pending", "running"), ("assigned", "running"), ("running", "shutdown")], sent()
            assert agent.services == rig.truth()  # it became a backend all the same
        finally:
            await rig.close()

    _run(scenario())


def test_versions_a_node_has_not_confirmed_cost_what_they_changed_not_what_they_hold(tmp_path: Path) -> None:
    """ADR 72: a node that has not confirmed holds (in RoutingReports) every version sent since.
    With 2,000 backends, 40 versions each adding one cost the leader's manager code a few KiB
    each, not a set of 2,000 addresses each (72 KiB; at S2's 100,000 backends, 4 MiB a version)."""

    async def scenario() -> None:
        rig = Rig(tmp_path)
        try:
            rig.commit([Put("service", _service(k)) for k in range(40)])
            rig.commit([Put("task", _task(k, j, "running", 0)) for k in range(40) for j in range(50)])
            agent = rig.open(1, Agent(deltas=True))  # it never heartbeats: it confirms nothing
            await rig.settled([agent])
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
            for k in range(40):
                rig.commit([Put("task", _task(k, 50, "running", 0))])
                await rig.settled([agent])
            grown = tracemalloc.take_snapshot().compare_to(before, "filename")
            tracemalloc.stop()
            sent = rig.dispatcher._heartbeats.routes._sent["node001"]
            assert len(sent) == 41 and all("10.224.0.2" in backends for backends in sent.values())
            manager = sum(d.size_diff for d in grown if "/warren/manager/" in d.traceback[0].filename)
            # Whole sets: 72 KiB a version (2.9 MB measured). Now ~1 KiB a version for the routing;
            # endpoint patches (ADR 65) keep a few KiB more per version in their bounded log.
            assert manager < 40 * 16 * 1024, f"{manager} bytes for 40 versions"
        finally:
            await rig.close()

    _run(scenario())


def test_a_session_far_behind_gets_the_whole_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its base is no longer in the leader's bounded log of changes: a whole list, not a delta."""
    monkeypatch.setattr(changelog, "HISTORY", 2)

    async def scenario() -> None:
        rig = Rig(tmp_path)
        try:
            rig.commit([Put("service", _service(k)) for k in range(4)])
            steady, lagging = rig.open(1, Agent(deltas=True)), rig.open(2, Agent(deltas=True))
            await rig.settled([steady, lagging])
            lagging.gate.clear()
            for k in range(4):  # four versions: it reads the first, then stops reading
                rig.commit([Put("task", _task(k, 0, "running", 0))])
                await rig.settled([steady])
            count = len(lagging.messages)
            lagging.gate.set()
            await rig.settled([steady, lagging])
            caught_up = lagging.messages[count]  # what it gets next: the whole list
            assert caught_up.services_changed and not caught_up.services_delta
            assert lagging.services == steady.services == rig.truth()
            assert any(m.services_delta for m in steady.messages)
        finally:
            await rig.close()

    _run(scenario())


def test_a_delta_onto_another_index_is_a_gap_and_a_new_session_brings_the_whole_list(tmp_path: Path) -> None:
    """The agent applies a delta only onto exactly the index it holds; otherwise it reopens its
    session, whose COMPLETE message carries the whole list again."""
    held = AssignmentSet()
    held.apply(
        dpb.AssignmentsMessage(
            type=dpb.AssignmentsMessage.COMPLETE,
            version=1,
            services=[dpb.ServiceEndpoint(name="a", vip="10.201.0.2", backends=["10.224.0.2"])],
            services_changed=True,
            services_index=10,
        )
    )
    wrong = dpb.AssignmentsMessage()
    wrong.ParseFromString(
        dpb.AssignmentsMessage(type=dpb.AssignmentsMessage.INCREMENTAL, applies_to=1, version=2).SerializeToString()
        + encode_endpoint_delta([dpb.ServiceEndpoint(name="b", vip="10.201.0.3")], ["a"], 9, 12)
    )
    with pytest.raises(VersionGap, match="delta onto index 9, we hold 10"):
        held.apply(wrong)
    assert held.version == 1 and list(held.endpoints) == ["a"]  # nothing applied

    async def scenario() -> None:
        rig = Rig(tmp_path)
        try:
            rig.commit([Put("service", _service(k)) for k in range(3)])
            agent = rig.open(1, Agent(deltas=True))
            await rig.settled([agent])
            agent.assignments.endpoints_index -= 1  # as if it had missed a delta
            rig.commit([Put("task", _task(1, 0, "running", 0))])
            await until(lambda: agent.gaps, message="the gap")
            assert agent.messages[-1].services_delta
            assert agent.services != rig.truth()  # the delta was not applied
            rig.open(1, agent)  # what the agent's session does on a gap: reopen
            await rig.settled([agent])
            assert agent.messages[-1].services_changed and not agent.messages[-1].services_delta
            assert agent.services == rig.truth()
        finally:
            await rig.close()

    _run(scenario())


def test_a_backend_leaving_travels_as_a_patch_of_that_address_only() -> None:
    """At S2's size a service has 1,000 backends: a delta of one task's change carries the
    address that changed, not the service's whole lists, to an agent that takes patches."""

    async def scenario(root: Path) -> None:
        rig = Rig(root)
        try:
            rig.commit([Put("service", _service(0))] + [Put("task", _task(0, j, "running", 0)) for j in range(TASKS)])
            agent = rig.open(1, Agent(deltas=True, patches=True))
            await rig.settled([agent])
            gone = _task(0, 1, "failed", 0)
            rig.commit([Put("task", gone)])
            await rig.settled([agent])
            [entry] = [e for m in agent.messages[1:] for e in m.services]
            assert entry.patch and not entry.backends and not entry.members
            assert (list(entry.backends_removed), list(entry.members_removed)) == ([gone.overlay_address],) * 2
            assert not entry.backends_added and not entry.members_added
            assert agent.services == rig.truth() and len(agent.services[0].backends) == TASKS - 1
        finally:
            await rig.close()

    with tempfile.TemporaryDirectory(prefix="warren-deltas-") as root:
        _run(scenario(Path(root)))


@pytest.mark.parametrize("bounded", [False, True])
def test_a_session_behind_by_several_versions_gets_each_version_s_own_patch_in_order(
    bounded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADR 78: an agent that takes runs, two versions behind, gets one message naming the
    service once per version (each version's encoding, shared), and holds the truth after it;
    one that takes patches only gets the service once, its patch composed for its base. A run
    longer than MAX_RUN_BYTES goes composed."""
    if bounded:
        monkeypatch.setattr(endpointlog, "MAX_RUN_BYTES", 1)

    async def scenario(root: Path) -> None:
        rig = Rig(root)
        try:
            rig.commit([Put("service", _service(0)), Put("task", _task(0, 0, "running", 0))])
            runs = rig.open(1, Agent(deltas=True, patches=True, runs=True))
            composed = rig.open(2, Agent(deltas=True, patches=True))
            await rig.settled([runs, composed])
            runs.gate.clear()  # each reads the next message, then stops reading
            composed.gate.clear()
            before = (len(runs.messages), len(composed.messages))
            rig.commit([Put("task", _task(0, 1, "running", 0))])
            await until(
                lambda: (len(runs.messages), len(composed.messages)) == (before[0] + 1, before[1] + 1),
                timeout=5,
                message="each reader to take the message of the commit, and stop",
            )
            sent = (len(runs.messages), len(composed.messages))
            added = []
            for j in (2, 3):  # two versions, a task more each, while neither reads
                task = _task(0, j, "running", 0)
                rig.commit([Put("task", task)])
                added.append([task.overlay_address])
                log = rig.dispatcher._endpoints
                await until(  # a version of its own
                    lambda log=log: log.current().at == rig.store.applied_index, timeout=5, message="its version"
                )
            runs.gate.set()
            composed.gate.set()
            await rig.settled([runs, composed])
            [run] = runs.messages[sent[0] :]
            if bounded:
                assert [e.name for e in run.services] == ["s0"] and run.services[0].patch
                assert sorted(run.services[0].backends_added) == sorted(a for [a] in added)
            else:
                assert [e.name for e in run.services] == ["s0", "s0"] and all(e.patch for e in run.services)
                assert [list(e.backends_added) for e in run.services] == added
            [once] = composed.messages[sent[1] :]
            assert [e.name for e in once.services] == ["s0"]
            assert sorted(once.services[0].backends_added) == sorted(a for [a] in added)
            assert runs.services == composed.services == rig.truth()
            assert len(runs.services[0].backends) == 4 and not runs.gaps
        finally:
            await rig.close()

    with tempfile.TemporaryDirectory(prefix="warren-deltas-") as root:
        _run(scenario(Path(root)))


def test_a_patch_onto_lists_it_was_not_made_for_resynchronises() -> None:
    def holding_web() -> AssignmentSet:
        held = AssignmentSet()
        web = dpb.ServiceEndpoint(name="web", vip="10.201.0.2", backends=["10.224.0.2"])
        complete = dpb.AssignmentsMessage(
            type=dpb.AssignmentsMessage.COMPLETE, version=1, services_changed=True, services_index=5, services=[web]
        )
        held.apply(complete)
        return held

    def delta(patch: dpb.ServiceEndpoint) -> dpb.AssignmentsMessage:
        return dpb.AssignmentsMessage(
            type=dpb.AssignmentsMessage.INCREMENTAL, applies_to=1, version=2, services_delta=True,
            services_base=5, services_index=6, services=[patch],
        )  # fmt: skip

    fits = holding_web().apply(delta(dpb.ServiceEndpoint(name="web", patch=True, backends_added=["10.224.0.3"])))
    assert fits.services is not None and fits.services[0].backends == ("10.224.0.2", "10.224.0.3")
    for patch in (
        dpb.ServiceEndpoint(name="web", patch=True, backends_removed=["10.224.0.9"]),  # not held
        dpb.ServiceEndpoint(name="web", patch=True, backends_added=["10.224.0.2"]),  # already held
        dpb.ServiceEndpoint(name="api", patch=True, backends_added=["10.224.0.3"]),  # no entry to patch
    ):
        with pytest.raises(VersionGap, match="patch"):
            holding_web().apply(delta(patch))


def test_a_run_patches_each_entry_as_the_run_left_it_and_one_that_does_not_fit_changes_nothing() -> None:
    """ADR 78: the agent applies a delta's entries in order; a patch that does not fit the entry
    as the run left it resynchronises, with nothing held changed."""

    def holding_web() -> AssignmentSet:
        held = AssignmentSet()
        web = dpb.ServiceEndpoint(name="web", vip="10.201.0.2", backends=["10.224.0.2"])
        held.apply(
            dpb.AssignmentsMessage(
                type=dpb.AssignmentsMessage.COMPLETE, version=1, services_changed=True, services_index=5, services=[web]
            )
        )
        return held

    def run(*entries: dpb.ServiceEndpoint) -> dpb.AssignmentsMessage:
        parts = [dpb.AssignmentsMessage(services=[entry]).SerializeToString() for entry in entries]
        header = encode_endpoint_delta([], [], 5, 8)
        return dpb.AssignmentsMessage.FromString(
            dpb.AssignmentsMessage(type=dpb.AssignmentsMessage.INCREMENTAL, applies_to=1, version=2).SerializeToString()
            + b"".join(parts)
            + header
        )

    held = holding_web()
    taken = held.apply(
        run(
            dpb.ServiceEndpoint(name="web", vip="10.201.0.2", patch=True, backends_added=["10.224.0.3"]),
            dpb.ServiceEndpoint(name="api", vip="10.201.0.3", backends=["10.224.1.2"]),
            dpb.ServiceEndpoint(
                name="web", vip="10.201.0.2", patch=True, backends_added=["10.224.0.4"], backends_removed=["10.224.0.2"]
            ),
            dpb.ServiceEndpoint(name="api", vip="10.201.0.3", patch=True, backends_added=["10.224.1.3"]),
        )
    )
    assert taken.services is not None and taken.services_index == 8
    assert {e.name: e.backends for e in taken.services} == {
        "api": ("10.224.1.2", "10.224.1.3"),
        "web": ("10.224.0.3", "10.224.0.4"),
    }
    held = holding_web()
    before = (held.endpoints.ordered(), held.endpoints_index)
    with pytest.raises(VersionGap, match="patch"):
        held.apply(  # the second adds again what the first added
            run(
                dpb.ServiceEndpoint(name="web", patch=True, backends_added=["10.224.0.3"]),
                dpb.ServiceEndpoint(name="web", patch=True, backends_added=["10.224.0.3"]),
            )
        )
    assert (held.endpoints.ordered(), held.endpoints_index) == before


class _LiveState:
    """A store whose state has applied commits its hub has not delivered yet, as the leader's
    does between an apply on the Raft thread and the event loop's turn."""

    def __init__(self) -> None:
        self.state = ClusterState()
        self.applied_index = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[ClusterState]:
        yield self.state


def _entries(state: ClusterState) -> dict[str, tuple]:
    computed = (endpoints.computed(state, s) for s in state.services.values() if s.vip)
    return {c.name: (c.backends, c.members, c.head) for c in computed}


@settings(max_examples=60, deadline=None)
@example(  # a canary ends (plain again) in the commit that takes a task's address, not yet
    # delivered when the commit before it, which touched the service, is taken in
    commits=[
        (
            [
                ("service", 1, True, 0, False, "canary"),
                ("task", 1, 0, "running", 0, 1),
                ("task", 1, 1, "running", 1, 2),
            ],
            1,
        ),
        ([("task", 1, 2, "running", 0, 1)], 0),
        ([("service", 1, True, 0, False, ""), ("task", 1, 0, "no address", 0, 1)], 1),
    ]
)
@given(
    commits=st.lists(
        st.tuples(st.lists(ops.filter(lambda op: op[0] != "network"), min_size=1, max_size=3), st.integers(0, 3)),
        max_size=25,
    )
)
def test_each_service_is_held_as_it_was_at_one_committed_index(commits: list) -> None:
    """The live state may be commits ahead of the events delivered (ADR 75): every service's
    entry the log holds is that service's entry at one index from the last delivered to the
    last applied, never a mix of two (its tasks' addresses of one, its strategy of another)."""

    async def scenario() -> None:
        store = _LiveState()
        hub = EventHub(asyncio.get_running_loop())
        log = endpointlog.EndpointLog(store, hub)  # type: ignore[arg-type]
        log.open()
        history = {0: _entries(store.state)}
        undelivered: list = []
        delivered = 0
        for changes, deliver in commits:
            batch = [_change(op) for op in changes]
            store.state.apply(batch)
            store.applied_index += 1
            history[store.applied_index] = _entries(store.state)
            undelivered.append((store.applied_index, batch))
            for event in undelivered[:deliver]:
                hub._deliver(event)
                delivered = event[0]
            del undelivered[:deliver]
            log.current()
            held = {n: (c.backends, c.members, c.head) for n, c in log._by_name.items()}
            span = range(delivered, store.applied_index + 1)
            for name in set(held).union(*(history[i] for i in span)):
                assert any(held.get(name) == history[i].get(name) for i in span), (name, delivered, store.applied_index)
        log.close()

    asyncio.run(scenario())
