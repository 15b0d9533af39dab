"""A session's waits never swallow a cancellation (#15). Python 3.11's asyncio.wait_for returns the
result, instead of raising CancelledError, when the future it waits for completes in the same loop
turn as the cancel; the agent's heartbeat loop and the dispatcher's session loop then went on
after their session was cancelled, and whoever awaited them waited for ever. Each test cancels
the wait at every loop turn around its completion, so one of them hits the race."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, cast

from tests.unit.dispatcher_cluster import Cluster, description
from warren.agent import session as agent_session
from warren.agent.session import ManagerList, Session
from warren.agent.status import StatusQueue
from warren.agent.worker import Worker
from warren.aio import wait_within
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager.server import caller
from warren.model import Node
from warren.pki import Identity
from warren.state import Put

TURNS = 8  # loop turns between the completion and the cancel: the race is at one of them
ENDS_WITHIN = 2.0  # a cancelled wait ends in a few turns; a swallowed cancel loops for ever


async def _swallowed(
    start: Callable[[asyncio.Event], Coroutine[Any, Any, object]], complete: Callable[[], None]
) -> list[int]:
    """The turns after completion at which a cancel of `start(ready)`'s task did not end it
    cancelled (`start` sets `ready` right before the wait, which it reaches in that loop turn)."""
    swallowed = []
    for turns in range(TURNS):
        ready = asyncio.Event()
        task = asyncio.create_task(start(ready))
        await ready.wait()
        for _ in range(2):  # let it reach its wait
            await asyncio.sleep(0)
        complete()
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=ENDS_WITHIN)
        if not (done and task.cancelled()):
            swallowed.append(turns)
        while not task.done():  # clean up a task that went on
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
    return swallowed


def test_wait_within_never_swallows_a_cancellation() -> None:
    async def main() -> list[int]:
        event = asyncio.Event()

        async def wait(ready: asyncio.Event) -> object:
            event.clear()
            ready.set()
            await wait_within(event.wait(), 10.0)
            return await asyncio.Event().wait()  # what a swallowed cancel would run into: the next wait

        return await _swallowed(wait, event.set)

    assert asyncio.run(main()) == []


def test_wait_within_times_out_like_wait_for() -> None:
    async def main() -> None:
        try:
            await wait_within(asyncio.Event().wait(), 0.01)
        except TimeoutError:
            return
        raise AssertionError("no TimeoutError")

    asyncio.run(main())


def test_the_agents_stop_wait_is_cancelled_when_stop_is_set_at_once() -> None:
    async def main() -> list[int]:
        stop = asyncio.Event()

        async def sleep(ready: asyncio.Event) -> None:
            stop.clear()
            ready.set()
            await agent_session._sleep_unless(stop, 10.0)
            await asyncio.Event().wait()  # what a swallowed cancel would run into: the next wait

        return await _swallowed(sleep, stop.set)

    assert asyncio.run(main()) == []


class _Beats:
    """A Heartbeats stream whose every beat is answered at once."""

    async def write(self, request: dpb.HeartbeatRequest) -> None:
        pass

    async def read(self) -> dpb.HeartbeatResponse:
        return dpb.HeartbeatResponse(period=10.0)

    def cancel(self) -> bool:
        return True


class _Stub:
    """A dispatcher stub whose heartbeats succeed at once, on the stream or as calls."""

    def Heartbeats(self) -> _Beats:
        return _Beats()

    async def Heartbeat(self, request: dpb.HeartbeatRequest, timeout: float) -> dpb.HeartbeatResponse:
        return dpb.HeartbeatResponse(period=10.0)


def test_the_heartbeat_loop_ends_when_cancelled_as_the_routing_changes(tmp_path: Path) -> None:
    async def main() -> list[int]:
        session = Session(
            tmp_path, ManagerList(), lambda: dpb.NodeDescription(), cast(Worker, None), cast(StatusQueue, None)
        )

        async def start(ready: asyncio.Event) -> None:
            session.period = 0.0  # the first beat at once, then a wait for the routing to change
            ready.set()
            await session._heartbeat(cast(Any, _Stub()), "s1", cast(Any, None))

        return await _swallowed(start, session.routing_changed.set)

    assert asyncio.run(main()) == []


def test_the_dispatchers_session_loop_ends_when_cancelled_as_a_change_arrives(tmp_path: Path) -> None:
    async def main() -> list[int]:
        cluster = Cluster(tmp_path)
        index = [100]

        def commit() -> None:  # a change that concerns no session: the loop would wait again
            index[0] += 1
            other = Node(id=f"other{index[0]}", hostname=f"other{index[0]}")
            cluster.store.commit(index[0], [Put("node", other)])

        async def session(ready: asyncio.Event) -> object:
            caller.set(Identity("node001", "worker", "c1", dt.datetime(2100, 1, 1, tzinfo=dt.UTC), 1))
            request = dpb.SessionRequest(description=description(1), specs_by_reference=True)
            stream = cluster.dispatcher.Session(request, None)
            try:
                await stream.__anext__()  # the COMPLETE message: the loop then waits for changes
                ready.set()
                return await stream.__anext__()
            finally:
                await stream.aclose()

        return await _swallowed(session, commit)

    assert asyncio.run(main()) == []
