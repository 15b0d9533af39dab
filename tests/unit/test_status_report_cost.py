"""A status report of what the state already holds costs no Raft entry (ADR 53): an agent
resending "running" for a running task (after a reconnect, say) proposes nothing; a batch
mixing news and repeats proposes the news alone."""

from __future__ import annotations

import time

from tests.unit.test_manager_services import Agent, Manager, run, web
from warren import commands
from warren.agent.status import Report
from warren.api.convert import report_to_pb
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.model import TaskState


def test_a_report_of_what_is_already_known_proposes_nothing() -> None:
    async def scenario() -> None:
        manager = Manager()
        await manager.init()
        agent = Agent(manager, "w1")
        try:
            await agent.until(lambda a: True)  # the session is open
            await manager.control.CreateService(cpb.CreateServiceRequest(spec=web(2)), None)
            await manager.orchestrator.pass_once()
            held = await agent.until(lambda a: len(a.tasks) == 2)
            first, second = sorted(held.tasks)
            at = time.time() - 1

            async def report(*reports: Report) -> list[commands.ReportTaskStatus]:
                before = len(manager.raft.proposed)
                request = dpb.UpdateTaskStatusRequest(
                    session_id=held.session_id, updates=[report_to_pb(r) for r in reports]
                )
                await manager.dispatcher.UpdateTaskStatus(request, None)
                proposed = manager.raft.proposed[before:]
                assert all(isinstance(c, commands.ReportTaskStatus) for c in proposed)
                return proposed  # type: ignore[return-value]

            (sent,) = await report(Report(first, TaskState.RUNNING, at))
            assert [u.id for u in sent.updates] == [first]
            assert await report(Report(first, TaskState.RUNNING, at)) == []  # already running
            (sent,) = await report(Report(first, TaskState.RUNNING, at), Report(second, TaskState.RUNNING, at))
            assert [u.id for u in sent.updates] == [second]  # the news alone
            assert {t.state for t in manager.store.state.tasks.values()} == {TaskState.RUNNING}
        finally:
            await agent.stream.aclose()

    run(scenario())
