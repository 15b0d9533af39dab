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
from warren.model import Service, ServiceSpec, TaskState
from warren.state import Put


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
        cases = ((0.1, 9.0, False), (0.1, 10.5, True), (2.0, 39.0, False), (2.0, 40.5, True), (9.0, 60.5, True))
        for took, since, full in cases:  # the last: one slow pass spaces the next by at most a minute
            orch._full_took, orch._last_full = took, time.monotonic() - since
            assert (orch._view(incremental=True)[1] is None) is full, (took, since)

    run(scenario())


def test_passes_read_a_copy_the_commits_keep_up_to_date() -> None:
    """ADR 92: the orchestrator copies the state once, then applies to its copy the commits
    noted since; a notice of a commit the copy already holds is skipped, and a resynchronise
    notice (changes dropped) makes the next pass copy the state again and visit everything."""

    async def scenario() -> None:
        manager = Manager()
        await manager.init()
        orch = manager.orchestrator
        with manager.hub.subscribe() as events:
            await orch.pass_once(incremental=True)  # a new leader's first pass: a copy, a full pass
            copy, index = orch._mirror, orch._mirror_index
            assert copy is not None and copy is not manager.store.state and index > 0
            await manager.control.CreateService(cpb.CreateServiceRequest(spec=web(0)), None)
            await asyncio.sleep(0)  # the hub hands the commits over on the loop
            while not events.empty():
                orch.note(events.get_nowait())
        stale = Service(id="late-notice", spec=ServiceSpec(name="late", image="busybox"), version=1, created_at=1.0)
        orch.note((index, [Put("service", stale)]))  # a commit the copy holds, noticed late
        state, visit = orch._view(incremental=True)
        assert state is copy  # no new copy
        assert visit is not None and set(visit.services) == set(manager.store.state.services)
        assert set(state.services) == set(manager.store.state.services) and "late-notice" not in state.services
        assert orch._mirror_index == manager.store.applied_index

        orch.note((manager.store.applied_index, None))
        state, visit = orch._view(incremental=True)
        assert visit is None and state is not copy

    run(scenario())
