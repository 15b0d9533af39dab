"""The agent's decisions (warren.agent.decisions), tested as plain functions: no asyncio, no
runtime. The controller that performs them is tested in test_agent_controller_*.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warren.agent.decisions import (
    ExitPlan,
    LocalState,
    Resume,
    Step,
    decide_step,
    plan_exit,
    plan_failure,
    plan_resume,
)
from warren.agent.runtime import ContainerState, ContainerStatus
from warren.model import RestartCondition, RestartPolicy, TaskState
from warren.restart import next_attempt

S = TaskState
agent_states = st.sampled_from([s for s in TaskState if s >= S.ASSIGNED])
desired_states = st.sampled_from([S.RUNNING, S.SHUTDOWN, S.COMPLETE])
locals_ = st.builds(
    LocalState,
    state=agent_states,
    runtime_id=st.sampled_from(["", "c1"]),
    started=st.booleans(),
    attempt=st.integers(0, 3),
    started_at=st.sampled_from([0.0, 100.0]),
    leaving=st.booleans(),
)
containers = st.builds(
    ContainerStatus,
    runtime_id=st.sampled_from(["c1", "c2", "c3"]),
    state=st.sampled_from(ContainerState),
    exit_code=st.sampled_from([None, 0, 1]),
)

# The state each step reports on success: the agent never reports a task backwards.
REPORTS = {Step.ACCEPT: S.ACCEPTED, Step.BEGIN_PREPARING: S.PREPARING, Step.PREPARE: S.STARTING}
RUNS = {Step.ACCEPT, Step.BEGIN_PREPARING, Step.PREPARE, Step.START, Step.MONITOR}


# -- decide_step -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("local", "desired", "released", "step"),
    [
        (LocalState(S.ASSIGNED), S.RUNNING, False, Step.ACCEPT),
        (LocalState(S.ACCEPTED), S.RUNNING, False, Step.BEGIN_PREPARING),
        (LocalState(S.PREPARING), S.RUNNING, False, Step.PREPARE),
        (LocalState(S.STARTING, runtime_id="c1"), S.RUNNING, False, Step.START),
        (LocalState(S.STARTING), S.RUNNING, False, Step.PREPARE),  # its container vanished before it started
        (LocalState(S.STARTING, runtime_id="c1", started=True), S.RUNNING, False, Step.MONITOR),
        (LocalState(S.RUNNING, runtime_id="c1", started=True), S.RUNNING, False, Step.MONITOR),
        (LocalState(S.RUNNING, runtime_id="c1", started=True), S.SHUTDOWN, False, Step.SHUTDOWN),
        (LocalState(S.ASSIGNED), S.SHUTDOWN, False, Step.SHUTDOWN),
        (LocalState(S.FAILED, runtime_id="c1"), S.RUNNING, False, Step.REMOVE_CONTAINER),
        (LocalState(S.FAILED), S.RUNNING, False, Step.RELEASE_NETWORK),
        (LocalState(S.FAILED), S.RUNNING, True, Step.WAIT),
        (LocalState(S.SHUTDOWN), S.SHUTDOWN, True, Step.WAIT),
        (LocalState(S.RUNNING, runtime_id="c1", started=True, leaving=True), S.RUNNING, False, Step.TEARDOWN),
        (LocalState(S.COMPLETE, leaving=True), S.RUNNING, True, Step.TEARDOWN),
    ],
)
def test_decide_step(local: LocalState, desired: TaskState, released: bool, step: Step) -> None:
    assert decide_step(local, desired, released) == step


@given(local=locals_, desired=desired_states, released=st.booleans())
def test_steps_only_move_forward_and_an_ended_task_never_runs_again(
    local: LocalState, desired: TaskState, released: bool
) -> None:
    step = decide_step(local, desired, released)
    if local.leaving:
        assert step == Step.TEARDOWN
        return
    if step in REPORTS and local.state < S.RUNNING:
        # Forward, or STARTING again when its container vanished before it started. (A RUNNING
        # task whose local restart was cut short is prepared again too; the controller's
        # can_transition guard then keeps it RUNNING.)
        assert REPORTS[step] > local.state or (step == Step.PREPARE and local.state == S.STARTING)
    if local.state.terminal:
        assert step not in RUNS and step != Step.SHUTDOWN
        assert (step == Step.WAIT) == (not local.runtime_id and released)
    elif desired > S.RUNNING:
        assert step == Step.SHUTDOWN
    if step == Step.START:
        assert local.runtime_id and not local.started
    if step == Step.MONITOR:
        assert local.started and local.state >= S.STARTING


# -- plan_failure ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("permanent", "reject", "gave_up", "state", "retry"),
    [
        (True, True, False, S.REJECTED, False),  # the node cannot prepare it (an unknown image)
        (True, False, False, S.FAILED, False),  # it was prepared but cannot start
        (False, True, False, S.PREPARING, True),  # transient: retried, state unchanged
        (False, False, False, S.PREPARING, True),
        (False, True, True, S.FAILED, False),  # the backoff gave up
    ],
)
def test_plan_failure(permanent: bool, reject: bool, gave_up: bool, state: TaskState, retry: bool) -> None:
    plan = plan_failure(
        S.PREPARING, "preparing", "no space", permanent=permanent, reject=reject, failures=2, gave_up=gave_up
    )
    assert (plan.state, plan.retry) == (state, retry)
    if retry:
        assert plan.message == "preparing failed: no space (retrying, attempt 3)" and plan.error == ""
    else:
        assert plan.message == "preparing failed" and "no space" in plan.error


# -- plan_exit ---------------------------------------------------------------------------------------
def exited(code: int | None, finished_at: float = 160.0) -> ContainerStatus:
    return ContainerStatus("c1", ContainerState.EXITED, exit_code=code, finished_at=finished_at)


def test_an_exit_while_connected_is_reported_for_the_managers_to_decide() -> None:
    local = LocalState(S.RUNNING, runtime_id="c1", started=True, started_at=100.0)
    assert plan_exit(RestartPolicy(), local, exited(0), None, True, 160.0, 0.0) == ExitPlan(S.COMPLETE, "")
    assert plan_exit(RestartPolicy(), local, exited(3), None, True, 160.0, 0.0) == ExitPlan(
        S.FAILED, "task exited with code 3"
    )


def test_an_unhealthy_stop_counts_as_the_failure_the_agent_forced() -> None:
    local = LocalState(S.RUNNING, runtime_id="c1", started=True, started_at=100.0)
    forced = (S.FAILED, "unhealthy: probe timed out")
    plan = plan_exit(RestartPolicy(RestartCondition.ON_FAILURE), local, exited(0), forced, False, 160.0, 0.0)
    assert (plan.outcome, plan.error, plan.restart_attempt) == (S.FAILED, "unhealthy: probe timed out", 1)


@given(
    policy=st.builds(
        RestartPolicy,
        condition=st.sampled_from(RestartCondition),
        delay=st.sampled_from([0.0, 1.0, 5.0]),
        max_attempts=st.integers(0, 3),
        window=st.sampled_from([0.0, 30.0]),
    ),
    attempt=st.integers(0, 4),
    code=st.sampled_from([None, 0, 1, 137]),
    connected=st.booleans(),
    ran_for=st.sampled_from([0.0, 29.0, 30.0, 300.0]),
    since_exit=st.sampled_from([0.0, 0.5, 5.0, 50.0]),
)
def test_a_disconnected_agent_restarts_by_the_one_restart_policy(
    policy: RestartPolicy, attempt: int, code: int | None, connected: bool, ran_for: float, since_exit: float
) -> None:
    local = LocalState(S.RUNNING, runtime_id="c1", started=True, attempt=attempt, started_at=100.0)
    plan = plan_exit(policy, local, exited(code), None, connected, 100.0 + ran_for, since_exit)
    assert plan.outcome == (S.COMPLETE if code == 0 else S.FAILED)
    expected = None if connected else next_attempt(policy, plan.outcome, attempt, ran_for)
    assert plan.restart_attempt == expected
    if expected is not None:
        assert plan.wait == max(0.0, policy.delay - since_exit)


# -- plan_resume -------------------------------------------------------------------------------------
def container(runtime_id: str, state: ContainerState, code: int | None = None) -> ContainerStatus:
    return ContainerStatus(runtime_id, state, exit_code=code)


RUNNING_C1 = container("c1", ContainerState.RUNNING)


@pytest.mark.parametrize(
    ("local", "cached", "found", "action"),
    [
        (LocalState(S.RUNNING, runtime_id="c1", started=True), True, [RUNNING_C1], Resume.ADOPT_RUNNING),
        (LocalState(S.RUNNING, runtime_id="c1", started=True), True, [], Resume.VANISHED),
        (LocalState(S.STARTING), False, [], Resume.UNTRACKED),  # the cache was lost
        (LocalState(S.STARTING, runtime_id="c1"), True, [], Resume.FORGET),  # prepared, never started
        (LocalState(S.ASSIGNED), True, [], Resume.NOTHING),
        (LocalState(S.FAILED, runtime_id="c1"), True, [], Resume.NOTHING),
        (LocalState(S.COMPLETE, runtime_id="c1"), True, [RUNNING_C1], Resume.STOP_ENDED),
        (LocalState(S.COMPLETE), True, [container("c1", ContainerState.EXITED, 0)], Resume.ADOPT),
        (LocalState(S.RUNNING, runtime_id="c1", started=True), True, [container("c1", ContainerState.EXITED, 1)],
         Resume.ADOPT_EXITED),
        (LocalState(S.PREPARING, runtime_id="c1"), True, [container("c1", ContainerState.CREATED)],
         Resume.ADOPT_CREATED),
    ],
)  # fmt: skip
def test_plan_resume(local: LocalState, cached: bool, found: list[ContainerStatus], action: Resume) -> None:
    assert plan_resume(local, cached, found).action == action


def test_resume_keeps_the_recorded_container_else_a_running_one() -> None:
    old = container("c0", ContainerState.EXITED, 0)
    live = container("c2", ContainerState.RUNNING)
    plan = plan_resume(LocalState(S.RUNNING, runtime_id="c1", started=True), True, [old, live])
    assert plan.current == live and plan.strays == (old,) and plan.action == Resume.ADOPT_RUNNING
    plan = plan_resume(LocalState(S.RUNNING, runtime_id="c0", started=True), True, [old, live])
    assert plan.current == old and plan.strays == (live,) and plan.action == Resume.ADOPT_EXITED


@given(local=locals_, cached=st.booleans(), found=st.lists(containers, max_size=3, unique_by=lambda c: c.runtime_id))
def test_resume_keeps_at_most_one_container_and_never_runs_an_ended_task(
    local: LocalState, cached: bool, found: list[ContainerStatus]
) -> None:
    plan = plan_resume(local, cached, found)
    kept = [] if plan.current is None else [plan.current]
    assert sorted(c.runtime_id for c in kept + list(plan.strays)) == sorted(c.runtime_id for c in found)
    if plan.current is not None and any(c.runtime_id == local.runtime_id for c in found):
        assert plan.current.runtime_id == local.runtime_id
    if local.state.terminal:
        assert plan.action in (Resume.NOTHING, Resume.ADOPT, Resume.STOP_ENDED)
    if plan.action == Resume.STOP_ENDED:
        assert plan.current is not None and plan.current.state == ContainerState.RUNNING
    if plan.action in (Resume.VANISHED, Resume.UNTRACKED, Resume.FORGET):
        assert plan.current is None and not local.state.terminal
