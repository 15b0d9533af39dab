"""The task controller re-adopting what ran before an agent restart, against a fake runtime: a
running container kept, an exit or a missing container meanwhile reported, stray duplicates removed."""

from __future__ import annotations

from pathlib import Path

import msgspec

from tests.unit.agent_fakes import FakeRuntime, Recorder, make_env, make_task, run
from tests.waiting import async_holds
from tests.waiting import async_wait_for as until
from warren.agent.cache import LocalState
from warren.agent.controller import TaskController
from warren.model import TaskState

S = TaskState


def test_running_container_is_adopted_not_duplicated(tmp_path: Path) -> None:
    rt, rec = FakeRuntime(), Recorder()
    task = make_task(state=S.RUNNING)
    rid = rt.prepare(msgspec.structs.replace(_spec(tmp_path, task)))
    rt.start(rid)
    rt.calls.clear()
    local = LocalState(state=S.RUNNING, runtime_id=rid, started=True)

    async def scenario() -> None:
        ctl = TaskController(task, make_env(rt, rec, tmp_path), local, rt.of_task("task1"))
        ctl.start()
        await async_holds(
            lambda: rt.steps("prepare") == [] and rt.steps("start") == [], 0.2, message="the adopted container kept"
        )
        rt.exit(rid, 9)  # the adopted process is watched
        await until(lambda: rec.last_state() == S.FAILED, message="exit of adopted container")
        await ctl.close()

    run(scenario())
    assert rec.last().error == "task exited with code 9"


def test_exit_during_agent_downtime_is_reported(tmp_path: Path) -> None:
    rt, rec = FakeRuntime(), Recorder()
    rec.connected = False
    task = make_task(state=S.RUNNING)
    rid = rt.prepare(_spec(tmp_path, task))
    rt.start(rid)
    rt.exit(rid, None)
    local = LocalState(state=S.RUNNING, runtime_id=rid, started=True)

    async def scenario() -> None:
        ctl = TaskController(task, make_env(rt, rec, tmp_path), local, rt.of_task("task1"))
        ctl.start()
        await until(lambda: rec.reports, message="report")
        await ctl.close()

    run(scenario())
    assert rec.last().state == S.FAILED and "exit code unknown" in rec.last().error
    assert len(rt.steps("start")) == 1


def test_missing_container_of_a_started_task_fails_it(tmp_path: Path) -> None:
    rt, rec = FakeRuntime(), Recorder()
    local = LocalState(state=S.RUNNING, runtime_id="gone", started=True)

    async def scenario() -> None:
        ctl = TaskController(make_task(state=S.RUNNING), make_env(rt, rec, tmp_path), local, [])
        ctl.start()
        await until(lambda: rec.reports, message="report")
        await ctl.close()

    run(scenario())
    assert rec.last().state == S.FAILED and "disappeared" in rec.last().error
    assert rt.steps("prepare") == []


def test_stray_duplicates_of_a_task_are_removed_on_adoption(tmp_path: Path) -> None:
    rt, rec = FakeRuntime(), Recorder()
    task = make_task(state=S.RUNNING)
    first = rt.prepare(_spec(tmp_path, task))
    rt.start(first)
    rt.specs.clear()  # make the fake create a second container for the same task
    second = rt.prepare(_spec(tmp_path, task))
    rt.start(second)
    local = LocalState(state=S.RUNNING, runtime_id=second, started=True)

    async def scenario() -> None:
        ctl = TaskController(task, make_env(rt, rec, tmp_path), local, rt.of_task("task1"))
        ctl.start()
        await until(lambda: first not in rt.containers, message="duplicate removed")
        await ctl.close()

    run(scenario())
    assert rt.running() == [second]


def _spec(tmp_path: Path, task):  # type: ignore[no-untyped-def]
    from warren.agent.controller import container_spec

    return container_spec(task, tmp_path)
