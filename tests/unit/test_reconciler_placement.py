"""Reconciler scenarios of replicated services, each run through the real FSM (`commands.apply` +
`ClusterState.apply`): tasks created and placed or pending with a reason, scaled down and up,
moved off drained or no longer matching nodes, and duplicates stopped."""

from __future__ import annotations

from collections import Counter

import msgspec

from tests.unit.core_sim import cluster, idle, inject, node, spec
from warren import commands
from warren.model import Availability, Task, TaskState
from warren.reconciler import ReconcileConfig

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
