"""The session runs the log agent next to assignments and heartbeats, over real gRPC with mutual
TLS: subscriptions pushed by a scripted dispatcher are served from the log files; a manager
without log streaming leaves the session alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.unit.agent_fakes import FakeRuntime, Recorder, make_env, make_task
from tests.unit.scripted_dispatcher import ScriptedDispatcher, description, serve
from tests.waiting import async_holds
from tests.waiting import async_wait_for as until
from warren.agent.cache import AgentCache
from warren.agent.logs import LogAgent
from warren.agent.session import ManagerList, Session
from warren.agent.status import StatusQueue
from warren.agent.worker import Worker
from warren.api.v1 import dispatcher_pb2 as dpb


class LoggingDispatcher(ScriptedDispatcher):
    """Also pushes `subscriptions` and records PublishLogs batches."""

    def __init__(self, tasks=()) -> None:  # type: ignore[no-untyped-def]
        super().__init__(tasks)
        self.subscriptions: asyncio.Queue[dpb.LogSubscription] = asyncio.Queue()
        self.published: list[dpb.PublishLogsRequest] = []
        self.log_streams = 0

    async def LogSubscriptions(self, request, context):  # type: ignore[no-untyped-def]
        self.log_streams += 1
        while True:
            yield await self.subscriptions.get()

    async def PublishLogs(self, request, context):  # type: ignore[no-untyped-def]
        self.published.append(request)
        return dpb.PublishLogsResponse()

    def lines(self) -> list[bytes]:
        return [m.data for r in self.published for m in r.messages]


async def _run_session(dispatcher: ScriptedDispatcher, creds, tmp_path: Path, check) -> None:  # type: ignore[no-untyped-def]
    certs, server_creds = creds
    server, addr = await serve(dispatcher, server_creds)
    cache = AgentCache(tmp_path / "agent.db")
    queue = StatusQueue()
    worker = Worker(make_env(FakeRuntime(), Recorder(), tmp_path), cache, queue)
    await worker.start()
    logs = LogAgent(tmp_path, running=worker.started_task_ids, poll=0.02)
    session = Session(certs, ManagerList([addr]), description, worker, queue, logs=logs)
    stop = asyncio.Event()
    runner = asyncio.create_task(session.run(stop))
    try:
        await check(worker)
    finally:
        stop.set()
        await asyncio.wait_for(runner, 10)
        logs.close()
        await worker.close()
        cache.close()
        await server.stop(None)


def test_the_session_serves_log_subscriptions(creds, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dispatcher = LoggingDispatcher([make_task("a")])
    (tmp_path / "a.log").write_bytes(b"one\ntwo\n")

    async def check(worker: Worker) -> None:
        await until(lambda: "running" in dispatcher.reported("a"), message="task a running")
        assert worker.started_task_ids() == ["a"]
        await dispatcher.subscriptions.put(dpb.LogSubscription(id="s1", task_ids=["a"], tail=1))
        await until(lambda: any(r.done for r in dispatcher.published), message="the history, then done")
        assert dispatcher.lines() == [b"two"]
        assert {r.session_id for r in dispatcher.published} == {"s1"}  # the scripted session's id
        assert len(dispatcher.sessions) == 1  # the logs job did not disturb the session

    asyncio.run(asyncio.wait_for(_run_session(dispatcher, creds, tmp_path, check), 30))


def test_a_manager_without_log_streaming_leaves_the_session_alone(creds, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dispatcher = ScriptedDispatcher([make_task("a")], period=0.1)  # LogSubscriptions: UNIMPLEMENTED

    async def check(worker: Worker) -> None:
        await until(lambda: "running" in dispatcher.reported("a"), message="task a running")
        beats = dispatcher.heartbeats
        await async_holds(lambda: len(dispatcher.sessions) == 1, 0.5, message="one session")
        await until(lambda: dispatcher.heartbeats >= beats + 2, message="the session still heartbeating")
        assert len(dispatcher.sessions) == 1

    asyncio.run(asyncio.wait_for(_run_session(dispatcher, creds, tmp_path, check), 30))
