"""Reconciler scenarios of the restart policy, each run through the real FSM (`commands.apply` +
`ClusterState.apply`): the condition, the delay, max attempts and the window, and a dead task's
verdict kept on a lost node."""

from __future__ import annotations

import pytest

from tests.unit.core_sim import cluster, idle, spec
from warren.model import RestartCondition, RestartPolicy, TaskState
from warren.reconciler import is_empty


@pytest.mark.parametrize(
    ("condition", "end", "replaced"),
    [
        (RestartCondition.NONE, TaskState.FAILED, False),
        (RestartCondition.NONE, TaskState.COMPLETE, False),
        (RestartCondition.ON_FAILURE, TaskState.FAILED, True),
        (RestartCondition.ON_FAILURE, TaskState.REJECTED, True),
        (RestartCondition.ON_FAILURE, TaskState.COMPLETE, False),
        (RestartCondition.ANY, TaskState.COMPLETE, True),
        (RestartCondition.ANY, TaskState.FAILED, True),
    ],
)
def test_restart_condition(condition: RestartCondition, end: TaskState, replaced: bool) -> None:
    sim = cluster("n1")
    svc = sim.create_service(spec("job", replicas=2, restart=RestartPolicy(condition=condition, delay=0.0)))
    sim.reconcile()
    sim.agents_step()
    dead = sim.live(svc)[0]
    sim.report(dead, end, exit_code=0 if end == TaskState.COMPLETE else 1)
    plan = sim.reconcile()
    if replaced:
        assert [(t.slot, t.attempt) for t in plan.created] == [(dead.slot, 1)]
    else:
        # The dead task keeps its slot: no replacement, and no extra slot either.
        assert is_empty(plan)
    idle(sim)


def test_restart_delay_counts_from_the_death() -> None:
    sim = cluster("n1")
    svc = sim.create_service(spec("web", restart=RestartPolicy(delay=10.0)))
    sim.reconcile()
    sim.agents_step()
    sim.report(sim.live(svc)[0], TaskState.FAILED, exit_code=1)
    sim.tick(9.9)
    idle(sim)
    sim.tick(0.1)
    assert len(sim.reconcile().created) == 1


def test_max_attempts_stops_restarting() -> None:
    sim = cluster("n1")
    svc = sim.create_service(spec("web", restart=RestartPolicy(delay=0.0, max_attempts=2)))
    attempts = []
    for _ in range(5):
        plan = sim.reconcile()
        attempts += [t.attempt for t in plan.created]
        sim.agents_step()
        for t in sim.running(svc):
            sim.report(t, TaskState.FAILED, exit_code=1)
        sim.tick()
    assert attempts == [0, 1, 2]


def test_a_task_that_ran_for_the_window_resets_the_attempts() -> None:
    sim = cluster("n1")
    policy = RestartPolicy(delay=0.0, max_attempts=1, window=60.0)
    svc = sim.create_service(spec("web", restart=policy))
    sim.converge()
    sim.report(sim.running(svc)[0], TaskState.FAILED, exit_code=1)  # a quick failure: attempt 1 of 1
    assert [t.attempt for t in sim.reconcile().created] == [1]
    sim.agents_step()
    sim.tick(100)  # this one ran long: its failure starts a new count
    sim.report(sim.running(svc)[0], TaskState.FAILED, exit_code=1)
    assert [t.attempt for t in sim.reconcile().created] == [1]
    sim.agents_step()
    sim.tick(1)  # ran briefly: attempt 1 of 1 is used up
    sim.report(sim.running(svc)[0], TaskState.FAILED, exit_code=1)
    idle(sim)


def test_a_dead_task_on_a_lost_node_keeps_its_verdict() -> None:
    """Losing the node of a task that already ended must not turn it into a restartable one."""
    sim = cluster("n1", "n2")
    svc = sim.create_service(spec("job", restart=RestartPolicy(condition=RestartCondition.NONE)))
    sim.converge()
    dead = sim.live(svc)[0]
    sim.report(dead, TaskState.FAILED, exit_code=1)
    sim.heartbeats[dead.node_id] = sim.now - 100
    plan = sim.reconcile()
    assert not plan.created and not plan.updated and len(plan.node_status) == 1
