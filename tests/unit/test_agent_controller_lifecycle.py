"""Task controller transitions against a fake runtime, one step at a time and never backwards:
a task run, its exit, prepare failures rejected or retried, shutdown, removal, and stale or
terminal copies from the managers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import pytest

from tests.unit.agent_fakes import FakeRuntime, Recorder, assert_forward, make_env, make_task, run
from tests.waiting import async_holds
from tests.waiting import async_wait_for as until
from warren.agent.controller import TaskController
from warren.agent.runtime import SERVICE_LABEL, TASK_LABEL, RuntimeFailure
from warren.model import TaskState

S = TaskState


def test_assigned_task_runs_and_reports_each_step_forward(tmp_path: Path) -> None:
    rt, rec = FakeRuntime(), Recorder()

    async def scenario() -> None:
        ctl = TaskController(make_task(), make_env(rt, rec, tmp_path))
        ctl.start()
        await until(lambda: rec.last_state() == S.RUNNING, message="running")
        await ctl.close()

    run(scenario())
    assert rec.states() == [S.ACCEPTED, S.PREPARING, S.STARTING, S.RUNNING]
    (rid,) = rt.running()
    spec = rt.specs[rid]
    assert spec.labels == {TASK_LABEL: "task1", SERVICE_LABEL: "web"}
    assert spec.log_path == str(tmp_path / "task1.log")
    assert spec.command == ("sleep", "1000")
    assert rec.last().runtime_id == rid
    assert rec.saved["task1"].state == S.RUNNING  # type: ignore[attr-defined]
    assert rec.saved["task1"].started  # type: ignore[attr-defined]
    # Closing the agent leaves the container running, for re-adoption.
    assert rt.steps("stop") == []


@pytest.mark.parametrize(("code", "state", "error"), [(0, S.COMPLETE, ""), (3, S.FAILED, "task exited with code 3")])
def test_exit_while_connected_is_reported(tmp_path: Path, code: int, state: TaskState, error: str) -> None:
    rt, rec = FakeRuntime(), Recorder()

    async def scenario() -> None:
        ctl = TaskController(make_task(), make_env(rt, rec, tmp_path))
        ctl.start()
        await until(lambda: rt.running(), message="started")
        rt.exit(rt.running()[0], code)
        await until(lambda: rec.last_state() == state, message=state.label)
        # An ended task never runs again: its container goes at once; the report keeps the facts.
        await until(lambda: not rt.containers, message="the ended task's container removed")
        await async_holds(lambda: not ctl.done.is_set(), 0.1, message="the ended task kept")
        await ctl.close()
        assert not ctl.done.is_set()  # the task itself stays (history) until the managers drop it

    run(scenario())
    last = rec.last()
    assert last.exit_code == code and last.error == error and last.state == state
    assert len(rt.steps("start")) == 1  # the manager decides about a replacement, not the agent
    assert len(rt.steps("remove")) == 1
    assert_forward(rec.states())


def test_permanent_prepare_failure_rejects_the_task(tmp_path: Path) -> None:
    rt, rec = FakeRuntime(), Recorder()
    rt.fail["prepare"] = [RuntimeFailure("image not found: nosuch:latest", permanent=True)]

    async def scenario() -> None:
        ctl = TaskController(make_task(), make_env(rt, rec, tmp_path))
        ctl.start()
        await until(lambda: rec.last_state() == S.REJECTED, message="rejected")
        await ctl.close()

    run(scenario())
    assert rec.last().error == "image not found: nosuch:latest"
    assert rt.steps("start") == []


def test_task_updates_do_not_cut_a_retry_delay_short_but_a_shutdown_does(tmp_path: Path) -> None:
    """Each retry report comes back from the managers as a task update; the delay must hold."""
    rt, rec = FakeRuntime(), Recorder()
    rt.fail["prepare"] = [RuntimeFailure("registry unreachable")] * 3

    async def scenario() -> None:
        ctl = TaskController(make_task(), make_env(rt, rec, tmp_path, retry_delays=(2.0, 30.0, 30.0)))
        ctl.start()
        await until(lambda: any("retrying" in r.message for r in rec.reports), message="the first retry report")
        reported, echoes = time.monotonic(), 0
        # The managers echo the report back, several times, well within the delay (on a loaded
        # machine ten echoes once outlasted a 0.6 s delay).
        while echoes < 3 or time.monotonic() - reported < 1.0:
            ctl.update(make_task(state=S.PREPARING))
            echoes += 1
            await async_holds(lambda: len(rt.steps("prepare")) == 1, 0.03, message="no retry before its delay")
        await until(lambda: len(rt.steps("prepare")) == 2, message="the retry after its delay")
        await until(lambda: "attempt 3" in rec.last().message, message="the second retry report")
        ctl.update(make_task(state=S.PREPARING, desired=S.SHUTDOWN))  # 30 s delay: stopping cuts it short
        await until(lambda: rec.last_state() == S.SHUTDOWN, timeout=2.0, message="shut down at once")
        await ctl.close()

    run(scenario())
    assert len(rt.steps("prepare")) == 2


def test_transient_prepare_failures_are_retried_then_fail(tmp_path: Path) -> None:
    rt, rec = FakeRuntime(), Recorder()
    rt.fail["prepare"] = [RuntimeFailure("registry unreachable")] * 2

    async def scenario() -> None:
        ctl = TaskController(make_task(), make_env(rt, rec, tmp_path))
        ctl.start()
        await until(lambda: rec.last_state() == S.RUNNING, message="running after retries")
        await ctl.close()

    run(scenario())
    assert len(rt.steps("prepare")) == 3
    # Each retry is reported while it waits, so `service ps` says why the task is not running.
    retrying = [(r.state, r.message) for r in rec.reports if "retrying" in r.message]
    assert retrying == [
        (S.PREPARING, "preparing failed: registry unreachable (retrying, attempt 2)"),
        (S.PREPARING, "preparing failed: registry unreachable (retrying, attempt 3)"),
    ]
    assert rec.last().message == "started" and rec.last().error == ""

    rt2, rec2 = FakeRuntime(), Recorder()
    rt2.fail["prepare"] = [RuntimeFailure("registry unreachable")] * 10

    async def exhausted() -> None:
        ctl = TaskController(make_task(), make_env(rt2, rec2, tmp_path))
        ctl.start()
        await until(lambda: rec2.last_state() == S.FAILED, message="failed")
        await ctl.close()

    run(exhausted())
    assert rec2.last().error == "preparing failed: registry unreachable"
    assert len(rt2.steps("prepare")) == 4  # 1 + 3 retries


def test_desired_shutdown_stops_gracefully_reports_then_removes(tmp_path: Path) -> None:
    rt, rec = FakeRuntime(), Recorder()
    task = make_task(stop_grace_period=3.0)

    async def scenario() -> None:
        ctl = TaskController(task, make_env(rt, rec, tmp_path))
        ctl.start()
        await until(lambda: rec.last_state() == S.RUNNING, message="running")
        ctl.update(msgspec.structs.replace(task, desired_state=S.SHUTDOWN, message="shutdown: scaled down"))
        await until(lambda: not rt.containers, message="container removed")
        await ctl.close()

    run(scenario())
    assert rec.last_state() == S.SHUTDOWN
    assert rec.last().message == "shutdown: scaled down"
    assert rec.last().exit_code == 143
    (stop,) = rt.steps("stop")
    assert stop.endswith(" 3 SIGTERM")
    assert [c for c, _ in rt.calls][-2:] == ["stop", "remove"]


def test_shutdown_before_start_never_starts(tmp_path: Path) -> None:
    rt, rec = FakeRuntime(), Recorder()

    async def scenario() -> None:
        ctl = TaskController(make_task(desired=S.SHUTDOWN), make_env(rt, rec, tmp_path))
        ctl.start()
        await until(lambda: rec.last_state() == S.SHUTDOWN, message="shutdown")
        await ctl.close()

    run(scenario())
    assert rt.steps("start") == [] and rt.steps("prepare") == []


def test_removed_task_is_stopped_and_removed_quietly(tmp_path: Path) -> None:
    rt, rec = FakeRuntime(), Recorder()
    done: list[str] = []

    async def scenario() -> None:
        ctl = TaskController(make_task(), make_env(rt, rec, tmp_path), on_done=done.append)
        ctl.start()
        await until(lambda: rec.last_state() == S.RUNNING, message="running")
        before = len(rec.reports)
        for name in ("task1.log", "task1.idx", "task1.log.1", "task1.idx.1", "task10.log"):
            (tmp_path / name).write_text("x")  # its log, index and rotated copies; another task's log
        ctl.remove()
        await asyncio.wait_for(ctl.done.wait(), 5)
        assert len(rec.reports) == before  # the managers forgot the task: nothing to report
        await ctl.close()

    run(scenario())
    assert done == ["task1"] and not rt.containers
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["task10.log"]  # its files went with it


def test_never_reports_backwards(tmp_path: Path) -> None:
    """A stale task copy (state ASSIGNED) must not make a running task report ACCEPTED."""
    rt, rec = FakeRuntime(), Recorder()
    task = make_task()

    async def scenario() -> None:
        ctl = TaskController(task, make_env(rt, rec, tmp_path))
        ctl.start()
        await until(lambda: rec.last_state() == S.RUNNING, message="running")
        ctl.update(task)
        await async_holds(lambda: rec.last_state() == S.RUNNING, 0.2, message="still reporting RUNNING")
        await ctl.close()

    run(scenario())
    assert rec.states() == [S.ACCEPTED, S.PREPARING, S.STARTING, S.RUNNING]


def test_terminal_task_from_the_managers_never_runs(tmp_path: Path) -> None:
    rt, rec = FakeRuntime(), Recorder()

    async def scenario() -> None:
        ctl = TaskController(make_task(state=S.FAILED), make_env(rt, rec, tmp_path))
        ctl.start()
        await async_holds(lambda: rt.calls == [] and rec.reports == [], 0.2, message="nothing run or reported")
        await ctl.close()

    run(scenario())
    assert rt.calls == [] and rec.reports == []
