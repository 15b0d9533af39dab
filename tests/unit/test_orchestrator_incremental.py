"""The orchestrator's loop runs incremental passes (ADR 53): the changes committed since the
last pass reach the next one through the EventHub, so a scale is acted on at once, long before
the periodic full pass."""

from __future__ import annotations

import asyncio
import time

from tests.unit.test_manager_services import Agent, Manager, run, web
from warren.agent.status import Report
from warren.api.convert import report_to_pb
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager import orchestrator
from warren.model import TaskState


def test_the_loop_acts_on_each_commit_between_full_passes() -> None:
    async def scenario() -> None:
        manager = Manager()
        await manager.init()
        agent = Agent(manager, "w1")
        loop = asyncio.create_task(manager.orchestrator.run())
        try:
            await manager.control.CreateService(cpb.CreateServiceRequest(spec=web(2)), None)
            held = await agent.until(lambda a: len(a.tasks) == 2)
            reports = [report_to_pb(Report(t, TaskState.RUNNING, time.time() - 1)) for t in held.tasks]
            await manager.dispatcher.UpdateTaskStatus(
                dpb.UpdateTaskStatusRequest(session_id=held.session_id, updates=reports), None
            )
            # Settled: the passes from here on visit only what commits touch (a full one is 10 s away).
            deadline = time.monotonic() + 5
            while manager.orchestrator.unsettled and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert manager.orchestrator.unsettled == frozenset()
            await manager.control.ScaleService(cpb.ScaleServiceRequest(service="web", replicas=3), None)
            held = await asyncio.wait_for(agent.until(lambda a: len(a.tasks) == 3), orchestrator.FULL_PASS_PERIOD / 2)
            assert sorted(t.slot for t in held.tasks.values()) == [1, 2, 3]
        finally:
            loop.cancel()
            await agent.stream.aclose()

    run(scenario())


def test_a_long_full_pass_spaces_the_next_one_out() -> None:
    """The safety net's full pass comes every FULL_PASS_PERIOD, or FULL_PASS_SPACING times as long
    as the last one took, whichever is longer (1-2 s each at 110,000 tasks), and at least every
    FULL_PASS_MAX_GAP."""

    async def scenario() -> None:
        manager = Manager()
        await manager.init()
        orch = manager.orchestrator
        await orch.pass_once(incremental=True)  # the first pass of a leader is a full one
        assert orch._full_took > 0
        snapshot = manager.store.snapshot()
        cases = ((0.1, 9.0, False), (0.1, 10.5, True), (2.0, 39.0, False), (2.0, 40.5, True), (9.0, 60.5, True))
        for took, since, full in cases:  # the last: one slow pass spaces the next by at most a minute
            orch._full_took, orch._last_full = took, time.monotonic() - since
            assert (orch._visit(snapshot, incremental=True) is None) is full, (took, since)

    run(scenario())
