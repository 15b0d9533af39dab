"""The task controller's restarts against a fake runtime: the exit's outcome and the restart rule
(as the reconciler's), health checks gating RUNNING and failing a task, and local restarts under
the policy while the managers are unreachable."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from tests.unit.agent_fakes import FakeRuntime, Recorder, assert_forward, make_env, make_task, run
from tests.waiting import async_holds
from tests.waiting import async_wait_for as until
from warren.agent.controller import TaskController, exit_outcome, next_attempt
from warren.agent.runtime import TASK_LABEL, ContainerState, ContainerStatus
from warren.model import HealthCheck, RestartCondition, RestartPolicy, TaskState

S = TaskState


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
