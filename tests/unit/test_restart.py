"""The restart policy exists once (warren.restart); the reconciler and the agent both use it."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.core_sim import running_task, spec
from warren import restart
from warren.agent import controller
from warren.model import RestartCondition, RestartPolicy, Service, TaskState
from warren.reconciler import restart_attempt

policies = st.builds(
    RestartPolicy,
    condition=st.sampled_from(RestartCondition),
    delay=st.sampled_from([0.0, 0.5, 5.0]),
    max_attempts=st.integers(0, 4),
    window=st.sampled_from([0.0, 1.0, 10.0]),
)
ends = st.sampled_from([TaskState.COMPLETE, TaskState.FAILED, TaskState.REJECTED, TaskState.SHUTDOWN])


def test_the_agent_restarts_by_the_same_rule_as_the_reconciler() -> None:
    assert controller.next_attempt is restart.next_attempt


@given(
    policy=policies,
    outcome=ends,
    attempt=st.integers(0, 6),
    started_at=st.sampled_from([0.0, 100.0]),
    ran_for=st.sampled_from([0.0, 0.5, 1.0, 9.9, 10.0, 50.0]),
    waited=st.sampled_from([0.0, 0.4, 0.5, 5.0, 60.0]),
)
def test_the_reconciler_replaces_a_dead_task_as_the_policy_says(
    policy: RestartPolicy, outcome: TaskState, attempt: int, started_at: float, ran_for: float, waited: float
) -> None:
    s = spec("web", restart=policy)
    service = Service(id="svc", spec=s, version=3)
    ended_at = started_at + ran_for if started_at else 200.0
    dead = msgspec.structs.replace(
        running_task("t1", "svc", s, "n1"),
        spec_version=3,
        state=outcome,
        attempt=attempt,
        started_at=started_at,
        updated_at=ended_at,
    )
    # A task whose start the managers never saw ran for no time as far as the window goes.
    expected = restart.next_attempt(policy, outcome, attempt, ran_for if started_at else 0.0)
    if waited < policy.delay:
        expected = None  # not yet: the restart delay is measured from the end
    assert restart_attempt(dead, service, now=ended_at + waited) == expected


@given(policy=policies, outcome=ends)
def test_a_task_that_keeps_dying_fast_gets_max_attempts_tries(policy: RestartPolicy, outcome: TaskState) -> None:
    tries, attempt = 0, 0
    while tries < 20 and (found := restart.next_attempt(policy, outcome, attempt, ran_for=0.0)) is not None:
        assert found == attempt + 1
        tries, attempt = tries + 1, found
    if policy.condition == RestartCondition.NONE or (
        policy.condition == RestartCondition.ON_FAILURE and outcome == TaskState.COMPLETE
    ):
        assert tries == 0
    else:
        assert tries == (policy.max_attempts or 20)


@given(policy=policies, outcome=ends, attempt=st.integers(0, 6))
def test_a_run_as_long_as_the_window_starts_the_count_again(
    policy: RestartPolicy, outcome: TaskState, attempt: int
) -> None:
    long_run = restart.next_attempt(policy, outcome, attempt, ran_for=policy.window)
    short_run = restart.next_attempt(policy, outcome, attempt, ran_for=0.0)
    if policy.window > 0 and short_run is not None:
        assert long_run == 1
    if policy.window > 0 and long_run is None:
        assert short_run is None  # a long run never has fewer tries left than a short one
    if policy.window == 0:
        assert long_run == short_run
