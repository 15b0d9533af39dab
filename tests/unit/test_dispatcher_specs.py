"""The dispatcher's side of ADR 21, on a real Store (LMDB) with the in-memory Raft, which applies each
command at once: each spec version travels once per session, an assignments message larger
than the agent accepts marks the node not ready instead of being sent, `service rm` unwedges
such a node, and an agent that says its sessions keep failing is not ready until a heartbeat
shows a session working. The agent's AssignmentSet reads every message, as the agent does."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.waiting import async_wait_for as until
from warren import carotation, commands, nodereports
from warren.agent.assignments import AssignmentSet
from warren.agent.status import Report
from warren.api.convert import report_to_pb
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager.dispatcher import DispatcherService
from warren.manager.events import EventHub
from warren.manager.hearing import Heartbeats
from warren.manager.inmemory import InMemoryRaft
from warren.manager.server import ApiError, caller
from warren.manager.sessionpace import (
    RECONNECTS_PER_SECOND,
    SESSION_MESSAGES_PER_SECOND,
    reconnect_spread,
    session_pace,
)
from warren.manager.store import Store, open_environment
from warren.model import Node, NodeStatus, Service, ServiceSpec, Task, TaskState
from warren.pki import Identity
from warren.state import Delete, Put

NODE = "worker1"
COMPLETE = dpb.AssignmentsMessage.COMPLETE


class Cluster:
    def __init__(self, tmp_path: Path, max_message: int | None = None) -> None:
        self.store = Store(open_environment(tmp_path / "db"))
        self.hub = EventHub(asyncio.get_running_loop())
        self.store.watch(self.hub.publish)
        self.raft = InMemoryRaft(self.store)
        extra = {} if max_message is None else {"max_message": max_message}
        self.dispatcher = DispatcherService(self.store, self.raft, self.hub, Heartbeats(), **extra)
        caller.set(Identity(NODE, "worker", "c1", dt.datetime(2100, 1, 1, tzinfo=dt.UTC), 1))

    def put(self, *objs: object) -> None:
        changes = [Put("service" if isinstance(o, Service) else "task", o) for o in objs]  # type: ignore[arg-type]
        self.store.commit(self.store.applied_index + 1, changes)

    def node(self) -> Node:
        with self.store.read() as state:
            return state.nodes[NODE]

    def close(self) -> None:
        self.store.env.close()


def spec(env_bytes: int = 0, name: str = "web") -> ServiceSpec:
    return ServiceSpec(name=name, image="busybox", env={"BIG": "x" * env_bytes} if env_bytes else {})


def task(task_id: str, service: Service, desired: TaskState = TaskState.RUNNING) -> Task:
    return Task(
        id=task_id,
        service_id=service.id,
        service_name=service.spec.name,
        slot=1,
        spec=service.spec,
        spec_version=service.version,
        desired_state=desired,
        state=TaskState.ASSIGNED,
        node_id=NODE,
    )


def request(failed: int = 0, why: str = "") -> dpb.SessionRequest:
    return dpb.SessionRequest(
        description=dpb.NodeDescription(hostname="w1"),
        specs_by_reference=True,
        failed_sessions=failed,
        last_failure=why,
    )


async def next_message(stream, timeout: float = 5.0) -> dpb.AssignmentsMessage:  # type: ignore[no-untyped-def]
    # The message as the agent reads it: the session's own fields and the shared endpoints (ADR 57).
    return (await asyncio.wait_for(stream.__anext__(), timeout)).decoded()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_each_spec_version_travels_once_per_session(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = Cluster(tmp_path)
        web = Service(id="svc-web", spec=spec(100_000), version=1)
        old = Service(id="svc-old", spec=spec(100_000, "old"), version=1)
        cluster.put(web, old, *(task(f"t{i:02}", web) for i in range(20)), task("gone", old, TaskState.SHUTDOWN))
        stream = cluster.dispatcher.Session(request(), None)
        agent = AssignmentSet()
        try:
            first = await next_message(stream)
            assert first.type == COMPLETE
            # 21 tasks, one spec: the task desired to stop needs none, the 20 others share one.
            assert len(first.updated) == 21
            assert [(s.service_id, s.spec_version) for s in first.specs] == [("svc-web", 1)]
            assert not any(t.HasField("spec") for t in first.updated)
            assert first.ByteSize() < 150_000  # per task, it would be over 2 MB
            delta = agent.apply(first)
            assert not delta.invalid
            assert all(t.spec == web.spec for t in delta.updated if t.service_id == "svc-web")

            # Another task of the same version: no spec again. A new version brings its spec.
            cluster.put(task("t20", web))
            message = await next_message(stream)
            assert [t.id for t in message.updated] == ["t20"] and not message.specs
            assert agent.apply(message).updated[0].spec == web.spec
            web2 = Service(id="svc-web", spec=spec(100_001), version=2)
            cluster.put(web2, task("v2", web2))
            message = await next_message(stream)
            assert [(s.service_id, s.spec_version) for s in message.specs] == [("svc-web", 2)]
            assert agent.apply(message).updated[0].spec == web2.spec

            # Once no task refers to version 1, both sides forget it: a later task brings it again.
            cluster.store.commit(
                cluster.store.applied_index + 1,
                [Put("task", task(f"t{i:02}", web, TaskState.SHUTDOWN)) for i in range(21)],
            )
            message = await next_message(stream)
            assert not message.specs
            agent.apply(message)
            with cluster.store.read() as state:
                deletes = [Delete("task", t) for t in state.tasks if t.startswith("t")]
            cluster.store.commit(cluster.store.applied_index + 1, deletes)
            message = await next_message(stream)
            assert len(message.removed) == 21
            agent.apply(message)
            assert ("svc-web", 1) not in agent.specs
            cluster.put(task("again", web))
            message = await next_message(stream)
            assert [(s.service_id, s.spec_version) for s in message.specs] == [("svc-web", 1)]
            assert agent.apply(message).updated[0].spec == web.spec
        finally:
            await stream.aclose()
            cluster.close()

    run(scenario())


def test_an_agent_without_spec_references_gets_full_specs(tmp_path: Path) -> None:
    """An older agent (no specs_by_reference) reads Task.spec: it still gets it."""

    async def scenario() -> None:
        cluster = Cluster(tmp_path)
        web = Service(id="svc-web", spec=spec(10), version=1)
        cluster.put(web, task("t1", web))
        stream = cluster.dispatcher.Session(dpb.SessionRequest(description=dpb.NodeDescription(hostname="w1")), None)
        try:
            first = await next_message(stream)
            assert first.updated[0].HasField("spec") and first.updated[0].spec.env["BIG"] == "x" * 10
            assert not first.specs
        finally:
            await stream.aclose()
            cluster.close()

    run(scenario())


def test_undeliverable_assignments_mark_the_node_not_ready_and_service_rm_recovers_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = Cluster(tmp_path, max_message=64 * 1024)
        big = Service(id="svc-big", spec=spec(100_000, "big"), version=1)
        cluster.put(big, task("b1", big), task("b2", big))
        stream = cluster.dispatcher.Session(request(), None)
        with pytest.raises(ApiError) as err:
            await next_message(stream)
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "exceed the 65536 bytes a message may hold" in err.value.message
        node = cluster.node()
        assert node.status == NodeStatus.UNKNOWN
        assert node.status_message.startswith("its session is failing: its assignments (")

        # The next attempt fails the same way, and the node stays not ready in between.
        stream = cluster.dispatcher.Session(request(failed=1, why="RESOURCE_EXHAUSTED: ..."), None)
        with pytest.raises(ApiError):
            await next_message(stream)
        assert cluster.node().status == NodeStatus.UNKNOWN

        # `service rm`: the tasks are to stop, and a task to stop needs no spec: the set fits.
        result = await cluster.raft.propose_async(commands.RemoveService("svc-big", 1.0))
        assert result.ok
        stream = cluster.dispatcher.Session(request(failed=2, why="RESOURCE_EXHAUSTED: ..."), None)
        try:
            first = await next_message(stream)
            assert sorted(t.id for t in first.updated) == ["b1", "b2"] and not first.specs
            assert {t.desired_state for t in first.updated} == {"shutdown"}
            delta = AssignmentSet().apply(first)
            assert not delta.invalid and len(delta.updated) == 2  # stopped without their spec
            assert cluster.node().status == NodeStatus.UNKNOWN  # until a heartbeat proves it works
            await cluster.dispatcher.Heartbeat(dpb.HeartbeatRequest(session_id=first.session_id), None)
            await until(lambda: (cluster.node().status, cluster.node().status_message) == (NodeStatus.READY, ""))
        finally:
            await stream.aclose()
            cluster.close()

    run(scenario())


def test_a_node_whose_sessions_keep_failing_is_not_ready_until_one_works(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = Cluster(tmp_path)
        stream = cluster.dispatcher.Session(request(failed=1, why="INTERNAL: once"), None)
        await next_message(stream)
        assert cluster.node().status == NodeStatus.READY  # one failure is not "keeps failing"
        await stream.aclose()

        why = "RESOURCE_EXHAUSTED: Received message larger than max (7800000 vs. 4194304)\nmore"
        stream = cluster.dispatcher.Session(request(failed=3, why=why), None)
        try:
            first = await next_message(stream)
            node = cluster.node()
            assert node.status == NodeStatus.UNKNOWN
            assert node.status_message == (
                "its session is failing: RESOURCE_EXHAUSTED: Received message larger than max "
                "(7800000 vs. 4194304) more (3 in a row)"
            )
            reply = await cluster.dispatcher.Heartbeat(dpb.HeartbeatRequest(session_id=first.session_id), None)
            await until(lambda: (cluster.node().status, cluster.node().status_message) == (NodeStatus.READY, ""))
            assert 0 < reply.reconnect_spread <= reply.period / 2  # a lost session's reconnect is spread
        finally:
            await stream.aclose()

        stream = cluster.dispatcher.Session(request(failed=2, why="x" * 513), None)
        with pytest.raises(ApiError) as err:
            await next_message(stream)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        cluster.close()

    run(scenario())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("health", "exploding"),
        ("runtime_id", "r" * 300),
        ("runtime_id", "abc\x1b[2J"),
        ("task_id", "t\n"),
        ("task_id", ""),
    ],
)
def test_task_reports_that_break_form_are_refused_before_raft(tmp_path: Path, field: str, value: str) -> None:
    async def scenario() -> None:
        cluster = Cluster(tmp_path)
        web = Service(id="svc-web", spec=spec(), version=1)
        cluster.put(web, task("t1", web))
        stream = cluster.dispatcher.Session(request(), None)
        try:
            first = await next_message(stream)
            status = dpb.TaskStatus(task_id="t1", state="running", message="started")
            setattr(status, field, value)
            applied = cluster.store.applied_index
            with pytest.raises(ApiError) as refused:
                await cluster.dispatcher.UpdateTaskStatus(
                    dpb.UpdateTaskStatusRequest(session_id=first.session_id, updates=[status]), None
                )
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert len(refused.value.message) < 200
            assert cluster.store.applied_index == applied
        finally:
            await stream.aclose()
            cluster.close()

    run(scenario())


def test_long_or_odd_report_text_is_cleaned_and_the_report_kept(tmp_path: Path) -> None:
    """Free text is cut to nodereports.MAX_REPORT_TEXT bytes and loses its NULs: one task's long
    output must not cost the batch the other tasks' reports."""

    async def scenario() -> None:
        cluster = Cluster(tmp_path)
        web = Service(id="svc-web", spec=spec(), version=1)
        cluster.put(web, task("t1", web), task("t2", web))
        stream = cluster.dispatcher.Session(request(), None)
        try:
            first = await next_message(stream)
            reports = [
                dpb.TaskStatus(task_id="t1", state="running", message="é" * 5000, error="nul\x00inside"),
                dpb.TaskStatus(task_id="t2", state="running", message="fine", health="healthy"),
            ]
            await cluster.dispatcher.UpdateTaskStatus(
                dpb.UpdateTaskStatusRequest(session_id=first.session_id, updates=reports), None
            )
            with cluster.store.read() as state:
                t1, t2 = state.tasks["t1"], state.tasks["t2"]
            assert t1.state == t2.state == TaskState.RUNNING
            assert len(t1.message.encode()) <= nodereports.MAX_REPORT_TEXT and t1.message.startswith("éé")
            assert t1.error == "nulinside"
            assert (t2.message, t2.health) == ("fine", "healthy")
        finally:
            await stream.aclose()
            cluster.close()

    run(scenario())


def test_more_task_reports_than_a_batch_are_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        cluster = Cluster(tmp_path)
        stream = cluster.dispatcher.Session(request(), None)
        try:
            first = await next_message(stream)
            updates = [dpb.TaskStatus(task_id=f"t{i}", state="running") for i in range(1001)]
            with pytest.raises(ApiError) as refused:
                await cluster.dispatcher.UpdateTaskStatus(
                    dpb.UpdateTaskStatusRequest(session_id=first.session_id, updates=updates), None
                )
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            await stream.aclose()
            cluster.close()

    run(scenario())


@given(st.text(max_size=6000), st.text(max_size=6000))
def test_whatever_a_task_prints_the_agent_reports_what_the_dispatcher_takes(message: str, error: str) -> None:
    """A probe's or runtime's output (NUL bytes, long non-ASCII text) never makes the dispatcher
    refuse a batch: the agent cleans it to the dispatcher's bound."""
    report = report_to_pb(Report(task_id="t1", state=TaskState.FAILED, message=message, error=error, timestamp=1.0))
    nodereports.check_task_report(report.task_id, report.runtime_id, report.health)
    assert nodereports.report_text(report.message) == report.message
    assert len(report.error.encode()) <= nodereports.MAX_REPORT_TEXT and "\x00" not in report.error
    assert message.replace("\x00", "").startswith(report.message)


def test_a_session_records_the_root_its_agent_calls_with(tmp_path: Path) -> None:
    """A node that opens sessions but never heartbeats still holds a CA rotation open: the
    root it calls with is recorded when it registers (ADR 24)."""

    async def scenario() -> None:
        cluster = Cluster(tmp_path)
        for issuer, recorded in (("old-root", "old-root"), ("", "old-root"), ("new-root", "new-root")):
            caller.set(Identity(NODE, "worker", "c1", dt.datetime(2100, 1, 1, tzinfo=dt.UTC), 1, issuer))
            stream = cluster.dispatcher.Session(request(), None)
            await next_message(stream)
            await stream.aclose()
            assert cluster.node().agent_cert_ca == recorded
            with cluster.store.read() as state:
                assert carotation.agent_on(state.nodes[NODE], "new-root") == (recorded == "new-root")
        cluster.close()

    run(scenario())


def test_a_node_reports_its_metrics_address_and_a_malformed_one_is_refused(tmp_path: Path) -> None:
    """Service discovery (ADR 60) lists what the agent describes; a later description without
    one (an agent's session from another code path) keeps it."""

    async def scenario() -> None:
        cluster = Cluster(tmp_path)
        described = dpb.NodeDescription(hostname="w1", metrics_addr="10.0.0.7:9100")
        stream = cluster.dispatcher.Session(dpb.SessionRequest(description=described), None)
        try:
            await next_message(stream)
            assert cluster.node().metrics_addr == "10.0.0.7:9100"
        finally:
            await stream.aclose()
        for bad in ("10.0.0.7", "10.0.0.7:0", "host:port", "a b:1"):
            bad_request = dpb.SessionRequest(description=dpb.NodeDescription(hostname="w1", metrics_addr=bad))
            stream = cluster.dispatcher.Session(bad_request, None)
            with pytest.raises(ApiError) as err:
                await next_message(stream)
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "metrics_addr" in err.value.message
        assert cluster.node().metrics_addr == "10.0.0.7:9100"
        cluster.close()

    run(scenario())


def test_a_heartbeat_is_answered_without_waiting_for_the_ready_proposal(tmp_path: Path) -> None:
    """At 1,000 nodes, heartbeat answers that waited for a Raft round came after the agents gave
    up on them, ending their sessions (#15): the answer goes at once, the node is marked ready
    once the proposal commits, and the heartbeats meanwhile propose nothing more."""

    async def scenario() -> None:
        cluster = Cluster(tmp_path)
        release = asyncio.Event()
        proposed: list[commands.SetNodeStatus] = []
        propose = cluster.raft.propose_async

        async def slow_status(command, timeout=5.0):  # type: ignore[no-untyped-def]
            if isinstance(command, commands.SetNodeStatus):
                proposed.append(command)
                await release.wait()  # a Raft round behind the plans' entries
            return await propose(command, timeout)

        cluster.raft.propose_async = slow_status  # type: ignore[method-assign]
        release.set()  # the session's own "failing" status commits at once
        stream = cluster.dispatcher.Session(request(failed=3, why="INTERNAL: x"), None)
        try:
            first = await next_message(stream)
            assert first.heartbeat_period == 5.0 and 0 < first.reconnect_spread <= 2.5  # known before a beat
            assert cluster.node().status == NodeStatus.UNKNOWN
            proposed.clear()
            release.clear()
            beat = dpb.HeartbeatRequest(session_id=first.session_id)
            for _ in range(3):
                reply = await asyncio.wait_for(cluster.dispatcher.Heartbeat(beat, None), 2.0)
                assert reply.period == 5.0
            assert cluster.node().status == NodeStatus.UNKNOWN  # not yet committed
            assert [c.status for c in proposed] == [NodeStatus.READY]  # one proposal, not three
            release.set()
            await until(lambda: (cluster.node().status, cluster.node().status_message) == (NodeStatus.READY, ""))
        finally:
            await stream.aclose()
            cluster.close()

    run(scenario())


def test_a_session_among_many_paces_its_messages_and_new_work_ends_one_pause(tmp_path: Path) -> None:
    """With 1,000 sessions open, a session waits 1-3 s after each message it sends (#15). New
    work for its node ends that wait at once (ADR 85), but only one pause ahead: work that comes
    after an early message waits for the pause, and what came meanwhile goes in one message."""

    async def scenario() -> None:
        cluster = Cluster(tmp_path)
        web = Service(id="svc-web", spec=spec(), version=1)
        cluster.put(web)
        for i in range(999):  # the other nodes' sessions, as the pace counts them
            cluster.dispatcher._sessions[f"other-{i}"] = f"node-{i}"
        shortest = session_pace(1000, 0.0)
        stream = cluster.dispatcher.Session(request(), None)
        try:
            await next_message(stream)  # COMPLETE
            cluster.put(task("a", web))
            first = await next_message(stream)
            sent = time.monotonic()
            assert [t.id for t in first.updated] == ["a"]
            cluster.put(task("b", web))  # a task to start: new work
            second = await next_message(stream)
            assert time.monotonic() - sent < shortest  # it did not wait its pause
            assert [t.id for t in second.updated] == ["b"]
            assert not cluster.dispatcher._bell._sessions[NODE][1].is_set()  # b was answered
            cluster.put(task("c", web))
            cluster.put(task("d", web))
            third = await next_message(stream)
            assert time.monotonic() - sent >= 0.9 * shortest  # the pause after the first message
            assert sorted(t.id for t in third.updated) == ["c", "d"]
        finally:
            await stream.aclose()
            cluster.close()

    run(scenario())


@pytest.mark.parametrize("sessions", [1, 10, 100, 1000])
def test_the_pace_keeps_the_sessions_messages_to_a_bounded_rate(sessions: int) -> None:
    low, high = session_pace(sessions, 0.0), session_pace(sessions, 0.999)
    assert low < high
    assert sessions / ((low + high) / 2) == pytest.approx(SESSION_MESSAGES_PER_SECOND, rel=0.01)


@pytest.mark.parametrize("nodes", [1, 3, 100, 500, 1000, 5000])
@pytest.mark.parametrize("period", [0.5, 5.0, 30.0])
def test_reconnects_are_spread_to_a_bounded_rate_within_half_a_period(nodes: int, period: float) -> None:
    spread = reconnect_spread(nodes, period)
    assert 0 < spread <= period / 2
    if spread < period / 2:  # not capped: the nodes come back at the rate the leader takes
        assert nodes / spread == pytest.approx(RECONNECTS_PER_SECOND)
