"""Incremental reconciliation (ADR 53): over random histories, a pass that visits only the
services touched since the last pass (and the unsettled ones) decides exactly what a pass over
every service decides."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.core_histories import EXAMPLES, RESTART, apply_op, new_sim, ops, up_nodes
from tests.unit.core_sim import Sim, spec
from warren.commands import ApplyPlan
from warren.model import (
    ClusterInfo,
    Node,
    NodeStatus,
    Resources,
    RestartCondition,
    RestartPolicy,
    Service,
    ServiceSpec,
    Task,
    TaskState,
)
from warren.reconciler import ReconcileConfig, Visit, reconcile_pass, touched_by
from warren.state import ClusterState, Delete, Put

incremental_ops = st.one_of(
    ops,
    st.tuples(st.just("tick"), st.sampled_from([0.5, 3.0, 20.0])),
    st.tuples(st.just("agents")),
)


def ids_from(start: int) -> Callable[[], str]:
    counter = itertools.count(start)
    return lambda: f"t{next(counter):06d}"


class Recorder:
    """Every change committed to the sim's state since the last pass, as the EventHub hands them."""

    def __init__(self, state: ClusterState) -> None:
        self.changes: list = []  # type: ignore[type-arg]
        apply = state.apply

        def recording(changes: list) -> list:  # type: ignore[type-arg]
            stored = apply(changes)  # as the store tells its watchers (ADR 92)
            self.changes.extend(stored)
            return stored

        state.apply = recording  # type: ignore[method-assign]


def both_passes(sim: Sim, seen: ClusterState | None, recorder: Recorder, unsettled: frozenset[str], start: int):  # type: ignore[no-untyped-def]
    full, _ = reconcile_pass(sim.state, sim.now, sim.heartbeats, sim.config, ids_from(start))
    visit = None if seen is None else touched_by(recorder.changes, seen)
    incremental, still = reconcile_pass(
        sim.state, sim.now, sim.heartbeats, sim.config, ids_from(start), visit=visit, unsettled=unsettled
    )
    return full, incremental, still


def _operate(sim: Sim, op: tuple, services: list[str]) -> None:  # type: ignore[type-arg]
    if op[0] == "tick":
        sim.tick(op[1])
    else:
        apply_op(sim, op, services)


def _commit(sim: Sim, plan: ApplyPlan, recorder: Recorder) -> None:
    """The pass's plan committed: its changes reach the next pass, as the leader's own commits do."""
    recorder.changes = []
    sim.run(plan)
    sim.agents_step(up_nodes(sim))
    sim.tick()


@settings(max_examples=max(EXAMPLES, 300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(incremental_ops, max_size=30))
def test_incremental_pass_decides_as_a_full_pass(steps: list[tuple]) -> None:  # type: ignore[type-arg]
    sim, services = new_sim()
    # A service with a restart delay: its replacement waits for time alone, no change.
    delayed = RestartPolicy(condition=RestartCondition.ANY, delay=2.0)
    services.append(sim.create_service(spec("slow", replicas=2, restart=delayed)))
    recorder = Recorder(sim.state)
    seen: ClusterState | None = None  # the first pass is a full one, as a new leader's
    unsettled: frozenset[str] = frozenset()
    start = 1
    for op in [("agents",), *steps]:
        _operate(sim, op, services)
        full, incremental, unsettled = both_passes(sim, seen, recorder, unsettled, start)
        assert incremental == full, (op, full, incremental)
        start += len(full.created)
        seen = sim.state.copy()
        _commit(sim, full, recorder)


def _contents(state: ClusterState) -> dict[str, object]:
    """What a state holds, its indexes included; not the floors its allocators start searching
    from (hints, which the commands move as they allocate) nor an index's empty entries."""
    out: dict[str, object] = {}
    for name, value in vars(state).items():
        if name.endswith("_floor") or callable(value):  # callable: the Recorder's wrapper of apply
            continue
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v or not isinstance(v, set | dict)}
        out[name] = value
    return out


@settings(max_examples=max(EXAMPLES, 200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(incremental_ops, max_size=30))
def test_a_copy_kept_up_to_date_with_the_commits_decides_as_the_live_state(steps: list[tuple]) -> None:  # type: ignore[type-arg]
    """The orchestrator's own copy of the state (ADR 92): copied once, then given each pass the
    changes committed since, it holds what the live state holds, and an incremental pass over
    it decides what a full pass over the live state decides."""
    sim, services = new_sim()
    recorder = Recorder(sim.state)
    mirror: ClusterState | None = None
    unsettled: frozenset[str] = frozenset()
    start = 1
    for op in [("agents",), *steps]:
        _operate(sim, op, services)
        full, _ = reconcile_pass(sim.state, sim.now, sim.heartbeats, sim.config, ids_from(start))
        if mirror is None:  # the first pass copies the state, and is a full one
            mirror, visit = sim.state.copy(), None
        else:
            visit = touched_by(recorder.changes, mirror)
            mirror.apply(recorder.changes)
        assert _contents(mirror) == _contents(sim.state), op
        incremental, unsettled = reconcile_pass(
            mirror, sim.now, sim.heartbeats, sim.config, ids_from(start), visit=visit, unsettled=unsettled
        )
        assert incremental == full, (op, full, incremental)
        start += len(full.created)
        _commit(sim, full, recorder)


def test_a_settled_cluster_visits_only_what_changed() -> None:
    """After one full pass of a settled cluster, a scale of one service visits that service
    alone: the other, untouched and settled, is not in the next pass's unsettled set."""
    sim = Sim()
    sim.add_node(Node(id="n1", hostname="n1", status=NodeStatus.READY, resources=Resources(8_000_000_000, 1 << 34)))
    a = sim.create_service(spec("a", replicas=2, restart=RESTART))
    b = sim.create_service(spec("b", replicas=2, restart=RESTART))
    sim.converge()
    plan, unsettled = reconcile_pass(sim.state, sim.now, sim.heartbeats, sim.config, sim.new_id)
    assert plan == ApplyPlan() and unsettled == frozenset()
    seen = sim.state.copy()
    sim.scale(b, 3)
    service = sim.state.services[b]
    visit = touched_by([Put("service", service)], seen)
    assert visit == Visit(services=frozenset({b}))
    plan, unsettled = reconcile_pass(sim.state, sim.now, sim.heartbeats, sim.config, sim.new_id, visit=visit)
    assert [t.service_id for t in plan.created] == [b]
    assert unsettled == frozenset({b})
    assert a not in unsettled


def test_a_restart_delay_keeps_its_service_visited() -> None:
    """Time alone ends a restart delay: the service whose task died stays unsettled, and the
    incremental pass after the delay replaces the task with no change in between."""
    sim = Sim()
    sim.add_node(Node(id="n1", hostname="n1", status=NodeStatus.READY, resources=Resources(8_000_000_000, 1 << 34)))
    slow = sim.create_service(spec("slow", replicas=1, restart=RestartPolicy(RestartCondition.ANY, delay=5.0)))
    sim.converge()
    (task,) = sim.running(slow)
    sim.report(task, TaskState.FAILED, exit_code=1)
    plan, unsettled = reconcile_pass(sim.state, sim.now, sim.heartbeats, sim.config, sim.new_id)
    assert plan == ApplyPlan() and unsettled == frozenset({slow})  # the delay runs
    sim.tick(6)
    plan, _ = reconcile_pass(sim.state, sim.now, sim.heartbeats, sim.config, sim.new_id, None, Visit(), unsettled)
    assert [t.slot for t in plan.created] == [1]


def test_changes_of_unknown_effect_ask_for_a_full_pass() -> None:
    state = ClusterState()
    task = Task(
        id="t1", service_id="s1", service_name="s", slot=1, spec=ServiceSpec(name="s", image="i"), spec_version=1
    )
    assert touched_by([Put("task", task)], state) == Visit(services=frozenset({"s1"}))
    assert touched_by([Delete("task", "gone")], state) is None  # its service is unknown
    assert touched_by([Put("service", Service(id="s2", spec=ServiceSpec(name="x", image="i")))], state) == Visit(
        services=frozenset({"s2"})
    )
    assert touched_by([Put("cluster", ClusterInfo("c", 0.0, "", "", "", ""))], state) is None


def test_an_incremental_pass_reads_no_spec_mounts_of_services_that_mount_nothing(monkeypatch) -> None:
    """Every pass looks for volumes left unbound across all services (ADR 40): services that
    mount nothing must cost no more than a glance, or an incremental pass is O(services) of
    spec walks (5.3 ms at 10,000 services, most of the leader's pass under a create load)."""
    from warren import mounts

    state = ClusterState()
    state.apply(
        [
            Put("service", Service(id=f"s{i:04d}", spec=ServiceSpec(name=f"n{i:04d}", image="busybox", replicas=0)))
            for i in range(1_000)
        ]  # type: ignore[arg-type]
    )
    looked_at: list[str] = []
    real = mounts.volume_names

    def counting(spec: ServiceSpec) -> tuple[str, ...]:
        looked_at.append(spec.name)
        return real(spec)

    monkeypatch.setattr(mounts, "volume_names", counting)
    plan, _ = reconcile_pass(state, 1.0, {}, ReconcileConfig(), ids_from(0), visit=Visit(services=frozenset({"s0500"})))
    assert plan.created == ()
    assert looked_at == []
