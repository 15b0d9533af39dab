"""Rebalancing through the reconciler on the core simulator (ADR 36): start-first moves within
the constraints, auto-rebalance, the drain before a moved task's stop, moves meeting a full
node, an update or a paused rebalance, and random histories that keep slots whole and end balanced."""

from __future__ import annotations

import os
from collections import Counter

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.core_sim import Sim, node, pending_task, spec
from tests.unit.rebalance_rig import cluster_with
from tests.unit.test_drain import overlay_cluster, routing
from tests.unit.test_drain import step as pass_with_routes
from warren import commands
from warren.commands import ApplyPlan, RebalanceService
from warren.model import (
    Availability,
    ClusterInfo,
    NodeStatus,
    RolloutState,
    Task,
    TaskState,
    UpdateConfig,
    UpdateStatus,
    is_ready,
)
from warren.reconciler import is_empty
from warren.state import Put


def run_until(sim: Sim, service_id: str, done: object, rounds: int = 60) -> list[list[Task]]:
    """Reconcile, let the agents act and time pass until `done(status)`; returns every pass's
    live tasks, to check invariants over the whole rebalance."""
    seen = []
    for _ in range(rounds):
        sim.reconcile()
        sim.reconcile()  # a pass while new tasks are only assigned: as between real agents' reports
        sim.agents_step()
        sim.tick()
        seen.append(sim.live(service_id))
        if done(sim.state.services[service_id].update_status):  # type: ignore[operator]
            return seen
    raise AssertionError(f"not done: {sim.state.services[service_id].update_status}")


def ended(status: UpdateStatus | None) -> bool:
    return status is not None and status.state != RolloutState.REBALANCING


def test_a_rebalance_moves_only_what_it_must_start_first_and_respects_constraints() -> None:
    update = UpdateConfig(parallelism=2, monitor=2.0)
    sim = Sim()
    sim.add_node(node("n1", labels={"zone": "eu"}))
    service_id = sim.create_service(spec("web", replicas=7, constraints=("node.labels.zone==eu",), update=update))
    sim.converge()
    before = {t.id for t in sim.live(service_id)}
    sim.add_node(node("n2", labels={"zone": "eu"}))
    sim.add_node(node("n3", labels={"zone": "us"}))  # not eligible: never receives a task
    sim.run(RebalanceService(service_id, sim.now))
    history = run_until(sim, service_id, ended)
    for live in history:
        running_slots = {t.slot for t in live if t.state == TaskState.RUNNING}
        assert running_slots == set(range(1, 8)), "every slot keeps a running task (start-first)"
        assert len(live) <= 7 + 2, "at most parallelism extra tasks"
        assert all(t.node_id != "n3" for t in live)
    status = sim.state.services[service_id].update_status
    assert status is not None and (status.state, status.message) == (
        RolloutState.COMPLETED,
        "rebalanced: 3 tasks moved",
    )
    sim.converge()
    live = sim.live(service_id)
    assert sorted(Counter(t.node_id for t in live).values()) == [3, 4]
    assert len(before - {t.id for t in live}) == 3, "only the moved tasks were replaced"
    assert sum(1 for t in sim.state.service_tasks(service_id) if t.relocates) == 3, "each move made once"
    assert sim.state.services[service_id].version == 1
    assert commands.apply(sim.state, RebalanceService(service_id, sim.now))[0].message.startswith("nothing to move")


def test_auto_rebalance_moves_tasks_when_a_node_returns_and_a_failed_move_stops_it() -> None:
    sim, service_id = cluster_with(spec("web", replicas=4, update=UpdateConfig(monitor=1.0)), nodes=1)
    sim.state.apply([Put("cluster", ClusterInfo("c", 0.0, "", "", "", "", auto_rebalance=True))])
    sim.add_node(node("n2"))
    run_until(sim, service_id, lambda s: s is not None and s.state == RolloutState.COMPLETED)
    sim.converge()
    assert sorted(Counter(t.node_id for t in sim.live(service_id)).values()) == [2, 2]

    # n3 joins, but every task started there fails: the rebalance pauses, and stays paused.
    sim.add_node(node("n3"))
    sim.add_node(node("n4"))
    for _ in range(10):
        sim.reconcile()
        for t in list(sim.state.service_tasks(service_id)):
            if t.node_id in ("n3", "n4") and not t.state.terminal:
                sim.report(t, TaskState.FAILED, error="exit status 1")
        sim.agents_step()
        sim.tick()
    status = sim.state.services[service_id].update_status
    assert status is not None and status.state == RolloutState.REBALANCE_PAUSED
    assert status.message.startswith("paused: task web.")
    moves_made = sum(1 for t in sim.state.service_tasks(service_id) if t.relocates and t.node_id in ("n3", "n4"))
    assert moves_made == 1, "a paused rebalance does not restart by itself"
    assert sorted(Counter(t.node_id for t in sim.live(service_id)).values()) == [2, 2]


NODES = ["n2", "n3", "n4", "n5"]
history_ops = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(NODES)),
    st.tuples(st.just("down"), st.sampled_from(["n1", *NODES])),
    st.tuples(st.just("up"), st.sampled_from(["n1", *NODES])),
    st.tuples(st.just("fail"), st.integers(0, 20)),
    st.tuples(st.just("scale"), st.integers(1, 9)),
    st.tuples(st.just("rebalance")),
    st.tuples(st.just("update")),
    st.tuples(st.just("agents")),
)


def check_slots(sim: Sim, service_id: str, parallelism: int) -> None:
    """Each slot holds one live task, or two while a move is under way: the new one not ready
    yet, beside the task it replaces. Never more moves at once than the parallelism."""
    by_slot: dict[int, list[Task]] = {}
    for t in sim.live(service_id):
        by_slot.setdefault(t.slot, []).append(t)
    pairs = 0
    for tasks in by_slot.values():
        assert len(tasks) <= 2, tasks
        if len(tasks) == 2 and tasks[0].spec_version == tasks[1].spec_version:
            pairs += 1
            old, new = sorted(tasks, key=lambda t: t.relocates != "")
            assert new.relocates == old.id and not is_ready(new), tasks
        elif len(tasks) == 2:  # an update's start-first replacement
            new = max(tasks, key=lambda t: t.spec_version)
            assert new.spec_version == sim.state.services[service_id].version and not is_ready(new), tasks
    assert pairs <= parallelism


@given(st.lists(history_ops, max_size=25), st.integers(2, 9), st.integers(1, 2))
@settings(max_examples=int(os.environ.get("CORE_EXAMPLES", "25")), deadline=None)  # more for a long run
def test_random_histories_keep_slots_whole_and_end_balanced(steps: list[tuple], replicas: int, lanes: int) -> None:  # type: ignore[type-arg]
    sim = Sim()
    sim.state.apply([Put("cluster", ClusterInfo("c", 0.0, "", "", "", "", auto_rebalance=True))])
    sim.add_node(node("n1"))
    service_id = sim.create_service(spec("web", replicas=replicas, update=UpdateConfig(monitor=1.0, parallelism=lanes)))
    sim.converge()
    for op in steps:
        if op[0] == "add" and op[1] not in sim.state.nodes:
            sim.add_node(node(op[1]))
        elif op[0] == "down" and op[1] in sim.state.nodes:
            sim.heartbeats[op[1]] = sim.now - 100
        elif op[0] == "up" and op[1] in sim.state.nodes:
            sim.run(commands.SetNodeStatus(op[1], NodeStatus.READY, "", sim.now))
            sim.heartbeats[op[1]] = sim.now
        elif op[0] == "fail":
            live = [t for t in sim.live(service_id) if t.state >= TaskState.ASSIGNED]
            if live:
                sim.report(live[op[1] % len(live)], TaskState.FAILED, error="exit status 1")
        elif op[0] == "scale":
            sim.scale(service_id, op[1])
        elif op[0] == "update":
            current = sim.state.services[service_id]
            sim.update_service(service_id, msgspec.structs.replace(current.spec, image=f"app:{current.version + 1}"))
        elif op[0] == "rebalance":
            sim.state.apply(commands.apply(sim.state, RebalanceService(service_id, sim.now))[1])
        elif op[0] == "agents":
            sim.agents_step({n for n in sim.state.nodes if sim.heartbeats.get(n, 0) > sim.now - 10})
        sim.reconcile()
        check_slots(sim, service_id, lanes)
        sim.tick()
    for node_id in sim.state.nodes:  # every node back, then time for the settle period and moves
        if sim.state.nodes[node_id].status != NodeStatus.READY:
            sim.run(commands.SetNodeStatus(node_id, NodeStatus.READY, "", sim.now))
        sim.heartbeats[node_id] = sim.now
    for _ in range(40):  # the settle period (15 s) and the moves, 1 s a pass
        sim.reconcile()
        check_slots(sim, service_id, lanes)
        sim.agents_step()
        sim.tick()
    live = sim.live(service_id)
    assert len(live) == sim.state.services[service_id].spec.replicas
    status = sim.state.services[service_id].update_status
    paused = (RolloutState.PAUSED, RolloutState.ROLLBACK_PAUSED, RolloutState.REBALANCE_PAUSED)
    if status is None or status.state not in paused:  # a paused rollout waits for the operator
        count = Counter(t.node_id for t in live)
        spread = [count[n] for n in sim.state.nodes]
        assert max(spread) - min(spread) <= 1, (spread, status)


def test_a_move_that_finds_no_room_after_all_is_abandoned_and_the_old_task_keeps_serving() -> None:
    sim = Sim()
    sim.add_node(node("n1", cpus=2))
    service_id = sim.create_service(spec("web", replicas=2, cpus=1))
    sim.converge()
    original = {t.id for t in sim.live(service_id)}
    sim.add_node(node("n2", cpus=1))
    sim.run(RebalanceService(service_id, sim.now))
    plan = sim.plan()  # the move to n2, computed while n2 is empty
    (move,) = plan.created
    assert (move.node_id, move.relocates != "") == ("n2", True)
    batch = spec("batch", replicas=1, cpus=1)
    other = sim.create_service(batch)
    taken = msgspec.structs.replace(pending_task("b1", other, batch), state=TaskState.ASSIGNED, node_id="n2")
    sim.run(ApplyPlan(created=(taken,)))  # batch takes n2's only core before the move commits
    sim.run(plan)
    assert sim.state.tasks[move.id].node_id == "", "the FSM put the move back to pending: no room"
    for _ in range(3):
        sim.reconcile()
        sim.agents_step()
        sim.tick()
    running = [t for t in sim.live(service_id) if t.state == TaskState.RUNNING]
    assert {t.id for t in running} == original, "both tasks kept serving on n1"
    assert sim.state.tasks[move.id].state.terminal
    assert [t.node_id for t in sim.live(other)] == ["n2"]


def test_a_move_whose_node_is_drained_before_it_is_ready_is_dropped_in_one_pass() -> None:
    # Found by the random histories: the pass stopped the move and started a new task of the same
    # version in its slot, beside the old one, which the FSM refuses (one live task per version
    # and slot); the next pass then decided the rebalance over. A pass must decide it at once.
    sim, service_id = cluster_with(spec("web", replicas=2), nodes=2)
    original = {t.id for t in sim.live(service_id)}
    sim.run(RebalanceService(service_id, sim.now))
    sim.reconcile()  # the move is created on n2; its agent has not started it
    (move,) = [t for t in sim.tasks(service_id) if t.relocates]
    assert move.node_id == "n2"
    sim.run(commands.UpdateNode("n2", sim.now, availability=Availability.DRAIN))
    plan = sim.reconcile()
    assert plan.created == ()
    assert [(u.id, u.desired_state) for u in plan.updated] == [(move.id, TaskState.SHUTDOWN)]
    status = sim.state.services[service_id].update_status
    assert status is not None and (status.state, status.message) == (
        RolloutState.COMPLETED,
        "rebalanced: 0 tasks moved",
    )
    assert {t.id for t in sim.live(service_id)} == original, "the old tasks hold their slots"
    assert is_empty(sim.plan()), "the next pass decides nothing more"


def test_a_moved_task_leaves_the_load_balancing_of_every_node_before_its_stop() -> None:
    sim = overlay_cluster("n1")
    service_id = sim.create_service(spec("web", replicas=2, update=UpdateConfig(monitor=1.0)))
    sim.converge()
    sim.add_node(node("n2"))
    sim.set_node("n2", overlay=True, overlay_subnet="10.200.1.0/24")
    sim.run(RebalanceService(service_id, sim.now))
    serving = routing(sim, service_id)
    pass_with_routes(sim, {"n1": serving, "n2": serving})
    (move,) = [t for t in sim.tasks(service_id) if t.relocates]
    assert move.node_id == "n2" and move.overlay_address.startswith("10.200.1.")
    old = sim.state.tasks[move.relocates]
    sim.agents_step()  # the move runs, and is ready: the old task drains, still desired running
    sim.tick()
    pass_with_routes(sim, {"n1": serving, "n2": serving})
    old = sim.state.tasks[old.id]
    assert (old.desired_state, old.message) == (TaskState.RUNNING, "draining: moved to another node by a rebalance")
    assert old.draining_since and old.overlay_address not in routing(sim, service_id)
    assert move.overlay_address in routing(sim, service_id)
    sim.tick()
    pass_with_routes(sim, {"n1": routing(sim, service_id), "n2": serving})  # n2 may still route to it: no stop
    assert sim.state.tasks[old.id].desired_state == TaskState.RUNNING
    sim.tick()
    both = routing(sim, service_id)
    pass_with_routes(sim, {"n1": both, "n2": both})
    stopped = sim.state.tasks[old.id]
    assert (stopped.desired_state, stopped.message) == (
        TaskState.SHUTDOWN,
        "shutdown: moved to another node by a rebalance",
    )


def test_an_update_during_a_move_drops_the_move_and_the_old_task_serves_until_replaced() -> None:
    sim, service_id = cluster_with(spec("web", replicas=2, update=UpdateConfig(monitor=1.0)), nodes=2)
    sim.run(RebalanceService(service_id, sim.now))
    sim.reconcile()  # the move is created; its agent has not started it
    (move,) = [t for t in sim.tasks(service_id) if t.relocates]
    sim.update_service(service_id, spec("web", replicas=2, image="busybox:2", update=UpdateConfig(monitor=1.0)))
    for _ in range(20):
        sim.reconcile()
        by_slot = Counter(t.slot for t in sim.live(service_id))
        assert max(by_slot.values()) <= 2, sim.live(service_id)
        serving = {t.slot for t in sim.live(service_id) if t.state == TaskState.RUNNING}
        assert serving == {1, 2}, "every slot keeps a running task"
        sim.agents_step()
        sim.tick()
    assert sim.state.tasks[move.id].desired_state == TaskState.SHUTDOWN
    assert {t.spec_version for t in sim.live(service_id)} == {2}


def test_a_new_rebalance_counts_the_moves_a_paused_one_left_on_their_way() -> None:
    # Found by the random histories: a rebalance paused with one move still starting, and the
    # next rebalance started two more beside it, three moves at once with parallelism 2.
    sim = Sim()
    sim.state.apply([Put("cluster", ClusterInfo("c", 0.0, "", "", "", "", auto_rebalance=True))])
    sim.add_node(node("n1"))
    service_id = sim.create_service(spec("web", replicas=6, update=UpdateConfig(monitor=1.0, parallelism=2)))
    sim.converge()

    def fail(index: int) -> None:
        live = [t for t in sim.live(service_id) if t.state >= TaskState.ASSIGNED]
        sim.report(live[index % len(live)], TaskState.FAILED, error="exit status 1")

    for op in (lambda: fail(14), lambda: sim.add_node(node("n2")), lambda: fail(3)):
        op()
        sim.reconcile()
        sim.tick()
    assert sim.state.services[service_id].update_status.state == RolloutState.REBALANCE_PAUSED  # type: ignore[union-attr]
    assert any(t.relocates for t in sim.live(service_id))  # a move still on its way
    sim.state.apply(commands.apply(sim.state, RebalanceService(service_id, sim.now))[1])
    sim.reconcile()
    check_slots(sim, service_id, parallelism=2)
