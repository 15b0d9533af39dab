"""Status reports on the agent's session, against scripted dispatchers over real gRPC with mutual
TLS: kept across a lost session, one stream each for reports and beats (calls for an older
manager), resent when answered late or not committed; a registry login forgotten once running."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.unit.agent_fakes import FakeRuntime, Recorder, make_env
from tests.unit.scripted_dispatcher import ScriptedDispatcher, description, run, running_session, serve, stop_agent
from tests.waiting import async_wait_for as until
from warren.agent import reporter
from warren.agent.cache import AgentCache
from warren.agent.session import ManagerList, Session
from warren.agent.status import Report, StatusQueue
from warren.agent.worker import Worker
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.model import TaskState

S = TaskState


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
            await stop_agent(stop, runner, worker, cache, server)

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
