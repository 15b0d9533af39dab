"""The rollout's decisions (ADR 33), pure: outcomes of new tasks, lanes, the failure action,
completion, and what a paused rollout does."""

from __future__ import annotations

import re

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from warren import commands, rollout, validate
from warren.model import (
    FailureAction,
    HealthCheck,
    RolloutState,
    Service,
    ServiceSpec,
    Task,
    TaskState,
    UpdateConfig,
    UpdateStatus,
)
from warren.rollout import Outcome
from warren.state import ClusterState, Put

NOW = 1000.0
STARTED = 900.0


def spec(**update: object) -> ServiceSpec:
    return ServiceSpec(name="web", image="app:2", replicas=4, update=UpdateConfig(**update))  # type: ignore[arg-type]


def service(state: RolloutState = RolloutState.UPDATING, **update: object) -> Service:
    status = UpdateStatus(state, STARTED, from_version=1, to_version=2)
    return Service(id="s1", spec=spec(**update), version=2, update_status=status)


def task(
    slot: int,
    state: TaskState = TaskState.RUNNING,
    ready_at: float = 0.0,
    health: str = "",
    desired: TaskState = TaskState.RUNNING,
    created_at: float = STARTED + 1,
) -> Task:
    return Task(
        id=f"t{slot}",
        service_id="s1",
        service_name="web",
        slot=slot,
        spec=spec(),
        spec_version=2,
        state=state,
        desired_state=desired,
        health=health,
        ready_at=ready_at,
        created_at=created_at,
        updated_at=created_at,
    )


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (task(1, TaskState.STARTING), Outcome.PENDING),
        (task(1, ready_at=NOW - 4.9), Outcome.PENDING),  # ready, but not for the 5 s monitor yet
        (task(1, ready_at=NOW - 5.0), Outcome.SUCCEEDED),
        (task(1, health="unhealthy", ready_at=0.0), Outcome.FAILED),
        (task(1, TaskState.FAILED), Outcome.FAILED),
        (task(1, TaskState.COMPLETE), Outcome.FAILED),  # a service's task that exits has failed
        (task(1, TaskState.REJECTED), Outcome.FAILED),
        (task(1, TaskState.ORPHANED), Outcome.STOPPED),  # lost with its node: not the image's fault
        (task(1, TaskState.FAILED, desired=TaskState.SHUTDOWN), Outcome.STOPPED),  # we stopped it
    ],
)
def test_outcome_of_a_new_task(t: Task, expected: Outcome) -> None:
    assert rollout.outcome(t, 5.0, NOW) == expected


def test_one_lane_replaces_one_task_at_a_time_and_waits_for_the_monitor() -> None:
    svc = service()
    assert rollout.step(svc, [], outdated=4, replicas=4, now=NOW) == rollout.Step(1)
    assert rollout.step(svc, [task(1, ready_at=NOW - 1)], outdated=3, replicas=4, now=NOW) == rollout.Step(0)
    assert rollout.step(svc, [task(1, ready_at=NOW - 5)], outdated=3, replicas=4, now=NOW) == rollout.Step(1)


def test_a_lane_is_free_again_a_delay_after_its_task_succeeded() -> None:
    svc = service(delay=10.0)
    assert rollout.step(svc, [task(1, ready_at=NOW - 14)], outdated=3, replicas=4, now=NOW).start == 0
    assert rollout.step(svc, [task(1, ready_at=NOW - 15)], outdated=3, replicas=4, now=NOW).start == 1


def test_parallelism_zero_replaces_everything_at_once() -> None:
    assert rollout.step(service(parallelism=0), [], outdated=4, replicas=4, now=NOW).start == 4


def test_the_first_failure_pauses_by_default_and_says_why() -> None:
    failed = msgspec.structs.replace(task(3), health="unhealthy")
    result = rollout.step(service(), [failed], outdated=3, replicas=4, now=NOW)
    assert result.start == 0 and not result.revert
    assert result.status is not None and result.status.state == RolloutState.PAUSED
    assert result.status.message == "paused: task web.3 failed its health check (image app:2)"
    assert result.status.completed_at == NOW


def test_failure_action_rollback_reverts_to_a_new_version() -> None:
    failed = task(2, TaskState.FAILED)
    failed = msgspec.structs.replace(failed, error="exit status 1")
    result = rollout.step(service(failure_action=FailureAction.ROLLBACK), [failed], 3, 4, NOW)
    assert result.revert and result.start == 0
    assert result.status == UpdateStatus(
        RolloutState.ROLLBACK_STARTED,
        NOW,
        from_version=2,
        to_version=3,
        message="rolled back: task web.2 failed: exit status 1 (image app:2)",
    )


def test_failures_within_the_ratio_continue() -> None:
    svc = service(max_failure_ratio=0.5, parallelism=2)
    one_failed = [task(1, TaskState.FAILED), task(2, ready_at=NOW - 10)]
    assert rollout.step(svc, one_failed, outdated=2, replicas=4, now=NOW) == rollout.Step(2)
    three_failed = [task(n, TaskState.FAILED) for n in (1, 2, 3)]
    result = rollout.step(svc, three_failed, outdated=1, replicas=4, now=NOW)
    assert result.status is not None and result.status.state == RolloutState.PAUSED
    assert result.status.message.startswith("paused: 3 new tasks failed, the first: task web.")


def test_failures_before_this_rollout_do_not_count() -> None:
    old_failure = task(1, TaskState.FAILED, created_at=STARTED - 1)
    assert rollout.step(service(), [old_failure], outdated=4, replicas=4, now=NOW) == rollout.Step(1)


def test_a_paused_rollout_starts_nothing_and_keeps_its_status() -> None:
    assert rollout.step(service(RolloutState.PAUSED), [], outdated=3, replicas=4, now=NOW) == rollout.Step(0)


def test_a_rollout_completes_once_nothing_is_outdated_or_pending() -> None:
    pending = [task(4, ready_at=NOW - 1)]
    assert rollout.step(service(), pending, outdated=0, replicas=4, now=NOW) == rollout.Step(0)
    done = rollout.step(service(), [task(4, ready_at=NOW - 5)], outdated=0, replicas=4, now=NOW)
    assert done.status is not None and done.status.state == RolloutState.COMPLETED and done.status.completed_at == NOW


def test_tasks_adopted_from_the_rollout_this_one_replaced_hold_it_open_until_ready() -> None:
    """A settings-only update during a rollout adopts the new tasks, created before it started:
    found by the reconciler's property test, it completed while they were not ready yet."""
    adopted = task(4, TaskState.STARTING, created_at=STARTED - 1)
    assert rollout.step(service(), [adopted], outdated=0, replicas=4, now=NOW) == rollout.Step(0)
    ready = task(4, ready_at=NOW - 5, created_at=STARTED - 1)
    done = rollout.step(service(), [ready], outdated=0, replicas=4, now=NOW)
    assert done.status is not None and done.status.state == RolloutState.COMPLETED
    failed_before = task(4, TaskState.FAILED, created_at=STARTED - 1)  # not this rollout's failure
    assert rollout.step(service(), [failed_before], outdated=0, replicas=4, now=NOW).status.state == (  # type: ignore[union-attr]
        RolloutState.COMPLETED
    )


def test_a_rollback_completes_as_rollback_completed_and_keeps_its_cause() -> None:
    svc = service(RolloutState.ROLLBACK_STARTED)
    svc = msgspec.structs.replace(svc, update_status=msgspec.structs.replace(svc.update_status, message="why"))
    done = rollout.step(svc, [], outdated=0, replicas=4, now=NOW)
    assert done.status is not None and (done.status.state, done.status.message) == (
        RolloutState.ROLLBACK_COMPLETED,
        "why",
    )


def test_a_rollback_uses_the_rollback_settings_and_a_failing_rollback_pauses() -> None:
    svc = service(RolloutState.ROLLBACK_STARTED)
    svc = msgspec.structs.replace(
        svc,
        spec=msgspec.structs.replace(
            svc.spec, rollback=UpdateConfig(parallelism=3, failure_action=FailureAction.ROLLBACK)
        ),
    )
    assert rollout.step(svc, [], outdated=4, replicas=4, now=NOW).start == 3
    result = rollout.step(svc, [task(1, TaskState.FAILED)], outdated=3, replicas=4, now=NOW)
    assert result.status is not None and result.status.state == RolloutState.ROLLBACK_PAUSED and not result.revert


@given(
    parallelism=st.integers(0, 5),
    outdated=st.integers(0, 8),
    outcomes=st.lists(st.sampled_from(["pending", "ready", "succeeded"]), max_size=8),
)
def test_never_more_in_flight_than_the_lanes(parallelism: int, outdated: int, outcomes: list[str]) -> None:
    ready = {"pending": 0.0, "ready": NOW - 1, "succeeded": NOW - 100}
    tasks = [
        task(n + 1, TaskState.RUNNING if o != "pending" else TaskState.STARTING, ready[o])
        for n, o in enumerate(outcomes)
    ]
    result = rollout.step(service(parallelism=parallelism), tasks, outdated, replicas=8, now=NOW)
    in_flight = sum(o != "succeeded" for o in outcomes)
    assert 0 <= result.start <= outdated
    if parallelism:
        assert result.start + in_flight <= max(parallelism, in_flight)
    if result.status is not None:
        assert result.status.state == RolloutState.COMPLETED and outdated == 0 and in_flight == 0


def test_a_task_is_ready_from_the_report_that_makes_it_so() -> None:
    health = HealthCheck(command=("true",))
    t = msgspec.structs.replace(task(1, TaskState.STARTING), spec=msgspec.structs.replace(spec(), health=health))
    state = ClusterState()
    state.apply([Put("task", t)])

    def report(at: float, **fields: object) -> float:
        update = commands.TaskUpdate(t.id, at, **fields)  # type: ignore[arg-type]
        state.apply(commands.apply(state, commands.ApplyPlan(updated=(update,)))[1])
        return state.tasks[t.id].ready_at

    assert report(10.0, state=TaskState.RUNNING, health="starting") == 0.0  # running, not yet healthy
    assert report(12.0, health="healthy") == 12.0
    assert report(20.0, message="still fine") == 12.0
    assert report(30.0, health="unhealthy") == 0.0


@pytest.mark.parametrize(
    ("config", "kind", "needle"),
    [
        (UpdateConfig(parallelism=-1), "update", "--update-parallelism must be between 0"),
        (UpdateConfig(max_failure_ratio=1.5), "update", "--update-max-failure-ratio must be between 0 and 1"),
        (UpdateConfig(max_failure_ratio=float("nan")), "update", "--update-max-failure-ratio"),
        (UpdateConfig(delay=-1.0), "update", "--update-delay must be"),
        (UpdateConfig(monitor=float("inf")), "rollback", "--rollback-monitor must be"),
        (UpdateConfig(failure_action=FailureAction.ROLLBACK), "rollback", "a rollback cannot roll back"),
    ],
)
def test_bad_rollout_settings_are_refused_with_the_flag_named(config: UpdateConfig, kind: str, needle: str) -> None:
    bad = msgspec.structs.replace(spec(), **{kind: config})
    with pytest.raises(validate.ValidationError, match=re.escape(needle)):
        validate.check_spec(bad)
    validate.check_spec(msgspec.structs.replace(spec(), update=UpdateConfig(failure_action=FailureAction.ROLLBACK)))
