"""The manager's services together on the in-memory ports (ADR 28), without processes: the control
API creates a service, the orchestrator schedules it, and the node's dispatcher session carries
its tasks to the agent's AssignmentSet; version conflicts on `service update`, scheduling only
while leading, demotion and the joining of a manager. The integration tests run the same
services over gRPC on real Raft; these pin their logic where a failure names the step."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncGenerator, Callable, Coroutine
from typing import Any, TypeVar

import grpc
import pytest

from warren import commands, pki
from warren.agent.assignments import AssignmentSet
from warren.agent.status import Report
from warren.api.convert import report_to_pb
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import managers_pb2 as mpb
from warren.api.v1 import types_pb2 as pb
from warren.manager import cakey
from warren.manager.controlapi import ControlService
from warren.manager.dispatcher import DispatcherService
from warren.manager.dispatchwire import Assignments
from warren.manager.events import EventHub
from warren.manager.hearing import Heartbeats
from warren.manager.inmemory import InMemoryRaft, InMemoryState
from warren.manager.membership import ManagersService
from warren.manager.orchestrator import Orchestrator
from warren.manager.ports import ProposalError
from warren.manager.server import ApiError, caller
from warren.model import Availability, ClusterInfo, Node, NodeRole, NodeStatus, TaskState
from warren.pki import Identity

SECRET = "raft-secret"
SELF_RAFT = "127.0.0.1:4243"
CA = pki.CertificateAuthority.create("c1")
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


def as_caller(node_id: str, role: str = "worker") -> None:
    caller.set(Identity(node_id, role, "c1", dt.datetime(2100, 1, 1, tzinfo=dt.UTC), 1))


class Manager:
    """One manager's services on one in-memory state, wired as the daemon wires them."""

    def __init__(self, peers: dict[str, bool] | None = None) -> None:
        self.store = InMemoryState()
        self.raft = InMemoryRaft(self.store, SELF_RAFT, peers=peers)
        self.hub = EventHub(asyncio.get_running_loop())
        self.store.watch(self.hub.publish)
        heartbeats = Heartbeats()
        self.control = ControlService(self.store, self.raft, raft_secret=SECRET)
        self.dispatcher = DispatcherService(self.store, self.raft, self.hub, heartbeats)
        self.orchestrator = Orchestrator(self.store, self.raft, self.hub, heartbeats, "m1")
        self.managers = ManagersService(self.store, self.raft, SECRET, "m1")

    async def init(self) -> None:
        """`cluster init --manager-only`: the first manager, drained, so tasks go to workers."""
        cluster = ClusterInfo(
            id="c1",
            created_at=1.0,
            ca_cert_pem=CA.cert_pem.decode(),
            ca_key_pem=cakey.wrap(CA.key_pem, SECRET),
            worker_token_secret="w" * 26,
            manager_token_secret="m" * 26,
        )
        manager = Node(
            id="m1",
            hostname="m1",
            role=NodeRole.MANAGER,
            availability=Availability.DRAIN,
            status=NodeStatus.READY,
            addr="127.0.0.1:4242",
            raft_addr=SELF_RAFT,
        )
        assert (await self.raft.propose_async(commands.InitCluster(cluster, manager))).ok

    def node(self, node_id: str) -> Node:
        with self.store.read() as state:
            return state.nodes[node_id]


class Agent:
    """A worker's session as its agent reads it: every message applied to an AssignmentSet."""

    def __init__(self, manager: Manager, node_id: str) -> None:
        as_caller(node_id)
        self.node_id = node_id
        self.stream: AsyncGenerator[Assignments, None] = manager.dispatcher.Session(
            dpb.SessionRequest(description=dpb.NodeDescription(hostname=node_id), specs_by_reference=True), None
        )
        self.assignments = AssignmentSet()

    async def until(self, done: Callable[[AssignmentSet], bool]) -> AssignmentSet:
        """Apply messages until `done` holds of the set (the test's timeout bounds the wait)."""
        while self.assignments.version is None or not done(self.assignments):
            self.assignments.apply((await anext(self.stream)).decoded())
        return self.assignments

    def running(self) -> dict[str, TaskState]:
        return {t.id: t.desired_state for t in self.assignments.tasks.values()}


def web(replicas: int = 2, **fields: Any) -> pb.ServiceSpec:
    return pb.ServiceSpec(name="web", image="busybox", replicas=replicas, **fields)


def test_a_created_service_is_scheduled_and_its_tasks_reach_the_node_session() -> None:
    async def scenario() -> None:
        manager = Manager()
        await manager.init()
        agent = Agent(manager, "w1")
        try:
            await agent.until(lambda tasks: True)  # the COMPLETE set: nothing yet
            assert agent.assignments.tasks == {}
            created = await manager.control.CreateService(cpb.CreateServiceRequest(spec=web(2)), None)
            assert (created.spec.name, created.desired_tasks, created.running_tasks) == ("web", 2, 0)

            await manager.orchestrator.pass_once()
            held = await agent.until(lambda a: len(a.tasks) == 2)
            assert sorted(t.slot for t in held.tasks.values()) == [1, 2]
            assert {(t.node_id, t.state, t.desired_state) for t in held.tasks.values()} == {
                ("w1", TaskState.ASSIGNED, TaskState.RUNNING)
            }

            # The agent reports them running: the service says so.
            now = 1.8e9
            reports = [report_to_pb(Report(task_id, TaskState.RUNNING, now)) for task_id in held.tasks]
            await manager.dispatcher.UpdateTaskStatus(
                dpb.UpdateTaskStatusRequest(session_id=held.session_id, updates=reports), None
            )
            service = await manager.control.GetService(cpb.GetServiceRequest(service="web"), None)
            assert (service.desired_tasks, service.running_tasks) == (2, 2)

            # Scaled down: the next pass tells the agent to stop one of them.
            await manager.control.ScaleService(cpb.ScaleServiceRequest(service="web", replicas=1), None)
            await manager.orchestrator.pass_once()
            await agent.until(lambda a: TaskState.SHUTDOWN in {t.desired_state for t in a.tasks.values()})
            assert sorted(agent.running().values()) == [TaskState.RUNNING, TaskState.SHUTDOWN]
        finally:
            await agent.stream.aclose()

    run(scenario())


def test_update_service_refuses_a_stale_version_a_rename_and_a_mode_change() -> None:
    async def scenario() -> None:
        manager = Manager()
        await manager.init()
        created = await manager.control.CreateService(cpb.CreateServiceRequest(spec=web(2)), None)
        updated = await manager.control.UpdateService(
            cpb.UpdateServiceRequest(service="web", spec=web(2, env={"A": "1"}), version=created.version), None
        )
        assert updated.version == created.version + 1 and updated.previous_spec.env == {}

        # Based on the version before that update: someone else changed it meanwhile.
        with pytest.raises(ApiError) as err:
            await manager.control.UpdateService(
                cpb.UpdateServiceRequest(service="web", spec=web(3), version=created.version), None
            )
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.message == "service web changed since version 1 (version 2: env +A); check and retry"
        with pytest.raises(ApiError) as err:
            await manager.control.UpdateService(
                cpb.UpdateServiceRequest(service="web", spec=pb.ServiceSpec(name="api", image="busybox")), None
            )
        assert (err.value.code, err.value.message) == (grpc.StatusCode.INVALID_ARGUMENT, "a service cannot be renamed")
        with pytest.raises(ApiError) as err:
            await manager.control.UpdateService(
                cpb.UpdateServiceRequest(service="web", spec=web(0, mode="global")), None
            )
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "mode cannot change" in err.value.message

        # None of the refused updates reached the state; version 0 means "don't check".
        service = await manager.control.GetService(cpb.GetServiceRequest(service="web"), None)
        assert (service.version, service.spec.replicas, dict(service.spec.env)) == (updated.version, 2, {"A": "1"})
        latest = await manager.control.UpdateService(cpb.UpdateServiceRequest(service="web", spec=web(3)), None)
        assert (latest.version, latest.spec.replicas) == (updated.version + 1, 3)

    run(scenario())


def test_a_rollback_that_cannot_be_is_refused_before_raft() -> None:
    """No earlier version, a version not kept, a stale one: refused with the handler's own
    message and no Raft entry (the fuzzer counted these committed refusals)."""

    async def scenario() -> None:
        manager = Manager()
        await manager.init()
        await manager.control.CreateService(cpb.CreateServiceRequest(spec=web(2)), None)
        cases = [
            (cpb.RollbackServiceRequest(service="web"), grpc.StatusCode.INVALID_ARGUMENT, "no earlier version"),
            (cpb.RollbackServiceRequest(service="web", to_version=9), grpc.StatusCode.INVALID_ARGUMENT, "no version 9"),
            (
                cpb.RollbackServiceRequest(service="web", version=5),
                grpc.StatusCode.FAILED_PRECONDITION,
                "changed since",
            ),
        ]
        for request, code, needle in cases:
            before = manager.store.applied_index
            with pytest.raises(ApiError) as err:
                await manager.control.RollbackService(request, None)
            assert err.value.code == code and needle in err.value.message
            assert manager.store.applied_index == before
        updated = await manager.control.UpdateService(
            cpb.UpdateServiceRequest(service="web", spec=web(2, env={"A": "1"})), None
        )
        back = await manager.control.RollbackService(cpb.RollbackServiceRequest(service="web"), None)
        assert back.version == updated.version + 1 and dict(back.spec.env) == {}
        assert back.update_status.state == "rollback_started"

    run(scenario())


def test_the_orchestrator_schedules_only_while_this_manager_leads() -> None:
    async def scenario() -> None:
        other = "127.0.0.2:4243"
        manager = Manager(peers={other: True})
        await manager.init()
        agent = Agent(manager, "w1")
        try:
            await agent.until(lambda tasks: True)
            await manager.control.CreateService(cpb.CreateServiceRequest(spec=web(1)), None)
            manager.raft.leader = other
            proposed = len(manager.raft.proposed)
            await manager.orchestrator.pass_once()
            assert len(manager.raft.proposed) == proposed  # a follower proposes nothing
            with manager.store.read() as state:
                assert not state.tasks

            manager.raft.leader = SELF_RAFT  # elected: the next pass schedules
            await manager.orchestrator.pass_once()
            assert isinstance(manager.raft.proposed[-1], commands.ApplyPlan)
            with manager.store.read() as state:
                assert [t.node_id for t in state.tasks.values()] == ["w1"]
        finally:
            await agent.stream.aclose()

    run(scenario())


def test_demoting_a_manager_removes_it_from_raft_and_the_last_manager_stays() -> None:
    async def scenario() -> None:
        m2_raft = "127.0.0.2:4243"
        manager = Manager(peers={m2_raft: True})
        await manager.init()
        m2 = Node(id="m2", hostname="m2", role=NodeRole.MANAGER, status=NodeStatus.READY, raft_addr=m2_raft)
        assert (await manager.raft.propose_async(commands.RegisterNode(m2))).ok

        demoted = await manager.control.UpdateNode(cpb.UpdateNodeRequest(node="m2", role="worker"), None)
        assert demoted.role == "worker"
        assert manager.node("m2").role == NodeRole.WORKER
        assert manager.raft.status().members == [SELF_RAFT]  # its role first, then out of Raft

        with pytest.raises(ApiError) as err:
            await manager.control.UpdateNode(cpb.UpdateNodeRequest(node="m1", role="worker"), None)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "last manager" in err.value.message
        assert manager.node("m1").role == NodeRole.MANAGER

    run(scenario())


def test_a_joining_manager_is_registered_and_added_to_raft_by_the_leader_only() -> None:
    async def scenario() -> None:
        manager = Manager()
        await manager.init()
        request = mpb.AddManagerRequest(
            raft_addr="127.0.0.3:4243", api_addr="127.0.0.3:4242", hostname="m3", runs_tasks=True
        )
        as_caller("m3", "manager")
        answer = await manager.managers.AddManager(request, None)
        assert (answer.cluster_id, answer.raft_secret, list(answer.raft_peers)) == ("c1", SECRET, [SELF_RAFT])
        assert sorted(answer.managers) == ["127.0.0.1:4242", "127.0.0.3:4242"]
        assert manager.node("m3").role == NodeRole.MANAGER
        assert manager.raft.status().members == [SELF_RAFT, "127.0.0.3:4243"]

        # A follower names the leader's API address instead.
        manager.raft.leader = "127.0.0.3:4243"
        with pytest.raises(ApiError) as err:
            await manager.managers.AddManager(request, None)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and "127.0.0.3:4242" in err.value.message

    run(scenario())


def test_a_follower_refuses_sessions_naming_the_leader_and_without_quorum_writes_fail() -> None:
    async def scenario() -> None:
        m2_raft = "127.0.0.2:4243"
        manager = Manager(peers={m2_raft: True})
        await manager.init()
        m2 = Node(id="m2", hostname="m2", role=NodeRole.MANAGER, addr="127.0.0.2:4242", raft_addr=m2_raft)
        assert (await manager.raft.propose_async(commands.RegisterNode(m2))).ok
        manager.raft.leader = m2_raft
        agent = Agent(manager, "w1")
        with pytest.raises(ApiError) as err:
            await agent.until(lambda tasks: True)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and "127.0.0.2:4242" in err.value.message

        # The only other manager is unreachable: no quorum, so a write fails before it is proposed.
        manager.raft.peers[m2_raft] = False
        with pytest.raises(ProposalError) as refused:
            await manager.control.CreateService(cpb.CreateServiceRequest(spec=web(1)), None)
        assert refused.value.code == "unavailable" and "no quorum" in refused.value.message
        with manager.store.read() as state:
            assert not state.services

    run(scenario())
