"""The down check's mass-silence guard (ADR 69): when most ready nodes go silent at once, this
manager most likely stopped hearing them; none is marked down and none of their tasks restarts,
until enough of them are heard again. A few silent nodes are marked down as before."""

from __future__ import annotations

from collections import Counter

from tests.unit.core_sim import Sim, node, spec
from warren.model import Availability, NodeStatus, TaskState
from warren.reconciler import ReconcileConfig, down_check

PERIOD = 5.0  # the node timeout is 3 periods: 15 s


def running_cluster(nodes: int, replicas: int) -> tuple[Sim, str]:
    sim = Sim(ReconcileConfig(heartbeat_period=PERIOD))
    for i in range(nodes):
        sim.add_node(node(f"n{i:02d}"))
    svc = sim.create_service(spec("web", replicas=replicas))
    sim.converge()
    assert len(sim.running(svc)) == replicas
    return sim, svc


def go_silent(sim: Sim, node_ids: list[str], seconds: float) -> None:
    """Time passes; the given nodes' last heartbeats are `seconds` old, the others beat now."""
    sim.tick(seconds)
    for node_id in node_ids:
        sim.heartbeats[node_id] = sim.now - seconds


def check(sim: Sim) -> object:
    return down_check(sim.state, sim.now, sim.heartbeats, sim.config)


def statuses(sim: Sim) -> Counter[NodeStatus]:
    return Counter(n.status for n in sim.state.nodes.values())


def test_most_nodes_silent_at_once_none_is_marked_down_and_no_task_moves() -> None:
    sim, svc = running_cluster(10, 20)
    silent = [f"n{i:02d}" for i in range(6)]
    go_silent(sim, silent, 16)
    before = {t.id: (t.state, t.node_id) for t in sim.state.tasks.values()}

    plan = sim.reconcile()
    assert not plan.node_status and not plan.created and not plan.updated
    assert statuses(sim) == {NodeStatus.READY: 10}
    assert {t.id: (t.state, t.node_id) for t in sim.state.tasks.values()} == before
    found = check(sim)
    assert (found.held, found.silent, found.counted) == (True, 6, 10)
    assert sorted(found.held_nodes) == silent and not found.down
    # Later passes hold on as long as they stay silent.
    for _ in range(5):
        sim.tick(1)
        for node_id in silent:
            sim.heartbeats[node_id] = sim.now - 30
        assert not sim.reconcile().node_status
    assert len(sim.running(svc)) == 20


def test_silence_that_starts_at_once_is_held_although_heartbeat_phases_differ() -> None:
    """Nodes beat at different moments within a period: when this manager stops hearing all of
    them, they cross the timeout one after another over one period. The first ones are already
    held, because the rest missed two beats by then."""
    sim, svc = running_cluster(10, 20)
    deaf_from = sim.now
    for i, n in enumerate(sorted(sim.state.nodes)):
        sim.heartbeats[n] = deaf_from - i * PERIOD / 10  # one beat each, spread over a period
    for step in range(1, 22):  # past the timeout of every node, in steps of one second
        sim.now = deaf_from + step
        plan = sim.reconcile()
        assert not plan.node_status, f"{step}s: {plan.node_status}"
    assert check(sim).held and statuses(sim) == {NodeStatus.READY: 10}
    assert len(sim.running(svc)) == 20


def test_a_few_silent_nodes_are_marked_down_as_before() -> None:
    sim, svc = running_cluster(10, 20)
    dead = ["n03", "n07"]
    go_silent(sim, dead, 16)
    plan = sim.reconcile()
    assert sorted((s.node_id, s.status, s.message) for s in plan.node_status) == [
        ("n03", NodeStatus.DOWN, "heartbeat missed for 16s"),
        ("n07", NodeStatus.DOWN, "heartbeat missed for 16s"),
    ]
    assert not check(sim).held
    orphaned = [t for t in sim.state.tasks.values() if t.state == TaskState.ORPHANED]
    assert {t.node_id for t in orphaned} == set(dead) and len(orphaned) == 4
    assert {t.node_id for t in plan.created} <= set(sim.state.nodes) - set(dead)
    sim.converge()
    assert len(sim.running(svc)) == 20


def test_half_the_nodes_silent_is_not_a_mass_silence() -> None:
    """More than half is; exactly half of the ready nodes are marked down."""
    sim, _ = running_cluster(6, 12)
    go_silent(sim, ["n00", "n01", "n02"], 16)
    assert len(sim.reconcile().node_status) == 3


def test_a_small_cluster_still_loses_its_nodes() -> None:
    """Below MASS_SILENCE_MIN silent nodes there is no guard: 1 of 2, or 2 of 3, go down."""
    sim, _ = running_cluster(2, 2)
    go_silent(sim, ["n01"], 16)
    assert [s.node_id for s in sim.reconcile().node_status] == ["n01"]

    sim, _ = running_cluster(3, 3)
    go_silent(sim, ["n00", "n02"], 16)
    assert sorted(s.node_id for s in sim.reconcile().node_status) == ["n00", "n02"]

    sim, _ = running_cluster(4, 4)  # 3 of 4: the guard holds
    go_silent(sim, ["n00", "n01", "n02"], 16)
    assert not sim.reconcile().node_status


def test_the_guard_lifts_once_heartbeats_resume_and_the_still_silent_go_down() -> None:
    sim, svc = running_cluster(10, 20)
    silent = [f"n{i:02d}" for i in range(6)]
    go_silent(sim, silent, 16)
    assert not sim.reconcile().node_status and check(sim).held

    sim.tick(1)  # four of them are heard again; two stay silent (they did fail)
    for node_id in silent[4:]:
        sim.heartbeats[node_id] = sim.now - 17
    plan = sim.reconcile()
    assert sorted(s.node_id for s in plan.node_status) == ["n04", "n05"]
    assert not check(sim).held
    sim.converge()
    assert len(sim.running(svc)) == 20
    assert all(t.node_id not in ("n04", "n05") for t in sim.running(svc))


def test_nodes_the_operator_drains_are_marked_down_during_a_mass_silence() -> None:
    """A real mass failure shows as the held silence; the operator drains the nodes known dead,
    and they are marked down and their tasks run elsewhere, whatever the guard says."""
    sim, _ = running_cluster(10, 20)
    silent = [f"n{i:02d}" for i in range(7)]
    go_silent(sim, silent, 16)
    assert not sim.reconcile().node_status

    for node_id in silent[:2]:
        sim.set_node(node_id, availability=Availability.DRAIN)
    found = check(sim)
    assert (found.held, found.silent, found.counted) == (True, 5, 8)
    assert [n for n, _ in found.down] == ["n00", "n01"]
    plan = sim.reconcile()
    assert sorted(s.node_id for s in plan.node_status) == ["n00", "n01"]
    assert statuses(sim) == {NodeStatus.READY: 8, NodeStatus.DOWN: 2}


def test_held_nodes_get_no_new_task() -> None:
    sim, svc = running_cluster(10, 10)
    silent = [f"n{i:02d}" for i in range(6)]
    go_silent(sim, silent, 16)
    sim.scale(svc, 18)
    plan = sim.reconcile()
    assert len(plan.created) == 8 and not plan.node_status
    assert {t.node_id for t in plan.created} <= {"n06", "n07", "n08", "n09"}
