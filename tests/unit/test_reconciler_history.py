"""Reconciler scenarios of what it deletes, each run through the real FSM (`commands.apply` +
`ClusterState.apply`): a removed service's tasks once stopped, and dead tasks past the history
limit (per slot, per node for global)."""

from __future__ import annotations

from collections import Counter

from tests.unit.core_sim import ANY0, cluster, idle, inject, spec
from warren import commands
from warren.model import RestartPolicy, ServiceMode, Task, TaskState
from warren.reconciler import ReconcileConfig


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
