"""Reconciler scenarios, each run through the real FSM (`commands.apply` + `ClusterState.apply`)."""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest

from tests.unit.core_sim import Sim, node, running_task, spec
from warren import commands
from warren.model import (
    Availability,
    ClusterInfo,
    FailureAction,
    NodeStatus,
    RestartCondition,
    RestartPolicy,
    RolloutState,
    ServiceMode,
    Task,
    TaskState,
    UpdateConfig,
    UpdateOrder,
)
from warren.reconciler import ReconcileConfig, is_empty, reconcile
from warren.state import Put

ANY0 = RestartPolicy(condition=RestartCondition.ANY, delay=0.0)


def idle(sim: Sim) -> None:
    """Nothing external changed: the next pass must propose nothing."""
    plan = sim.plan()
    assert is_empty(plan), plan


def cluster(*names: str, config: ReconcileConfig | None = None, **node_kw: object) -> Sim:
    sim = Sim(config)
    for name in names:
        sim.add_node(node(name, **node_kw))  # type: ignore[arg-type]
    return sim


def inject(sim: Sim, task: Task) -> None:
    sim.state.apply([Put("task", task)])


# -- replicated: creation and placement ------------------------------------------------------------


def test_creates_missing_replicas_assigned_and_spread() -> None:
    sim = cluster("n1", "n2", "n3")
    svc = sim.create_service(spec("web", replicas=5))
    plan = sim.reconcile()
    assert [t.slot for t in plan.created] == [1, 2, 3, 4, 5]
    assert all(t.state == TaskState.ASSIGNED and t.desired_state == TaskState.RUNNING for t in plan.created)
    assert all(t.attempt == 0 and t.spec_version == 1 and t.created_at == sim.now for t in plan.created)
    assert Counter(t.node_id for t in plan.created) == {"n1": 2, "n2": 2, "n3": 1}
    assert not plan.updated and not plan.deleted
    idle(sim)
    sim.agents_step()
    idle(sim)
    assert len(sim.running(svc)) == 5


def test_unplaceable_tasks_wait_with_a_reason_until_a_node_fits() -> None:
    sim = cluster("n1", "n2", labels={"zone": "a"})
    svc = sim.create_service(spec("web", replicas=2, constraints=("node.labels.zone==b",)))
    plan = sim.reconcile()
    reason = "no suitable node: constraint node.labels.zone==b not satisfied on 2 nodes"
    assert [(t.state, t.node_id, t.message) for t in plan.created] == [(TaskState.PENDING, "", reason)] * 2
    idle(sim)

    sim.add_node(node("n3", labels={"zone": "a"}))
    plan = sim.reconcile()
    assert not plan.created
    assert [(u.state, u.node_id, u.message) for u in plan.updated] == [(None, None, reason.replace("2", "3"))] * 2
    idle(sim)

    sim.add_node(node("n4", labels={"zone": "b"}))
    plan = sim.reconcile()
    assert {(u.state, u.node_id, u.message) for u in plan.updated} == {(TaskState.ASSIGNED, "n4", "")}
    assert len(plan.updated) == 2
    idle(sim)
    sim.agents_step()
    assert len(sim.running(svc)) == 2


def test_reconcile_is_pure_and_deterministic() -> None:
    sim = cluster("n1", "n2")
    sim.create_service(spec("web", replicas=3))
    sim.create_service(spec("mon", mode=ServiceMode.GLOBAL))
    before = msgspec.msgpack.encode(sorted(sim.state.tasks.values(), key=lambda t: t.id))

    def ids() -> object:
        counter = iter(range(100))
        return lambda: f"x{next(counter)}"

    first = reconcile(sim.state, sim.now, sim.heartbeats, sim.config, ids())  # type: ignore[arg-type]
    second = reconcile(sim.state, sim.now, sim.heartbeats, sim.config, ids())  # type: ignore[arg-type]
    assert first == second and len(first.created) == 5
    assert msgspec.msgpack.encode(sorted(sim.state.tasks.values(), key=lambda t: t.id)) == before
    assert not sim.state.tasks


# -- nodes -------------------------------------------------------------------------------------------


def test_node_is_down_after_three_missed_heartbeat_periods() -> None:
    sim = cluster("n1", "n2", "n3", config=ReconcileConfig(heartbeat_period=5.0))
    sim.heartbeats = {"n1": sim.now - 15.0, "n2": sim.now - 16.0}  # n3: no entry, counts as seen now
    plan = sim.reconcile()
    assert [(s.node_id, s.status, s.message, s.at) for s in plan.node_status] == [
        ("n2", NodeStatus.DOWN, "heartbeat missed for 16s", sim.now)
    ]
    assert sim.state.nodes["n2"].status == NodeStatus.DOWN
    idle(sim)  # not reported again


def test_tasks_on_a_down_node_are_orphaned_and_replaced_without_backoff() -> None:
    policy = RestartPolicy(condition=RestartCondition.ON_FAILURE, delay=10.0)
    sim = cluster("n1", "n2")
    svc = sim.create_service(spec("web", replicas=2, restart=policy))
    sim.reconcile()
    sim.agents_step()
    lost = next(t for t in sim.live(svc) if t.node_id == "n1")

    sim.tick(16)
    sim.heartbeats["n1"] = sim.now - 16
    plan = sim.reconcile()
    assert [u.id for u in plan.updated] == [lost.id]
    orphan = sim.state.tasks[lost.id]
    assert (orphan.state, orphan.desired_state, orphan.message) == (
        TaskState.ORPHANED,
        TaskState.SHUTDOWN,
        "node down",
    )
    # Losing the node is not the task's failure: replaced in the same pass, no attempt used.
    assert [(t.slot, t.node_id, t.attempt) for t in plan.created] == [(lost.slot, "n2", 0)]


def test_nodes_lost_together_take_none_of_each_others_tasks() -> None:
    """Two nodes die at once; their last heartbeats were heard a few seconds apart, so one is
    found down first. Its task must not go to the other, silent for 9 s already (its last beat
    was heard late), where it would be lost again a few seconds later (#15 S3, ADR 68)."""
    sim = cluster("n1", "n2", "n3", config=ReconcileConfig(heartbeat_period=5.0))
    svc = sim.create_service(spec("web", replicas=3))
    sim.reconcile()
    sim.agents_step()
    assert sorted(t.node_id for t in sim.live(svc)) == ["n1", "n2", "n3"]
    sim.tick(16)
    sim.heartbeats = {"n1": sim.now - 16, "n2": sim.now - 9}  # n3 alive (no entry: seen now)
    plan = sim.reconcile()
    assert [s.node_id for s in plan.node_status] == ["n1"]
    assert [t.node_id for t in plan.created] == ["n3"]  # not n2, though n3 has a task of it already


def test_a_late_node_gets_no_new_task_and_a_pending_one_says_why() -> None:
    sim = cluster("n1", config=ReconcileConfig(heartbeat_period=5.0))
    sim.heartbeats = {"n1": sim.now - 11}
    svc = sim.create_service(spec("web", replicas=1))
    plan = sim.reconcile()
    assert [t.node_id for t in plan.created] == [""]
    assert "1 node not ready (node host-n1: no heartbeat for 11s)" in sim.state.tasks[plan.created[0].id].message
    sim.heartbeats = {"n1": sim.now - 1}  # it beats again: placed at the next pass
    sim.reconcile()
    assert [t.node_id for t in sim.live(svc)] == ["n1"]


def test_a_node_one_beat_late_still_gets_tasks() -> None:
    sim = cluster("n1", config=ReconcileConfig(heartbeat_period=5.0))
    sim.heartbeats = {"n1": sim.now - 7.5}  # at most half a period late: still placed on
    svc = sim.create_service(spec("web", replicas=1))
    sim.reconcile()
    assert [t.node_id for t in sim.live(svc)] == ["n1"]


def test_tasks_of_a_removed_node_are_replaced() -> None:
    sim = cluster("n1", "n2")
    svc = sim.create_service(spec("web", replicas=2))
    sim.reconcile()
    sim.agents_step()
    sim.run(commands.RemoveNode("n1", sim.now))
    plan = sim.reconcile()
    assert [(t.node_id, t.attempt) for t in plan.created] == [("n2", 0)]
    assert sorted(t.slot for t in sim.live(svc)) == [1, 2]


def test_task_on_unknown_node_id_is_orphaned() -> None:
    sim = cluster("n1")
    svc = sim.create_service(spec("web", replicas=1, restart=ANY0))
    s = sim.state.services[svc]
    ghost = Task(
        id="ghost", service_id=svc, service_name="web", slot=1, spec=s.spec, spec_version=1,
        state=TaskState.RUNNING, node_id="gone",
    )  # fmt: skip
    inject(sim, ghost)
    plan = sim.reconcile()
    assert sim.state.tasks["ghost"].state == TaskState.ORPHANED
    assert sim.state.tasks["ghost"].message == "node removed"
    assert [(t.slot, t.node_id) for t in plan.created] == [(1, "n1")]


# -- restart policy ------------------------------------------------------------------------------------


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


# -- replicated: scale, drain, constraints ------------------------------------------------------------


def test_scale_down_among_tasks_created_together_stops_the_highest_slots() -> None:
    sim = cluster("n1")
    svc = sim.create_service(spec("web", replicas=5))
    sim.reconcile()  # all five are created in one pass, with one timestamp
    sim.agents_step()
    sim.scale(svc, 2)
    sim.reconcile()
    assert sorted(t.slot for t in sim.live(svc)) == [1, 2]


def test_scale_down_stops_unstarted_then_newest() -> None:
    sim = cluster("n1", mem_gb=2)
    svc = sim.create_service(spec("web", replicas=2, mem_gb=1))
    sim.reconcile()
    sim.agents_step()
    sim.tick()
    sim.scale(svc, 4)
    sim.reconcile()  # two more, but they do not fit: pending
    pending = [t for t in sim.live(svc) if t.state == TaskState.PENDING]
    assert len(pending) == 2

    sim.scale(svc, 3)
    plan = sim.reconcile()
    victim = sim.state.tasks[plan.updated[0].id]
    assert len(plan.updated) == 1 and victim.id == max(t.id for t in pending)
    # No node has it: it is shut down right away.
    assert (victim.state, victim.desired_state, victim.message) == (
        TaskState.SHUTDOWN,
        TaskState.SHUTDOWN,
        "shutdown: scaled down",
    )

    sim.scale(svc, 1)
    plan = sim.reconcile()
    stopped = {sim.state.tasks[u.id].slot: sim.state.tasks[u.id] for u in plan.updated}
    assert len(stopped) == 2
    assert any(t.state == TaskState.SHUTDOWN for t in stopped.values())  # the other pending one
    running_victim = next(t for t in stopped.values() if t.state == TaskState.RUNNING)
    assert running_victim.desired_state == TaskState.SHUTDOWN
    assert running_victim.slot == 2  # both started together: the higher slot goes
    idle(sim)
    sim.agents_step()
    assert [t.slot for t in sim.live(svc)] == [1]


def test_scale_up_reuses_free_slot_numbers() -> None:
    sim = cluster("n1", "n2")
    svc = sim.create_service(spec("web", replicas=3))
    sim.converge()
    sim.scale(svc, 1)
    sim.converge()
    assert [t.slot for t in sim.live(svc)] == [1]
    sim.scale(svc, 3)
    plan = sim.reconcile()
    assert sorted((t.slot, t.attempt) for t in plan.created) == [(2, 0), (3, 0)]


def test_drain_moves_tasks_and_pause_keeps_them() -> None:
    sim = cluster("n1", "n2")
    svc = sim.create_service(spec("web", replicas=2))
    sim.converge()
    on_n1 = next(t for t in sim.live(svc) if t.node_id == "n1")
    sim.run(commands.UpdateNode("n1", sim.now, availability=Availability.DRAIN))
    plan = sim.reconcile()
    assert [(u.id, u.desired_state, u.message) for u in plan.updated] == [
        (on_n1.id, TaskState.SHUTDOWN, "shutdown: node drained")
    ]
    assert [(t.slot, t.node_id, t.attempt) for t in plan.created] == [(on_n1.slot, "n2", 0)]
    idle(sim)

    sim.converge()
    sim.run(commands.UpdateNode("n2", sim.now, availability=Availability.PAUSE))
    idle(sim)  # paused: running tasks stay
    sim.scale(svc, 3)
    plan = sim.reconcile()
    assert [(t.state, t.message) for t in plan.created] == [
        (TaskState.PENDING, "no suitable node: 1 node drained, 1 node paused")
    ]


def test_drain_respects_the_start_cap() -> None:
    """A task is only moved off a drained node when its replacement can start in the same pass."""
    sim = cluster("n1", config=ReconcileConfig(max_starts_per_pass=1))
    svc = sim.create_service(spec("web", replicas=2))
    sim.converge()
    sim.add_node(node("n2"))
    sim.run(commands.UpdateNode("n1", sim.now, availability=Availability.DRAIN))
    for _ in range(2):
        plan = sim.reconcile()
        assert len(plan.created) == 1 and len(plan.updated) == 1
    idle(sim)
    assert {t.node_id for t in sim.live(svc)} == {"n2"}


def test_replicated_task_leaves_a_node_that_no_longer_matches() -> None:
    sim = cluster("n1", "n2", labels={"zone": "a"})
    svc = sim.create_service(spec("web", replicas=1, constraints=("node.labels.zone==a",)))
    sim.converge()
    old = sim.live(svc)[0]
    sim.run(commands.UpdateNode(old.node_id, sim.now, labels_add={"zone": "b"}))
    plan = sim.reconcile()
    why = "shutdown: node no longer satisfies node.labels.zone==a"
    assert [(u.id, u.message) for u in plan.updated] == [(old.id, why)]
    assert [t.node_id for t in plan.created] == [{"n1": "n2", "n2": "n1"}[old.node_id]]


def test_duplicate_live_tasks_in_a_slot_are_reduced_to_one() -> None:
    sim = cluster("n1")
    svc = sim.create_service(spec("web", replicas=1))
    sim.converge()
    keep = sim.live(svc)[0]
    dup = msgspec.structs.replace(keep, id="dup", state=TaskState.ASSIGNED)
    inject(sim, dup)
    plan = sim.reconcile()
    assert [(u.id, u.desired_state) for u in plan.updated] == [("dup", TaskState.SHUTDOWN)]
    assert not plan.created


def test_unassigned_task_told_to_stop_is_shut_down() -> None:
    sim = cluster()
    svc = sim.create_service(spec("web", replicas=1))
    s = sim.state.services[svc]
    stale = Task(
        id="stale", service_id=svc, service_name="web", slot=7, spec=s.spec, spec_version=1,
        state=TaskState.PENDING, desired_state=TaskState.SHUTDOWN,
    )  # fmt: skip
    inject(sim, stale)
    sim.reconcile()
    assert sim.state.tasks["stale"].state == TaskState.SHUTDOWN


# -- rolling update ------------------------------------------------------------------------------------


STOP_FIRST = UpdateConfig(order=UpdateOrder.STOP_FIRST, monitor=0.0)


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


# -- global --------------------------------------------------------------------------------------------


def global_nodes(sim: Sim, svc: str) -> list[str]:
    return sorted(t.node_id for t in sim.live(svc))


def test_global_runs_one_task_per_eligible_node() -> None:
    sim = cluster("n1", "n2")
    sim.add_node(node("n3", labels={"role": "edge"}))
    sim.add_node(node("small", mem_gb=0.5))
    sim.add_node(node("down", status=NodeStatus.DOWN))
    svc = sim.create_service(spec("mon", mode=ServiceMode.GLOBAL, constraints=("node.labels.role!=edge",), mem_gb=1))
    plan = sim.reconcile()
    assert sorted((t.node_id, t.slot, t.state) for t in plan.created) == [
        ("n1", 0, TaskState.ASSIGNED),
        ("n2", 0, TaskState.ASSIGNED),
    ]
    idle(sim)

    sim.add_node(node("n4"))
    assert [t.node_id for t in sim.reconcile().created] == ["n4"]
    sim.converge()
    assert global_nodes(sim, svc) == ["n1", "n2", "n4"]


def test_global_follows_drain_pause_labels_and_failures() -> None:
    sim = cluster("n1", "n2", "n3")
    svc = sim.create_service(spec("mon", mode=ServiceMode.GLOBAL, constraints=("node.labels.skip!=yes",), restart=ANY0))
    sim.converge()
    assert global_nodes(sim, svc) == ["n1", "n2", "n3"]

    sim.run(commands.UpdateNode("n1", sim.now, availability=Availability.DRAIN))
    plan = sim.reconcile()
    assert not plan.created and [sim.state.tasks[u.id].node_id for u in plan.updated] == ["n1"]
    sim.converge()
    assert global_nodes(sim, svc) == ["n2", "n3"]

    sim.run(commands.UpdateNode("n1", sim.now, availability=Availability.ACTIVE))
    assert [(t.node_id, t.attempt) for t in sim.reconcile().created] == [("n1", 0)]
    sim.converge()

    sim.run(commands.UpdateNode("n2", sim.now, availability=Availability.PAUSE))
    idle(sim)  # paused keeps its task

    sim.run(commands.UpdateNode("n3", sim.now, labels_add={"skip": "yes"}))
    plan = sim.reconcile()
    assert [(sim.state.tasks[u.id].node_id, u.message) for u in plan.updated] == [
        ("n3", "shutdown: node no longer satisfies node.labels.skip!=yes")
    ]
    sim.converge()
    assert global_nodes(sim, svc) == ["n1", "n2"]

    failed = next(t for t in sim.live(svc) if t.node_id == "n1")
    sim.report(failed, TaskState.FAILED, exit_code=2)
    assert [(t.node_id, t.attempt) for t in sim.reconcile().created] == [("n1", 1)]


def test_global_node_down_and_back() -> None:
    sim = cluster("n1", "n2")
    svc = sim.create_service(
        spec("mon", mode=ServiceMode.GLOBAL, restart=RestartPolicy(condition=RestartCondition.NONE))
    )
    sim.converge()
    sim.heartbeats["n2"] = sim.now - 100
    plan = sim.reconcile()
    assert not plan.created  # nothing moves to another node
    assert global_nodes(sim, svc) == ["n1"]
    sim.run(commands.SetNodeStatus("n2", NodeStatus.READY, "", sim.now))
    sim.heartbeats["n2"] = sim.now
    # Losing the node was not a failure of the task: it comes back even with condition none.
    assert [t.node_id for t in sim.reconcile().created] == ["n2"]


def test_global_failure_with_condition_none_is_not_restarted() -> None:
    sim = cluster("n1")
    svc = sim.create_service(
        spec("mon", mode=ServiceMode.GLOBAL, restart=RestartPolicy(condition=RestartCondition.NONE))
    )
    sim.converge()
    sim.report(sim.live(svc)[0], TaskState.FAILED, exit_code=1)
    idle(sim)


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


# -- removed services and history -----------------------------------------------------------------------


def test_removed_service_tasks_are_deleted_once_stopped() -> None:
    sim = cluster("n1", "n2")
    svc = sim.create_service(spec("web", replicas=2))
    sim.converge()
    tasks = sim.tasks(svc)
    sim.run(commands.RemoveService(svc, sim.now))
    idle(sim)  # still running: wait for the agents
    sim.heartbeats["n2"] = sim.now - 100  # n2 is lost: its task is dropped at once
    plan = sim.reconcile()
    on_n2 = [t.id for t in tasks if t.node_id == "n2"]
    assert list(plan.deleted) == on_n2
    sim.agents_step()
    plan = sim.reconcile()
    assert list(plan.deleted) == [t.id for t in tasks if t.node_id == "n1"]
    assert not sim.state.tasks


def test_unassigned_tasks_of_a_removed_service_are_deleted() -> None:
    sim = cluster()
    svc = sim.create_service(spec("web"))
    s = sim.state.services[svc]
    sim.run(commands.RemoveService(svc, sim.now))
    orphan = Task(
        id="left", service_id=svc, service_name="web", slot=1, spec=s.spec, spec_version=1, state=TaskState.PENDING
    )
    inject(sim, orphan)
    assert sim.reconcile().deleted == ("left",)


def test_history_keeps_the_newest_dead_tasks_per_slot() -> None:
    sim = cluster("n1", config=ReconcileConfig(task_history_limit=3))
    svc = sim.create_service(spec("web", replicas=2, restart=ANY0))
    sim.converge()
    for _ in range(6):
        sim.report(next(t for t in sim.running(svc) if t.slot == 1), TaskState.FAILED, exit_code=1)
        sim.tick()
        sim.reconcile()
        sim.agents_step()
        idle(sim)
    slot1 = [t for t in sim.tasks(svc) if t.slot == 1]
    dead = [t for t in slot1 if t.state.terminal]
    assert len(dead) == 3 and len(slot1) == 4
    assert sorted(t.attempt for t in dead) == [3, 4, 5]  # the oldest ones went
    assert len([t for t in sim.tasks(svc) if t.slot == 2]) == 1


def test_history_limit_zero_keeps_only_the_newest_task() -> None:
    sim = cluster("n1", config=ReconcileConfig(task_history_limit=0))
    svc = sim.create_service(spec("web", restart=RestartPolicy(delay=5.0)))
    sim.converge()
    first = sim.live(svc)[0]
    sim.report(first, TaskState.FAILED, exit_code=1)
    idle(sim)  # the dead task is the newest of its slot: it carries the restart state
    sim.tick(5)
    plan = sim.reconcile()
    assert len(plan.created) == 1 and list(plan.deleted) == [first.id]
    sim.agents_step()
    second = sim.running(svc)[0]
    sim.report(second, TaskState.FAILED, exit_code=1)
    idle(sim)  # still within the delay; the dead task is kept
    assert [t.id for t in sim.tasks(svc)] == [second.id]
    sim.tick(5)
    assert [t.attempt for t in sim.reconcile().created] == [2]


def test_lowering_the_history_limit_keeps_the_newest_dead_task() -> None:
    sim = cluster("n1")
    svc = sim.create_service(spec("web", restart=RestartPolicy(delay=0.0, max_attempts=2)))
    for _ in range(3):
        sim.converge()
        sim.report(sim.running(svc)[0], TaskState.FAILED, exit_code=1)
    idle(sim)  # max attempts reached
    sim.config = ReconcileConfig(task_history_limit=0)
    plan = sim.reconcile()
    assert len(plan.deleted) == 2 and not plan.created
    assert [t.attempt for t in sim.tasks(svc)] == [2]
    idle(sim)


def test_global_history_is_per_node() -> None:
    sim = cluster("n1", "n2", config=ReconcileConfig(task_history_limit=1))
    svc = sim.create_service(spec("mon", mode=ServiceMode.GLOBAL, restart=ANY0))
    sim.converge()
    for _ in range(3):
        sim.report(next(t for t in sim.running(svc) if t.node_id == "n1"), TaskState.FAILED, exit_code=1)
        sim.converge()
    assert Counter(t.node_id for t in sim.tasks(svc)) == {"n1": 2, "n2": 1}


# -- caps and config -----------------------------------------------------------------------------------


def test_caps_spread_big_changes_over_passes() -> None:
    sim = cluster("n1", config=ReconcileConfig(max_starts_per_pass=2, max_stops_per_pass=1))
    svc = sim.create_service(spec("web", replicas=5))
    assert [len(sim.reconcile().created) for _ in range(4)] == [2, 2, 1, 0]
    sim.agents_step()
    sim.scale(svc, 2)
    assert [len(sim.reconcile().updated) for _ in range(4)] == [1, 1, 1, 0]
    sim.agents_step()
    assert len(sim.live(svc)) == 2


def test_config_from_cluster_and_is_empty() -> None:
    info = ClusterInfo(
        id="c", created_at=0, ca_cert_pem="", ca_key_pem="", worker_token_secret="", manager_token_secret="",
        heartbeat_period=2.0, task_history_limit=9,
    )  # fmt: skip
    config = ReconcileConfig.from_cluster(info, max_stops_per_pass=7)
    assert (config.heartbeat_period, config.node_timeout, config.task_history_limit) == (2.0, 6.0, 9)
    assert config.max_stops_per_pass == 7 and config.max_starts_per_pass == 1000
    assert ReconcileConfig.from_cluster(None) == ReconcileConfig()
    assert is_empty(commands.ApplyPlan())
    assert not is_empty(commands.ApplyPlan(deleted=("x",)))


def test_global_skips_a_node_whose_overlay_subnet_is_full() -> None:
    sim = cluster("n1")
    sim.add_node(msgspec.structs.replace(node("n2"), overlay=True, overlay_subnet="10.50.0.0/30"))  # 1 address
    other = spec("other", replicas=1)
    inject(sim, running_task("o1", sim.create_service(other), other, "n2"))
    sim.create_service(spec("mon", mode=ServiceMode.GLOBAL))
    assert [t.node_id for t in sim.reconcile().created if t.service_name == "mon"] == ["n1"]
