"""Reconciler scenarios of rolling updates, each run through the real FSM (`commands.apply` +
`ClusterState.apply`): stop-first and start-first, a failing task pausing or rolling back the
update, unplaced tasks replaced at once, and global services updated one node at a time."""

from __future__ import annotations

from tests.unit.core_sim import cluster, idle, spec
from warren.model import (
    FailureAction,
    RestartCondition,
    RestartPolicy,
    RolloutState,
    ServiceMode,
    TaskState,
    UpdateConfig,
    UpdateOrder,
)

STOP_FIRST = UpdateConfig(order=UpdateOrder.STOP_FIRST, monitor=0.0)


# -- replicated services ----------------------------------------------------------------------------


def test_a_stop_first_update_replaces_one_task_at_a_time() -> None:
    sim = cluster("n1", "n2", "n3")
    svc = sim.create_service(spec("web", replicas=3, update=STOP_FIRST))
    sim.converge()
    sim.update_service(svc, spec("web", replicas=3, image="busybox:2", update=STOP_FIRST))
    rounds = 0
    while any(t.spec_version == 1 for t in sim.live(svc)):
        plan = sim.reconcile()
        assert len(plan.created) == 1 and len(plan.updated) == 1
        new, old = plan.created[0], sim.state.tasks[plan.updated[0].id]
        assert (new.slot, new.spec_version, new.spec.image) == (old.slot, 2, "busybox:2")
        assert (old.spec_version, old.desired_state) == (1, TaskState.SHUTDOWN)
        idle(sim)  # the replacement is not running yet: wait
        sim.agents_step()
        rounds += 1
        assert rounds <= 3
    assert rounds == 3
    sim.converge()
    assert sorted((t.slot, t.spec_version) for t in sim.running(svc)) == [(1, 2), (2, 2), (3, 2)]
    status = sim.state.services[svc].update_status
    assert status is not None and status.state == RolloutState.COMPLETED


def test_start_first_keeps_the_old_task_until_the_new_one_is_ready_then_waits_the_monitor() -> None:
    sim = cluster("n1", "n2", "n3")
    svc = sim.create_service(spec("web", replicas=2))  # the defaults: start-first, 5 s monitor
    sim.converge()
    old = {t.slot: t for t in sim.live(svc)}
    sim.update_service(svc, spec("web", replicas=2, image="busybox:2"))
    plan = sim.reconcile()
    assert [(t.slot, t.spec_version) for t in plan.created] == [(1, 2)] and not plan.updated  # slot 1 keeps serving
    idle(sim)
    sim.agents_step()  # the new task runs: it is ready
    plan = sim.reconcile()
    assert [u.id for u in plan.updated] == [old[1].id] and not plan.created  # the old one stops now
    sim.agents_step()
    sim.tick(4.0)
    idle(sim)  # ready for 4 s of the 5 s monitor: slot 2 waits
    sim.tick(1.0)
    assert [(t.slot, t.spec_version) for t in sim.reconcile().created] == [(2, 2)]
    sim.converge()
    assert sorted((t.slot, t.spec_version) for t in sim.running(svc)) == [(1, 2), (2, 2)]
    status = sim.state.services[svc].update_status
    assert status is not None and (status.state, status.from_version, status.to_version) == (
        RolloutState.COMPLETED,
        1,
        2,
    )


def test_a_failing_new_task_pauses_the_update_and_the_old_ones_keep_serving() -> None:
    sim = cluster("n1", "n2")
    svc = sim.create_service(spec("web", replicas=3))
    sim.converge()
    sim.update_service(svc, spec("web", replicas=3, image="bad:2"))
    new = sim.reconcile().created[0]
    sim.agents_step()
    sim.report(sim.state.tasks[new.id], TaskState.FAILED, exit_code=1, error="exit status 1")
    sim.converge()
    status = sim.state.services[svc].update_status
    assert status is not None and status.state == RolloutState.PAUSED
    assert status.message == f"paused: task web.{new.slot} failed: exit status 1 (image bad:2)"
    assert sorted((t.slot, t.spec_version) for t in sim.running(svc)) == [(1, 1), (2, 1), (3, 1)]


def test_failure_action_rollback_returns_every_task_to_the_previous_spec() -> None:
    back = UpdateConfig(failure_action=FailureAction.ROLLBACK, monitor=1.0)
    sim = cluster("n1", "n2")
    svc = sim.create_service(spec("web", replicas=2, update=back))
    sim.converge()
    sim.update_service(svc, spec("web", replicas=2, image="bad:2", update=back))
    sim.reconcile()
    sim.agents_step()
    sim.tick(2.0)
    sim.reconcile()  # web.1 of version 2 succeeded: the old one stops, slot 2 is replaced
    sim.agents_step()
    failing = next(t for t in sim.live(svc) if t.slot == 2 and t.spec_version == 2)
    sim.report(failing, TaskState.FAILED, exit_code=1, error="exit status 1")
    sim.converge()
    service = sim.state.services[svc]
    assert (service.version, service.spec.image) == (3, "busybox")
    assert service.update_status is not None and service.update_status.state == RolloutState.ROLLBACK_COMPLETED
    assert service.update_status.message == "rolled back: task web.2 failed: exit status 1 (image bad:2)"
    assert sorted((t.slot, t.spec.image) for t in sim.running(svc)) == [(1, "busybox"), (2, "busybox")]
    # What the failed version ran is history: ended, and no longer meant to run (as in Swarm).
    old = sorted((t.slot, t.state, t.desired_state) for t in sim.tasks(svc) if t.spec_version == 2)
    assert old == [(1, TaskState.SHUTDOWN, TaskState.SHUTDOWN), (2, TaskState.FAILED, TaskState.SHUTDOWN)]


def test_update_replaces_unplaced_tasks_at_once() -> None:
    sim = cluster("n1", "n2")
    svc = sim.create_service(spec("web", replicas=3, constraints=("node.labels.gpu==yes",)))
    sim.converge()
    sim.update_service(svc, spec("web", replicas=3))
    plan = sim.reconcile()
    assert len(plan.created) == 3 and {t.state for t in plan.created} == {TaskState.ASSIGNED}
    assert {sim.state.tasks[u.id].state for u in plan.updated} == {TaskState.SHUTDOWN}


def test_update_revives_a_slot_the_old_policy_gave_up_on() -> None:
    sim = cluster("n1")
    svc = sim.create_service(spec("job", restart=RestartPolicy(condition=RestartCondition.NONE)))
    sim.converge()
    sim.report(sim.live(svc)[0], TaskState.COMPLETE, exit_code=0)
    idle(sim)
    sim.update_service(svc, spec("job", image="job:2", restart=RestartPolicy(condition=RestartCondition.NONE)))
    plan = sim.reconcile()
    assert [(t.slot, t.spec_version, t.attempt) for t in plan.created] == [(1, 2, 0)]


# -- global services ------------------------------------------------------------------------------------


def test_global_rolling_update_one_node_at_a_time() -> None:
    sim = cluster("n1", "n2", "n3")
    svc = sim.create_service(spec("mon", mode=ServiceMode.GLOBAL, update=STOP_FIRST))
    sim.converge()
    sim.update_service(svc, spec("mon", mode=ServiceMode.GLOBAL, image="mon:2", update=STOP_FIRST))
    for expected in ("n1", "n2", "n3"):
        plan = sim.reconcile()
        if not plan.created:  # stop-first: the new task starts once the old one has stopped
            assert [sim.state.tasks[u.id].node_id for u in plan.updated] == [expected]
            sim.agents_step()
            plan = sim.reconcile()
        assert [(t.node_id, t.spec_version) for t in plan.created] == [(expected, 2)]
        idle(sim)
        sim.agents_step()
    sim.converge()
    assert {t.spec_version for t in sim.live(svc)} == {2}


def test_a_global_start_first_update_keeps_the_old_task_until_the_new_one_is_ready() -> None:
    sim = cluster("n1", "n2")
    svc = sim.create_service(spec("mon", mode=ServiceMode.GLOBAL))
    sim.converge()
    old = {t.node_id: t for t in sim.live(svc)}
    sim.update_service(svc, spec("mon", mode=ServiceMode.GLOBAL, image="mon:2"))
    plan = sim.reconcile()
    assert [(t.node_id, t.spec_version) for t in plan.created] == [("n1", 2)] and not plan.updated
    sim.agents_step()
    assert [u.id for u in sim.reconcile().updated] == [old["n1"].id]
    sim.converge()
    assert sorted((t.node_id, t.spec_version) for t in sim.running(svc)) == [("n1", 2), ("n2", 2)]


def test_global_update_stops_first_when_both_do_not_fit() -> None:
    sim = cluster("n1", "n2", mem_gb=3)
    svc = sim.create_service(spec("mon", mode=ServiceMode.GLOBAL, mem_gb=2))
    sim.converge()
    old = sim.live(svc)[0]
    sim.update_service(svc, spec("mon", mode=ServiceMode.GLOBAL, mem_gb=2, image="mon:2"))
    plan = sim.reconcile()
    assert not plan.created and [u.id for u in plan.updated] == [old.id]
    idle(sim)  # n1 is still stopping: n2 waits
    sim.agents_step()  # the old task stops and frees its memory
    assert [(t.node_id, t.spec_version) for t in sim.reconcile().created] == [("n1", 2)]
    idle(sim)
    sim.agents_step()
    idle(sim)  # n1's new task is within its monitor period
    sim.tick(5.0)
    plan = sim.reconcile()
    assert [sim.state.tasks[u.id].node_id for u in plan.updated] == ["n2"]
