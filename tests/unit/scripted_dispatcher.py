"""A scripted dispatcher for the agent's session, served over real gRPC with mutual TLS, and an
agent's Session run against it (the runtime is the in-memory fake). The credentials are the
`creds` fixture of tests/unit/conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from tests.unit.agent_fakes import FakeRuntime, Recorder, make_env
from warren import tls
from warren.agent.cache import AgentCache, MemoryCache
from warren.agent.session import ManagerList, Session
from warren.agent.status import StatusQueue
from warren.agent.worker import Worker
from warren.api import convert
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import dispatcher_pb2_grpc

COMPLETE = dpb.AssignmentsMessage.COMPLETE
INCREMENTAL = dpb.AssignmentsMessage.INCREMENTAL


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


async def stop_agent(
    stop: asyncio.Event, runner: asyncio.Task[None], worker: Worker, cache: AgentCache, server: grpc.aio.Server
) -> None:
    """A test's cleanup of an agent it ran against a scripted dispatcher: its session first (which
    must end within 10 s of `stop`), then its worker, the worker's cache, and the server."""
    stop.set()
    await asyncio.wait_for(runner, 10)
    await worker.close()
    cache.close()
    await server.stop(None)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))
