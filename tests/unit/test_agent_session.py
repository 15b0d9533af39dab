"""The agent's session against scripted dispatchers over real gRPC with mutual TLS: leader
redirect, COMPLETE then INCREMENTAL, resync on a version gap, reconnect when heartbeats fail,
batched reports, and NodeRemoved. The runtime is the in-memory fake."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.unit.agent_fakes import FakeRuntime, Recorder, make_env, make_task
from tests.waiting import async_wait_for as until
from warren import pki, tls
from warren.agent import reporter
from warren.agent import session as session_module
from warren.agent.cache import AgentCache, MemoryCache
from warren.agent.session import ManagerList, NodeRemoved, Session
from warren.agent.status import Report, StatusQueue
from warren.agent.worker import Worker
from warren.api import convert
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import dispatcher_pb2_grpc
from warren.model import TaskState

S = TaskState
COMPLETE = dpb.AssignmentsMessage.COMPLETE
INCREMENTAL = dpb.AssignmentsMessage.INCREMENTAL


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tls.Credentials]:
    """A worker's credentials directory and the manager's server credentials, one cluster CA."""
    root = tmp_path_factory.mktemp("pki")
    ca = pki.CertificateAuthority.create("testcluster")
    cert, key = ca.issue_keypair("worker1", pki.ROLE_WORKER)
    tls.save_credentials(root / "worker", ca.cert_pem, cert, key)
    mcert, mkey = ca.issue_keypair("manager1", pki.ROLE_MANAGER)
    return root / "worker", tls.Credentials(ca.cert_pem, mcert, mkey)


class ScriptedDispatcher(dispatcher_pb2_grpc.DispatcherServicer):
    """Sends COMPLETE with `tasks`, then whatever the test puts in `outbox` (None ends the stream)."""

    def __init__(self, tasks=(), leader: str = "", period: float = 0.2) -> None:  # type: ignore[no-untyped-def]
        self.tasks = list(tasks)
        self.leader = leader  # non-empty: act as a follower naming this leader
        self.period = period
        self.sessions: list[dpb.SessionRequest] = []
        self.outbox: asyncio.Queue[dpb.AssignmentsMessage | None] = asyncio.Queue()
        self.batches: list[list[dpb.TaskStatus]] = []
        self.heartbeats = 0
        self.beats: list[dpb.HeartbeatRequest] = []
        self.beat_times: list[float] = []
        self.fail_heartbeats = False
        self.beat_delay = 0.0  # seconds every heartbeat's answer waits, as on an overloaded manager
        self.removed = False
        self.fail_sessions = 0  # the next N sessions fail as a message too large for the agent would
        self.reconnect_spread = 0.0
        self.slow_reports = 0  # the next N reports are answered after the agent's deadline
        self.refuse_reports = 0  # the next N reports fail as a proposal that timed out does
        self.streams = True  # False: a manager without StatusReports and Heartbeats
        self.report_streams_opened = 0
        self.heartbeat_streams_opened = 0
        self.report_calls = 0
        self.period_in_complete = False  # a manager of this version says them in COMPLETE too
        self.session_times: list[float] = []
        self.logins: list[dpb.PullLogin] = []  # sent in COMPLETE
        self.first_delay = 0.0  # seconds before COMPLETE, as on a new leader taking in every node

    async def Session(self, request, context):  # type: ignore[no-untyped-def]
        if self.removed:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this node was removed from the cluster")
        if self.leader:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"not the leader; the leader is at {self.leader}")
        self.sessions.append(request)
        self.session_times.append(time.monotonic())
        if self.fail_sessions:
            self.fail_sessions -= 1
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (7800000 vs. 4194304)"
            )
        session_id = f"s{len(self.sessions)}"
        await asyncio.sleep(self.first_delay)
        yield dpb.AssignmentsMessage(
            type=COMPLETE,
            session_id=session_id,
            version=1,
            updated=[convert.task_to_pb(t, with_spec=True) for t in self.tasks],
            managers=["127.0.0.1:1"],
            heartbeat_period=self.period if self.period_in_complete else 0.0,
            reconnect_spread=self.reconnect_spread if self.period_in_complete else 0.0,
            pull_logins=self.logins,
        )
        while True:
            msg = await self.outbox.get()
            if msg is None:
                return
            msg.session_id = session_id
            yield msg

    async def Heartbeat(self, request, context):  # type: ignore[no-untyped-def]
        self.heartbeats += 1
        self.beats.append(request)
        self.beat_times.append(time.monotonic())
        if self.beat_delay:
            await asyncio.sleep(self.beat_delay)
        if self.fail_heartbeats:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown session; open a new one")
        return dpb.HeartbeatResponse(period=self.period, reconnect_spread=self.reconnect_spread)

    async def Heartbeats(self, requests, context):  # type: ignore[no-untyped-def]
        if not self.streams:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        self.heartbeat_streams_opened += 1
        async for request in requests:
            yield await self.Heartbeat(request, context)

    async def UpdateTaskStatus(self, request, context):  # type: ignore[no-untyped-def]
        self.report_calls += 1
        await self._take(request, context)
        return dpb.UpdateTaskStatusResponse()

    async def StatusReports(self, requests, context):  # type: ignore[no-untyped-def]
        if not self.streams:  # a manager of a version without the stream
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        self.report_streams_opened += 1
        async for request in requests:
            await self._take(request, context)
            yield dpb.UpdateTaskStatusResponse()

    async def _take(self, request: dpb.UpdateTaskStatusRequest, context: grpc.aio.ServicerContext) -> None:
        if self.slow_reports:
            self.slow_reports -= 1
            await asyncio.sleep(5.0)  # beyond the agent's deadline: the agent gives up on it
        if self.refuse_reports:
            self.refuse_reports -= 1
            await context.abort(grpc.StatusCode.UNKNOWN, "the write did not commit within 5s (no quorum?)")
        self.batches.append(list(request.updates))

    def reported(self, task_id: str) -> list[str]:
        return [u.state for batch in self.batches for u in batch if u.task_id == task_id]


async def serve(servicer: ScriptedDispatcher, server_creds: tls.Credentials) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    dispatcher_pb2_grpc.add_DispatcherServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(*server_creds))
    await server.start()
    return server, f"127.0.0.1:{port}"


def description() -> dpb.NodeDescription:
    return dpb.NodeDescription(hostname="worker-1")


@contextlib.asynccontextmanager
async def running_session(
    dispatcher: ScriptedDispatcher, creds: tuple[Path, tls.Credentials], tmp_path: Path
) -> AsyncIterator[tuple[Session, StatusQueue]]:
    """An agent's Session running against `dispatcher` (served over mTLS), with its status queue;
    stopped, with the worker and the server, on leaving."""
    certs, server_creds = creds
    server, addr = await serve(dispatcher, server_creds)
    queue = StatusQueue()
    worker = Worker(make_env(FakeRuntime(), Recorder(), tmp_path), MemoryCache(), queue)
    session = Session(certs, ManagerList([addr]), description, worker, queue)
    stop = asyncio.Event()
    runner = asyncio.create_task(session.run(stop))
    try:
        yield session, queue
    finally:
        stop.set()
        await runner
        await worker.close()
        await server.stop(None)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_session_follows_the_leader_runs_tasks_resyncs_and_reconnects(creds, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    certs, server_creds = creds
    rt = FakeRuntime()
    task = make_task("a")

    async def scenario() -> None:
        leader = ScriptedDispatcher([task])
        leader_server, leader_addr = await serve(leader, server_creds)
        follower_server, follower_addr = await serve(ScriptedDispatcher(leader=leader_addr), server_creds)
        cache = AgentCache(tmp_path / "agent.db")
        queue = StatusQueue()
        worker = Worker(make_env(rt, Recorder(), tmp_path), cache, queue)
        await worker.start()
        saved: list[list[str]] = []
        session = Session(certs, ManagerList([follower_addr]), description, worker, queue, saved.append)
        stop = asyncio.Event()
        runner = asyncio.create_task(session.run(stop))
        try:
            # Redirected to the leader; the task runs and its progress arrives coalesced.
            await until(lambda: "running" in leader.reported("a"), message="task a reported running")
            assert session.connected_to == leader_addr
            assert leader.sessions[0].description.hostname == "worker-1"
            assert len(leader.batches) <= 2  # accepted..running in one or two calls, not four
            assert saved and "127.0.0.1:1" in saved[-1] and leader_addr in saved[-1]

            # An incremental message adds a task.
            b = make_task("b")
            await leader.outbox.put(dpb.AssignmentsMessage(type=INCREMENTAL, applies_to=1, version=2, updated=[_pb(b)]))
            await until(lambda: "running" in leader.reported("b"), message="task b running")

            # A gap: the agent reopens the session and resyncs from a new COMPLETE set (without b).
            await leader.outbox.put(dpb.AssignmentsMessage(type=INCREMENTAL, applies_to=7, version=8))
            await until(lambda: len(leader.sessions) == 2, message="a second session")
            await until(lambda: "b" not in worker.controllers, message="b removed by the complete set")
            assert len(rt.running()) == 1

            # Heartbeats: paced by the reply; a failing one ends the session, and it reconnects.
            await until(lambda: leader.heartbeats >= 1, message="a first heartbeat (at half of 1 s)")
            # Paced by the reply: with 1.5 s asked (more than the 1 s assumed before any reply), the
            # gap after a beat so answered is at least that. Load only lengthens gaps, never shortens.
            leader.period = 1.5
            beats = leader.heartbeats
            await until(lambda: leader.heartbeats >= beats + 2, timeout=15, message="two more heartbeats")
            assert leader.beat_times[beats + 1] - leader.beat_times[beats] >= 1.45
            leader.period = 0.2
            leader.fail_heartbeats = True
            await until(lambda: len(leader.sessions) == 3, message="a third session after heartbeat failure")
            leader.fail_heartbeats = False

            # A removed node stops for good.
            leader.removed = True
            await leader.outbox.put(None)
            with pytest.raises(NodeRemoved):
                await asyncio.wait_for(runner, 10)
        finally:
            stop.set()
            if not runner.done():
                runner.cancel()
            await worker.close()
            cache.close()
            await leader_server.stop(None)
            await follower_server.stop(None)

    run(scenario())


def test_reports_survive_a_lost_session(creds, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A report queued while no manager is reachable is delivered by the next session."""
    certs, server_creds = creds
    rt = FakeRuntime()

    async def scenario() -> None:
        dispatcher = ScriptedDispatcher([])
        server, addr = await serve(dispatcher, server_creds)
        cache = AgentCache(tmp_path / "agent.db")
        queue = StatusQueue()
        worker = Worker(make_env(rt, Recorder(), tmp_path), cache, queue)
        await worker.start()
        queue.put(Report("zzz", S.FAILED, 1.7e9, error="exited while away"))
        stop = asyncio.Event()
        runner = asyncio.create_task(Session(certs, ManagerList([addr]), description, worker, queue).run(stop))
        try:
            await until(lambda: "failed" in dispatcher.reported("zzz"), message="queued report delivered")
        finally:
            stop.set()
            await asyncio.wait_for(runner, 10)
            await worker.close()
            cache.close()
            await server.stop(None)

    run(scenario())


def test_a_registry_login_is_forgotten_once_the_managers_have_the_running_report(creds, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """ADR 43: a task's login is held in memory until it has pulled and started. The managers no
    longer send the task back for the status its agent reported (#15), so the agent forgets
    the login once its own report of running is answered, not at an echo."""

    async def scenario() -> None:
        dispatcher = ScriptedDispatcher([])
        dispatcher.logins = [dpb.PullLogin(task_id=t, host="reg:5000", username="u", password="p") for t in ("a", "b")]
        async with running_session(dispatcher, creds, tmp_path) as (session, queue):
            await until(lambda: set(session.assignments.logins) == {"a", "b"}, message="the logins held")
            queue.put(Report("a", S.PREPARING, 1.7e9))
            queue.put(Report("b", S.RUNNING, 1.7e9))
            await until(lambda: "running" in dispatcher.reported("b"), message="the reports answered")
            await until(lambda: "b" not in session.assignments.logins, message="b's login forgotten")
            assert set(session.assignments.logins) == {"a"}  # still to pull
            queue.put(Report("a", S.FAILED, 1.7e9, error="pull failed"))
            await until(lambda: not session.assignments.logins, message="a's login forgotten once it ended")

    run(scenario())


@pytest.mark.parametrize("streams", [True, False], ids=["stream", "calls"])
def test_a_report_not_answered_in_time_is_resent_on_the_same_session(
    creds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streams: bool
) -> None:  # type: ignore[no-untyped-def]
    """A busy manager that answers a report late is not a broken session (#15): the agent
    resends the report, and keeps the session that its heartbeats show working. On a stream,
    the late answer must not be taken for the next batch's: the agent opens a new stream."""
    monkeypatch.setattr(reporter, "REPORT_TIMEOUT", 0.5)
    monkeypatch.setattr(reporter, "STREAM_REPORT_TIMEOUT", 0.5)
    monkeypatch.setattr(reporter, "REPORT_RETRY", 0.05)

    async def scenario() -> None:
        dispatcher = ScriptedDispatcher([])
        dispatcher.streams = streams
        dispatcher.slow_reports = 2
        async with running_session(dispatcher, creds, tmp_path) as (session, queue):
            await until(lambda: session.connected_to is not None, message="a session")
            queue.put(Report("zzz", S.FAILED, 1.7e9, error="exited"))
            await until(lambda: "failed" in dispatcher.reported("zzz"), timeout=20, message="the report, resent")
            assert len(dispatcher.sessions) == 1, "a late report answer ended the session"
            if streams:
                assert dispatcher.report_streams_opened == 3  # the first two were given up
                assert dispatcher.report_calls == 0

    run(scenario())


def test_batches_and_beats_go_on_one_stream_each_per_session(creds, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """ADR 79: every batch of a session on its one StatusReports stream, every beat on its one
    Heartbeats stream, none as a call."""

    async def scenario() -> None:
        dispatcher = ScriptedDispatcher([])
        async with running_session(dispatcher, creds, tmp_path) as (session, queue):
            await until(lambda: session.connected_to is not None, message="a session")
            for i in range(3):
                queue.put(Report(f"t{i}", S.RUNNING, 1.7e9))
                await until(lambda i=i: "running" in dispatcher.reported(f"t{i}"), message=f"batch {i} taken")
            assert len(dispatcher.batches) == 3
            assert (dispatcher.report_streams_opened, dispatcher.report_calls) == (1, 0)
            beats = dispatcher.heartbeats
            await until(lambda: dispatcher.heartbeats >= beats + 2, message="more heartbeats")
            assert dispatcher.heartbeat_streams_opened == 1  # every beat on the session's one stream

    run(scenario())


def test_a_manager_without_the_streams_gets_one_call_per_batch_and_per_beat(creds, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An older manager answers StatusReports and Heartbeats UNIMPLEMENTED: the agent reports
    and beats by calls, on the same session."""

    async def scenario() -> None:
        dispatcher = ScriptedDispatcher([])
        dispatcher.streams = False
        async with running_session(dispatcher, creds, tmp_path) as (session, queue):
            await until(lambda: session.connected_to is not None, message="a session")
            queue.put(Report("a", S.RUNNING, 1.7e9))
            await until(lambda: "running" in dispatcher.reported("a"), message="the first batch, by a call")
            queue.put(Report("b", S.FAILED, 1.7e9, error="exited"))
            await until(lambda: "failed" in dispatcher.reported("b"), message="the second batch")
            assert (dispatcher.report_streams_opened, dispatcher.report_calls) == (0, 2)
            await until(lambda: dispatcher.heartbeats >= 2, message="heartbeats, by calls")
            assert dispatcher.heartbeat_streams_opened == 0
            assert len(dispatcher.sessions) == 1

    run(scenario())


def test_a_report_whose_commit_timed_out_is_resent_on_the_same_session(
    creds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """UNKNOWN is a proposal the manager did not see committed in time: busy, not broken. The
    batch goes again, and the session stays."""
    monkeypatch.setattr(reporter, "REPORT_RETRY", 0.05)

    async def scenario() -> None:
        dispatcher = ScriptedDispatcher([])
        dispatcher.refuse_reports = 1
        async with running_session(dispatcher, creds, tmp_path) as (session, queue):
            await until(lambda: session.connected_to is not None, message="a session")
            queue.put(Report("zzz", S.RUNNING, 1.7e9))
            await until(lambda: "running" in dispatcher.reported("zzz"), message="the report, resent")
            assert dispatcher.refuse_reports == 0 and len(dispatcher.sessions) == 1
            assert dispatcher.report_streams_opened == 2

    run(scenario())


def test_a_late_heartbeat_answer_keeps_the_session(creds, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """An overloaded manager answers heartbeats 1.5 periods late: the managers call a node down
    only after 3, so the session stays open (a new one would cost that manager a registration
    and the whole set: the reopen storm of #15's S2), the next beat leaves a period after the
    last one did, and the lateness is logged."""

    async def scenario() -> None:
        manager = ScriptedDispatcher(period=2.0)
        async with running_session(manager, creds, tmp_path) as (session, _):
            await until(lambda: manager.heartbeats >= 1 and session.period == 2.0, message="the first beat answered")
            manager.beat_delay = 3.0  # beyond one period (the old limit), within two
            await until(lambda: manager.heartbeats >= 3, timeout=20, message="two late beats")
            gaps = [b - a for a, b in zip(manager.beat_times[1:], manager.beat_times[2:], strict=False)]
            assert len(manager.sessions) == 1, "the session was given up on a late answer"
            assert all(gap < 2.0 * 2 for gap in gaps), gaps  # due a period after the last one left
            assert "a heartbeat was answered after" in caplog.text

    with caplog.at_level("WARNING", logger="warren.agent.session"):
        run(scenario())


def test_a_lost_session_reconnects_after_a_wait_drawn_from_the_spread_the_manager_said(
    creds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """After a leader change every node's session ends at once: each agent waits a random part
    of the spread its heartbeat answers named before it reconnects (#15), at most half a period."""
    draws: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        draws.append((low, high))
        return high  # the longest wait the spread allows

    monkeypatch.setattr(session_module.random, "uniform", uniform)

    async def scenario() -> None:
        manager = ScriptedDispatcher(period=4.0)
        manager.reconnect_spread = 1.2
        async with running_session(manager, creds, tmp_path) as (session, _):
            await until(lambda: session.reconnect_spread == 1.2, message="the spread learnt from a heartbeat")
            ended = time.monotonic()
            await manager.outbox.put(None)  # the manager ends the session
            await until(lambda: len(manager.sessions) == 2, timeout=10, message="a second session")
            assert manager.session_times[1] - ended >= 1.2
            assert draws == [(0.0, 1.2)]
            manager.reconnect_spread = 60.0  # more than half a period: the agent keeps to that
            await until(lambda: session.reconnect_spread == 2.0, timeout=10, message="the spread, capped")

    run(scenario())


def test_a_new_session_waits_for_its_first_message_as_long_as_for_a_heartbeat_answer(
    creds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """After a leader change at 1,000 nodes (a 20 s period), agents gave up on a busy new
    leader's first message at 15 s, and each retry made it later (ADR 83): a session's first
    message is awaited at least as long as a heartbeat's answer, two periods."""
    monkeypatch.setattr(session_module, "FIRST_MESSAGE_TIMEOUT", 0.5)

    async def scenario() -> None:
        manager = ScriptedDispatcher(period=1.0)
        manager.period_in_complete = True
        async with running_session(manager, creds, tmp_path) as (session, _):
            await until(lambda: session.period == 1.0, message="the period learnt")
            manager.first_delay = 1.2  # past the least wait, within two periods
            await manager.outbox.put(None)  # the manager ends the session
            await until(lambda: len(manager.sessions) >= 2, timeout=10, message="a second session")
            await until(lambda: session.connected_to is not None, timeout=10, message="the second session open")
            assert len(manager.sessions) == 2, "the agent gave up on a first message within two periods"

    run(scenario())


def test_the_first_heartbeat_waits_for_its_answer_as_long_as_the_period_the_first_message_said(
    creds, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """An agent assumed a 1 s period until a heartbeat answered, and gave up on the first
    answer after 2 s: on a leader busy with 1,000 new sessions, most first sessions ended so."""

    async def scenario() -> None:
        manager = ScriptedDispatcher(period=2.0)
        manager.period_in_complete = True
        manager.reconnect_spread = 0.5
        manager.beat_delay = 2.5  # beyond 2 s (the old first limit), within two periods
        async with running_session(manager, creds, tmp_path) as (session, _):
            await until(lambda: session.connected_to is not None, message="a session")
            assert (session.period, session.reconnect_spread) == (2.0, 0.5)
            await until(lambda: manager.heartbeats >= 2, timeout=15, message="two heartbeats")
            assert len(manager.sessions) == 1, "the first late answer ended the session"

    run(scenario())


def test_failed_sessions_are_counted_in_the_next_request_until_a_heartbeat(creds, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The managers mark a node not ready from what its agent says about its failed sessions."""
    certs, server_creds = creds

    async def scenario() -> None:
        dispatcher = ScriptedDispatcher([])
        dispatcher.fail_sessions = 2
        server, addr = await serve(dispatcher, server_creds)
        cache = AgentCache(tmp_path / "agent.db")
        queue = StatusQueue()
        worker = Worker(make_env(FakeRuntime(), Recorder(), tmp_path), cache, queue)
        await worker.start()
        stop = asyncio.Event()
        runner = asyncio.create_task(Session(certs, ManagerList([addr]), description, worker, queue).run(stop))
        try:
            await until(lambda: dispatcher.heartbeats >= 1, message="a session that works, after two that failed")
            counts = [(r.failed_sessions, r.last_failure) for r in dispatcher.sessions]
            why = "RESOURCE_EXHAUSTED: Received message larger than max (7800000 vs. 4194304)"
            assert counts == [(0, ""), (1, why), (2, why)]
            assert all(r.specs_by_reference for r in dispatcher.sessions)
            # The heartbeat showed the session working: the count starts again. A heartbeat that
            # fails (the session is unknown) is one failure, not yet "keeps failing".
            dispatcher.fail_heartbeats = True
            await until(lambda: len(dispatcher.sessions) == 4, message="a new session after the heartbeat failed")
            assert dispatcher.sessions[3].failed_sessions == 1
            assert dispatcher.sessions[3].last_failure == "NOT_FOUND: unknown session; open a new one"
        finally:
            stop.set()
            await asyncio.wait_for(runner, 10)
            await worker.close()
            cache.close()
            await server.stop(None)

    run(scenario())


def test_the_heartbeat_reports_the_endpoints_applied_at_once(creds, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """ADR 33: each endpoints push carries its Raft index; once the load balancer applied it, the
    next heartbeat goes at once (not a period later) and names that index."""
    certs, server_creds = creds

    async def scenario() -> None:
        dispatcher = ScriptedDispatcher([], period=30.0)
        server, addr = await serve(dispatcher, server_creds)
        cache = AgentCache(tmp_path / "agent.db")
        queue = StatusQueue()
        worker = Worker(make_env(FakeRuntime(), Recorder(), tmp_path), cache, queue)
        await worker.start()
        applied = {"index": 0}
        changed = asyncio.Event()
        given: list[tuple[int, tuple[str, ...]]] = []

        def load_balance(services, vip_range: str, index: int) -> None:  # type: ignore[no-untyped-def]
            given.append((index, tuple(e.vip for e in services)))
            applied["index"] = index  # as the overlay does once nftables holds them
            changed.set()

        session = Session(
            certs,
            ManagerList([addr]),
            description,
            worker,
            queue,
            on_services=load_balance,
            services_applied=lambda: applied["index"],
            routing_changed=changed,
        )
        stop = asyncio.Event()
        runner = asyncio.create_task(session.run(stop))
        try:
            await until(lambda: dispatcher.heartbeats >= 1, message="a first heartbeat")
            assert dispatcher.beats[0].services_applied == 0
            started = time.monotonic()
            endpoint = dpb.ServiceEndpoint(name="web", vip="10.201.0.2", backends=["10.200.0.2"])
            await dispatcher.outbox.put(
                dpb.AssignmentsMessage(
                    type=INCREMENTAL,
                    applies_to=1,
                    version=2,
                    services=[endpoint],
                    services_changed=True,
                    services_index=42,
                )
            )
            await until(lambda: dispatcher.heartbeats >= 2, message="a heartbeat right after the push")
            assert time.monotonic() - started < 10  # the period is 30 s
            assert given == [(42, ("10.201.0.2",))]
            assert dispatcher.beats[1].services_applied == 42
        finally:
            stop.set()
            await asyncio.wait_for(runner, 10)
            await worker.close()
            cache.close()
            await server.stop(None)

    run(scenario())


def test_the_agent_takes_endpoint_deltas_and_reopens_on_one_it_cannot_apply(creds, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """ADR 65: the agent announces deltas; one onto the index it holds updates the whole set it
    hands the load balancer; one onto another index is a gap: the session reopens (to get a
    whole list in its COMPLETE message) and the load balancer never sees it."""
    certs, server_creds = creds

    async def scenario() -> None:
        dispatcher = ScriptedDispatcher([], period=30.0)
        server, addr = await serve(dispatcher, server_creds)
        cache = AgentCache(tmp_path / "agent.db")
        queue = StatusQueue()
        worker = Worker(make_env(FakeRuntime(), Recorder(), tmp_path), cache, queue)
        await worker.start()
        given: list[tuple[int, tuple[tuple[str, tuple[str, ...]], ...]]] = []

        def load_balance(services, vip_range: str, index: int) -> None:  # type: ignore[no-untyped-def]
            given.append((index, tuple((e.name, e.backends) for e in services)))

        session = Session(certs, ManagerList([addr]), description, worker, queue, on_services=load_balance)
        stop = asyncio.Event()
        runner = asyncio.create_task(session.run(stop))

        def endpoint(name: str, *backends: str) -> dpb.ServiceEndpoint:
            return dpb.ServiceEndpoint(name=name, vip="10.201.0.2", backends=list(backends))

        try:
            await until(lambda: dispatcher.sessions, message="a session")
            assert dispatcher.sessions[0].endpoint_deltas
            whole = [endpoint("a", "10.224.0.2"), endpoint("b", "10.224.0.3")]
            await dispatcher.outbox.put(
                dpb.AssignmentsMessage(
                    type=INCREMENTAL, applies_to=1, version=2, services=whole, services_changed=True, services_index=10
                )
            )
            await dispatcher.outbox.put(
                dpb.AssignmentsMessage(
                    type=INCREMENTAL,
                    applies_to=2,
                    version=3,
                    services=[endpoint("c", "10.224.0.5"), endpoint("a", "10.224.0.4")],
                    services_removed=["b"],
                    services_delta=True,
                    services_base=10,
                    services_index=12,
                )
            )
            await until(lambda: len(given) == 2, message="the whole list, then the delta applied")
            assert given == [
                (10, (("a", ("10.224.0.2",)), ("b", ("10.224.0.3",)))),
                (12, (("a", ("10.224.0.4",)), ("c", ("10.224.0.5",)))),
            ]
            await dispatcher.outbox.put(
                dpb.AssignmentsMessage(
                    type=INCREMENTAL,
                    applies_to=3,
                    version=4,
                    services=[endpoint("d")],
                    services_delta=True,
                    services_base=11,
                    services_index=13,
                )
            )
            await until(lambda: len(dispatcher.sessions) == 2, message="the session reopened")
            assert dispatcher.sessions[1].endpoint_deltas
            assert len(given) == 2  # the delta it could not apply went nowhere
        finally:
            stop.set()
            await asyncio.wait_for(runner, 10)
            await worker.close()
            cache.close()
            await server.stop(None)

    run(scenario())


def _pb(task):  # type: ignore[no-untyped-def]
    return convert.task_to_pb(task, with_spec=True)
