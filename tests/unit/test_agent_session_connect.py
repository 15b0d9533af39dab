"""The agent's session against scripted dispatchers over real gRPC with mutual TLS: leader
redirect, COMPLETE then INCREMENTAL, resync on a version gap, reconnect when heartbeats fail,
NodeRemoved, and failed sessions counted in the next request. The runtime is the in-memory fake."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.unit.agent_fakes import FakeRuntime, Recorder, make_env, make_task
from tests.unit.scripted_dispatcher import INCREMENTAL, ScriptedDispatcher, description, run, serve, stop_agent
from tests.waiting import async_wait_for as until
from warren.agent.cache import AgentCache
from warren.agent.session import ManagerList, NodeRemoved, Session
from warren.agent.status import StatusQueue
from warren.agent.worker import Worker
from warren.api import convert
from warren.api.v1 import dispatcher_pb2 as dpb


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
            await stop_agent(stop, runner, worker, cache, server)

    run(scenario())


def _pb(task):  # type: ignore[no-untyped-def]
    return convert.task_to_pb(task, with_spec=True)
