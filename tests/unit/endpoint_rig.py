"""The rig of the endpoint and mesh delta tests (#15, ADR 65): a real Store (LMDB) with the
in-memory Raft and a DispatcherService, each agent's session read into the agent's own
AssignmentSet; the services and tasks a random history commits; and a live state ahead of the
events delivered, as the leader's is between an apply and the event loop's turn."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st

from tests.unit.dispatcher_cluster import description
from tests.waiting import async_wait_for as until
from warren.agent.assignments import AssignmentSet, MeshMember, VersionGap
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager import endpoints
from warren.manager.dispatcher import DispatcherService
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


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 120))


class _LiveState:
    """A store whose state has applied commits its hub has not delivered yet, as the leader's
    does between an apply on the Raft thread and the event loop's turn."""

    def __init__(self) -> None:
        self.state = ClusterState()
        self.applied_index = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[ClusterState]:
        yield self.state
