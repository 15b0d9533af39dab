"""Reconciler scenarios of nodes lost, late or removed, each run through the real FSM
(`commands.apply` + `ClusterState.apply`): a node down after missed heartbeats, its tasks orphaned
and replaced elsewhere, nothing new for a late node."""

from __future__ import annotations

from tests.unit.core_sim import ANY0, cluster, idle, inject, spec
from warren import commands
from warren.model import NodeStatus, RestartCondition, RestartPolicy, Task, TaskState
from warren.reconciler import ReconcileConfig


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
