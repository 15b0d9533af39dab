"""Task controller transitions against a fake runtime: one step at a time, never backwards."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import pytest

from tests.unit.agent_fakes import FakeRuntime, Recorder, make_env, make_task
from tests.waiting import async_holds
from tests.waiting import async_wait_for as until
from warren.agent.cache import LocalState
from warren.agent.controller import TaskController, exit_outcome, next_attempt
from warren.agent.runtime import SERVICE_LABEL, TASK_LABEL, ContainerState, ContainerStatus, RuntimeFailure
from warren.model import HealthCheck, RestartCondition, RestartPolicy, TaskState

S = TaskState


def assert_forward(states: list[TaskState]) -> None:
    """Reported states never go backwards (a repeat is a health or message change)."""
    assert states == sorted(states), states


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 20))


# -- pure rules ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "outcome", "attempt", "ran_for", "expected"),
    [
        (RestartPolicy(RestartCondition.ANY), S.FAILED, 0, 0.0, 1),
        (RestartPolicy(RestartCondition.ANY), S.COMPLETE, 2, 0.0, 3),
        (RestartPolicy(RestartCondition.NONE), S.FAILED, 0, 0.0, None),
        (RestartPolicy(RestartCondition.ON_FAILURE), S.COMPLETE, 0, 0.0, None),
        (RestartPolicy(RestartCondition.ON_FAILURE), S.FAILED, 0, 0.0, 1),
        (RestartPolicy(RestartCondition.ANY, max_attempts=2), S.FAILED, 1, 0.0, 2),
        (RestartPolicy(RestartCondition.ANY, max_attempts=2), S.FAILED, 2, 0.0, None),
        # A run longer than the window resets the count, as the reconciler does.
        (RestartPolicy(RestartCondition.ANY, max_attempts=2, window=10), S.FAILED, 2, 11.0, 1),
        (RestartPolicy(RestartCondition.ANY, max_attempts=2, window=10), S.FAILED, 2, 9.0, None),
    ],
)
def test_next_attempt_mirrors_the_reconciler(policy, outcome, attempt, ran_for, expected) -> None:  # type: ignore[no-untyped-def]
    assert next_attempt(policy, outcome, attempt, ran_for) == expected


def test_exit_outcome() -> None:
    ok = ContainerStatus("c", ContainerState.EXITED, exit_code=0)
    assert exit_outcome(ok) == (S.COMPLETE, "")
    assert exit_outcome(msgspec.structs.replace(ok, exit_code=137)) == (S.FAILED, "task exited with code 137")
    assert exit_outcome(msgspec.structs.replace(ok, exit_code=None))[0] == S.FAILED
    assert exit_outcome(ContainerStatus("c", ContainerState.UNKNOWN))[0] == S.FAILED


# -- lifecycle ---------------------------------------------------------------------------------------
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


# -- health ------------------------------------------------------------------------------------------
def test_running_only_once_healthy_then_unhealthy_fails(tmp_path: Path) -> None:
    rt, rec = FakeRuntime(), Recorder()
    check = HealthCheck(kind="cmd", command=("true",), interval=0.05, timeout=1.0, retries=3)
    rt.exec_result = (1, "not yet")

    async def scenario() -> None:
        ctl = TaskController(make_task(health=check), make_env(rt, rec, tmp_path))
        ctl.start()
        await until(lambda: rec.last_state() == S.STARTING, message="starting")
        # Two failed checks (of the three allowed) were seen: the task is still only starting.
        await until(lambda: len(rt.steps("exec")) >= 2, message="two failing health checks")
        assert S.RUNNING not in rec.states()
        assert rec.last().health == "starting"
        rt.exec_result = (0, "fine")
        await until(lambda: rec.last_state() == S.RUNNING, message="running once healthy")
        assert rec.last().health == "healthy"
        rt.exec_result = (1, "boom")
        await until(lambda: rec.last_state() == S.FAILED, message="failed when unhealthy")
        await ctl.close()

    run(scenario())
    last = rec.last()
    assert last.error.startswith("unhealthy: health check failed 3 times: exit 1: boom"), last.error
    assert last.health == "unhealthy"
    assert rt.steps("stop")  # the unhealthy container is stopped
    assert_forward(rec.states())


def test_unhealthy_while_disconnected_is_restarted_locally(tmp_path: Path) -> None:
    rt, rec = FakeRuntime(), Recorder()
    rec.connected = False
    check = HealthCheck(kind="cmd", command=("true",), interval=0.05, timeout=1.0, retries=1)
    task = make_task(health=check, restart=RestartPolicy(RestartCondition.ON_FAILURE, delay=0.0))

    async def scenario() -> None:
        ctl = TaskController(task, make_env(rt, rec, tmp_path))
        ctl.start()
        await until(lambda: rec.last_state() == S.RUNNING, message="healthy")
        rt.exec_result = (1, "boom")
        await until(lambda: len(rt.steps("start")) == 2, message="local restart")
        rt.exec_result = (0, "fine again")
        await until(lambda: rec.last().health == "healthy" and ctl.local.restarts == 1, message="healthy again")
        await ctl.close()

    run(scenario())
    assert S.FAILED not in rec.states()
    assert "starting" in [r.health for r in rec.reports]


# -- autonomy ----------------------------------------------------------------------------------------
def test_disconnected_exit_restarts_locally_under_the_policy(tmp_path: Path) -> None:
    rt, rec = FakeRuntime(), Recorder()
    rec.connected = False
    task = make_task(restart=RestartPolicy(RestartCondition.ANY, delay=0.01, max_attempts=2))

    async def scenario() -> None:
        ctl = TaskController(task, make_env(rt, rec, tmp_path))
        ctl.start()
        await until(lambda: rt.running(), message="started")
        for n in (2, 3):
            rt.exit(rt.running()[0], 1)
            await until(lambda n=n: len(rt.steps("start")) == n and rt.running(), message=f"restart {n - 1}")
        assert S.FAILED not in rec.states()
        assert ctl.local.attempt == 2 and ctl.local.restarts == 2
        # max_attempts reached: the third exit is final, and reported.
        rt.exit(rt.running()[0], 1)
        await until(lambda: rec.last_state() == S.FAILED, message="final failure")
        await ctl.close()

    run(scenario())
    assert len(rt.steps("start")) == 3
    assert all(c.labels[TASK_LABEL] == "task1" for c in rt.containers.values())  # same task id
    assert_forward(rec.states())


def test_pending_local_restart_is_reported_instead_once_reconnected(tmp_path: Path) -> None:
    rt, rec = FakeRuntime(), Recorder()
    rec.connected = False
    task = make_task(restart=RestartPolicy(RestartCondition.ANY, delay=30.0))

    async def scenario() -> None:
        ctl = TaskController(task, make_env(rt, rec, tmp_path))
        ctl.start()
        await until(lambda: rt.running(), message="started")
        rt.exit(rt.running()[0], 2)
        # waiting out the restart delay
        await async_holds(lambda: rec.last_state() == S.RUNNING, 0.2, message="no report while disconnected")
        rec.connected = True
        ctl.poke()
        await until(lambda: rec.last_state() == S.FAILED, message="failure reported")
        await ctl.close()

    run(scenario())
    assert len(rt.steps("start")) == 1
    assert rec.last().error == "task exited with code 2"


# -- re-adoption -------------------------------------------------------------------------------------
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


# -- task networks (ADR 23): released whatever way the task ends ---------------------------------
class FakeNetworks:
    """The TaskNetworks port in memory: which task namespaces exist now."""

    def __init__(self) -> None:
        self.attached: set[str] = set()
        self.detached: list[str] = []

    def attach(self, task_id: str, address: str) -> str:
        self.attached.add(task_id)
        return f"/run/netns/wt-{task_id}"

    def resolv_conf(self) -> str:
        return ""

    def detach(self, task_id: str) -> None:
        self.attached.discard(task_id)
        self.detached.append(task_id)


def on_overlay(task_id: str = "task1", **kwargs: object):  # type: ignore[no-untyped-def]
    return msgspec.structs.replace(make_task(task_id, **kwargs), overlay_address="10.200.0.2")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "failures",
    [
        [RuntimeFailure("image not found: nosuch:latest", permanent=True)],  # rejected at once
        [RuntimeFailure("registry unreachable")] * 10,  # retried, then failed
    ],
)
def test_a_task_that_fails_while_preparing_releases_its_network(tmp_path: Path, failures: list) -> None:
    rt, rec, nets = FakeRuntime(), Recorder(), FakeNetworks()
    rt.fail["prepare"] = failures

    async def scenario() -> None:
        ctl = TaskController(on_overlay(), make_env(rt, rec, tmp_path, networks=nets))
        ctl.start()
        await until(lambda: rec.last_state() in (S.REJECTED, S.FAILED), message="the task to end")
        await until(lambda: not nets.attached, message="its network released")
        await ctl.close()

    run(scenario())
    assert rt.containers == {} and nets.detached == ["task1"]


def test_an_ended_task_whose_address_was_given_back_still_releases_its_network(tmp_path: Path) -> None:
    """The managers free an ended task's overlay address; its namespace is the agent's to remove."""
    rt, rec, nets = FakeRuntime(), Recorder(), FakeNetworks()
    task = on_overlay(restart=RestartPolicy(RestartCondition.NONE))

    async def scenario() -> None:
        ctl = TaskController(task, make_env(rt, rec, tmp_path, networks=nets))
        ctl.start()
        await until(lambda: rec.last_state() == S.RUNNING, message="running")
        ctl.update(msgspec.structs.replace(task, overlay_address="", state=S.RUNNING))
        (runtime_id,) = rt.containers
        rt.exit(runtime_id, 1)
        await until(lambda: rec.last_state() == S.FAILED, message="failed")
        await until(lambda: not nets.attached, message="its network released")
        await ctl.close()

    run(scenario())
    assert nets.detached == ["task1"]


def test_a_removed_task_that_never_had_a_container_releases_its_network(tmp_path: Path) -> None:
    rt, rec, nets = FakeRuntime(), Recorder(), FakeNetworks()
    rt.fail["prepare"] = [RuntimeFailure("registry unreachable")] * 10
    done: list[str] = []

    async def scenario() -> None:
        env = make_env(rt, rec, tmp_path, networks=nets, retry_delays=(30.0,))
        ctl = TaskController(on_overlay(), env, on_done=done.append)
        ctl.start()
        await until(lambda: any("retrying" in r.message for r in rec.reports), message="a retry")
        assert nets.attached == {"task1"}
        ctl.remove()  # `service rm` while it waits to retry
        await asyncio.wait_for(ctl.done.wait(), 5)
        await ctl.close()

    run(scenario())
    assert done == ["task1"] and not nets.attached and rt.containers == {}
