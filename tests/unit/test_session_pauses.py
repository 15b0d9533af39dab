"""A session's pauses, which new work ends early but only one pause ahead (ADR 85), and what
counts as new work for a node. Pure."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from tests.unit.agent_fakes import make_task
from warren.manager.commitdigest import CommitDigest, is_work
from warren.manager.sessionpace import Pauses
from warren.manager.sessionwake import pause
from warren.model import Task, TaskState
from warren.state import Put

S = TaskState


def a_task(state: TaskState, desired: TaskState = S.RUNNING, node_id: str = "n1", task_id: str = "t1") -> Task:
    return msgspec.structs.replace(make_task(task_id, desired=desired, state=state), node_id=node_id)


def test_after_a_message_in_time_new_work_may_end_the_pause_at_once() -> None:
    pauses = Pauses()
    assert pauses.after_message(10.0, 2.0) == (10.0, 12.0)
    assert pauses.after_message(13.0, 1.5) == (13.0, 14.5)  # sent after its pause: no debt


def test_an_early_message_borrows_one_pause_and_the_next_waits_for_it() -> None:
    pauses = Pauses()
    pauses.after_message(10.0, 2.0)
    # Sent early at 10.5, inside the pause that ends at 12: new work may end the next pause only
    # from 12, and the pause ends by itself once both pauses are over, at 14.
    assert pauses.after_message(10.5, 2.0) == (12.0, 14.0)


@pytest.mark.parametrize("pause", [0.5, 2.0])
def test_work_that_keeps_coming_gets_about_one_message_per_pause(pause: float) -> None:
    """New work every 10 ms for 100 s: a session sends when it may, at most one pause ahead."""
    pauses = Pauses()
    now, sent = 0.0, 0
    early_from = 0.0
    while now < 100.0:
        now = max(now + 0.01, early_from)  # the next work, or the moment it may go
        sent += 1
        early_from, _ = pauses.after_message(now, pause)
    assert sent <= 100.0 / pause + 2


@pytest.mark.parametrize(
    ("state", "desired", "work"),
    [
        (S.ASSIGNED, S.RUNNING, True),  # placed, not taken up yet
        (S.PENDING, S.RUNNING, True),
        (S.PREPARING, S.RUNNING, False),  # the node's own report
        (S.RUNNING, S.RUNNING, False),
        (S.FAILED, S.RUNNING, False),
        (S.RUNNING, S.SHUTDOWN, True),  # told to stop
        (S.ASSIGNED, S.REJECTED, True),
        (S.SHUTDOWN, S.SHUTDOWN, False),  # stopped: reported by the node
        (S.COMPLETE, S.SHUTDOWN, False),
    ],
)
def test_work_is_an_order_the_node_has_not_acted_on(state: TaskState, desired: TaskState, work: bool) -> None:
    assert is_work(a_task(state, desired)) is work
    assert not is_work(a_task(state, desired, node_id=""))  # on no node: nobody to wake


def test_a_commit_names_the_nodes_it_gives_work() -> None:
    digest = CommitDigest(
        [
            Put("task", a_task(S.ASSIGNED, node_id="n1", task_id="new")),
            Put("task", a_task(S.RUNNING, node_id="n2", task_id="report")),
            Put("task", a_task(S.RUNNING, S.SHUTDOWN, node_id="n3", task_id="stop")),
        ]
    )
    assert digest.work == {"n1", "n3"}


@pytest.mark.parametrize(
    ("rung", "early_in", "until_in", "ends_in"),
    [
        (True, 0.05, 30.0, 0.05),  # work came: the pause ends once work may end it
        (False, 0.05, 0.3, 0.3),  # no work: the whole pause
    ],
)
def test_a_pause_ends_early_only_for_work_and_not_before_it_may(
    rung: bool, early_in: float, until_in: float, ends_in: float
) -> None:
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        if rung:
            wake.set()
        started = loop.time()
        await pause(wake, started + early_in, started + until_in)
        return loop.time() - started

    took = asyncio.run(scenario())
    assert ends_in <= took < ends_in + 5.0  # far below the 30 s a wrong wait would take


def test_work_rung_during_the_pause_ends_it() -> None:
    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        started = time.monotonic()
        loop.call_later(0.1, wake.set)
        await pause(wake, loop.time(), loop.time() + 30.0)
        return time.monotonic() - started

    assert 0.1 <= asyncio.run(scenario()) < 5.0


def test_a_session_sent_something_at_every_pause_can_still_send_new_work_early() -> None:
    """Endpoint changes at every pause (nodes dying one after another) keep a session sending
    at each pause's end; new work must still be able to end a pause early now and then, not be
    held in debt for good."""
    pauses = Pauses()
    now, early = 0.0, 0
    early_from, until = pauses.after_message(now, 2.0)
    for step in range(100):
        if step % 10 == 5 and early_from <= now + 0.1:  # new work, 0.1 s into a pause
            now += 0.1
            early += 1
        else:
            now = until  # the routine message at the pause's end
        early_from, until = pauses.after_message(now, 2.0)
    assert early >= 8  # about one in each ten pauses, as the work came
