"""Reconciler scenarios of global services, each run through the real FSM (`commands.apply` +
`ClusterState.apply`): one task per eligible node, following drain, pause, labels, failures and a
node lost and back; a node whose overlay subnet is full is skipped."""

from __future__ import annotations

import msgspec

from tests.unit.core_sim import ANY0, Sim, cluster, idle, inject, node, running_task, spec
from warren import commands
from warren.model import Availability, NodeStatus, RestartCondition, RestartPolicy, ServiceMode, TaskState


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


def test_global_skips_a_node_whose_overlay_subnet_is_full() -> None:
    sim = cluster("n1")
    sim.add_node(msgspec.structs.replace(node("n2"), overlay=True, overlay_subnet="10.50.0.0/30"))  # 1 address
    other = spec("other", replicas=1)
    inject(sim, running_task("o1", sim.create_service(other), other, "n2"))
    sim.create_service(spec("mon", mode=ServiceMode.GLOBAL))
    assert [t.node_id for t in sim.reconcile().created if t.service_name == "mon"] == ["n1"]
