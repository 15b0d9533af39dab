"""Rebalancing (ADR 36): the pure plan (fewest moves, even within one, room and eligibility
respected, idempotent), a rebalance's steps, the `service rebalance` handler, the FSM's slot
guard for a move, the whole thing through the reconciler on the core simulator (start-first,
the drain before a moved task's stop, auto-rebalance, random histories), the Control API, and
the CLI's wait."""

from __future__ import annotations

import os
from collections import Counter

import grpc
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.core_sim import Sim, node, pending_task, spec
from tests.unit.test_drain import overlay_cluster, routing
from tests.unit.test_drain import step as pass_with_routes
from tests.unit.test_manager_services import Manager, run, web
from warren import commands, rebalance
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import types_pb2 as pb
from warren.cli import service_rebalance
from warren.cli.errors import CliError, Exit
from warren.commands import ApplyPlan, RebalanceService, UpdateClusterSettings
from warren.manager.server import ApiError
from warren.model import (
    Availability,
    ClusterInfo,
    FailureAction,
    Node,
    NodeStatus,
    Resources,
    RolloutState,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskState,
    UpdateConfig,
    UpdateStatus,
    is_ready,
)
from warren.state import Put

NOW = 1000.0


def placed(index: int, node_id: str, *, ready: bool = True, created_at: float = 1.0) -> Task:
    return Task(
        id=f"t{index:03d}",
        service_id="s1",
        service_name="web",
        slot=index,
        spec=ServiceSpec(name="web", image="app"),
        spec_version=1,
        state=TaskState.RUNNING if ready else TaskState.STARTING,
        node_id=node_id,
        created_at=created_at,
        ready_at=created_at if ready else 0.0,
    )


def layout(counts: list[int]) -> list[Task]:
    """counts[i] tasks on node n{i}."""
    tasks: list[Task] = []
    for i, count in enumerate(counts):
        for _ in range(count):
            tasks.append(placed(len(tasks) + 1, f"n{i}"))
    return tasks


def after(tasks: list[Task], moves: tuple[rebalance.Move, ...]) -> list[Task]:
    target = {m.task_id: m.to_node for m in moves}
    return [msgspec.structs.replace(t, node_id=target.get(t.id, t.node_id)) for t in tasks]


def per_node(tasks: list[Task], nodes: list[str]) -> list[int]:
    count = Counter(t.node_id for t in tasks)
    return [count[n] for n in nodes]


def fewest_moves(counts: list[int]) -> int:
    """The known minimum: the r = T mod n fullest nodes keep q + 1 tasks, the others q."""
    total, n = sum(counts), len(counts)
    q, r = divmod(total, n)
    targets = [q + 1] * r + [q] * (n - r)
    return sum(max(0, c - f) for c, f in zip(sorted(counts, reverse=True), targets, strict=True))


# -- the plan ----------------------------------------------------------------------------------
@given(st.lists(st.integers(0, 12), min_size=1, max_size=8))
@settings(max_examples=150, deadline=None)
def test_the_plan_moves_the_fewest_tasks_and_evens_out_within_one(counts: list[int]) -> None:
    tasks = layout(counts)
    nodes = [f"n{i}" for i in range(len(counts))]
    rooms: dict[str, int | None] = dict.fromkeys(nodes)
    moves = rebalance.plan(tasks, rooms)
    assert len(moves) == fewest_moves(counts)
    assert len({m.task_id for m in moves}) == len(moves), "a task moves at most once"
    result = per_node(after(tasks, moves), nodes)
    assert max(result) - min(result) <= 1
    assert rebalance.plan(after(tasks, moves), rooms) == (), "planning again moves nothing"


@given(
    st.lists(st.tuples(st.integers(0, 10), st.one_of(st.none(), st.integers(0, 6))), min_size=1, max_size=7),
    st.lists(st.integers(0, 5), max_size=3),
)
@settings(max_examples=150, deadline=None)
def test_the_plan_respects_room_and_eligibility_and_is_idempotent(
    nodes_spec: list[tuple[int, int | None]], elsewhere: list[int]
) -> None:
    counts = [c for c, _ in nodes_spec] + elsewhere
    tasks = layout(counts)
    eligible = [f"n{i}" for i in range(len(nodes_spec))]
    rooms = {f"n{i}": room for i, (_, room) in enumerate(nodes_spec)}
    moves = rebalance.plan(tasks, rooms)
    received = Counter(m.to_node for m in moves)
    for node_id, got in received.items():
        assert node_id in rooms, "never onto a node that may not take the service"
        limit = rooms[node_id]
        assert limit is None or got <= limit, "never past a node's room"
    on_other_nodes = {t.id for t in tasks if t.node_id not in rooms}
    assert not {m.task_id for m in moves} & on_other_nodes, "tasks on other nodes stay"
    assert all(m.from_node != m.to_node for m in moves)
    moved = after(tasks, moves)
    left = {n: (r if r is None else r - received[n]) for n, r in rooms.items()}
    assert rebalance.plan(moved, left) == ()
    # Balanced within one, except towards nodes without room.
    result = dict(zip(eligible, per_node(moved, eligible), strict=True))
    fullest = max(result.values())
    for node_id, count in result.items():
        assert count >= fullest - 1 or left[node_id] == 0


def test_a_task_that_serves_nothing_yet_moves_first_then_the_newest() -> None:
    tasks = [
        placed(1, "a", created_at=1.0),
        placed(2, "a", created_at=3.0),
        placed(3, "a", ready=False, created_at=2.0),
    ]
    assert [m.task_id for m in rebalance.plan(tasks, {"a": None, "b": None})] == ["t003"]
    all_ready = [*tasks[:2], placed(4, "a")]
    assert [m.task_id for m in rebalance.plan(all_ready, {"a": None, "b": None})] == ["t002"]


def test_room_counts_reservations_and_overlay_addresses() -> None:
    big = Node(id="n", hostname="n", resources=Resources(4_000_000_000, 8 << 30))
    need = Resources(1_000_000_000, 1 << 30)
    assert rebalance.room(big, Resources(1_000_000_000, 0), 0, need) == 3
    assert rebalance.room(big, Resources(0, 7 << 30), 0, need) == 1
    assert rebalance.room(big, Resources(), 0, Resources()) is None
    on_overlay = msgspec.structs.replace(big, overlay=True, overlay_subnet="10.0.0.0/29")  # 5 addresses for tasks
    assert rebalance.room(on_overlay, Resources(), 3, Resources()) == 2
    assert rebalance.room(on_overlay, Resources(), 9, Resources()) == 0


def test_eligible_nodes_are_ready_active_and_match_the_constraints() -> None:
    nodes = [
        node("a", labels={"zone": "eu"}),
        node("b", labels={"zone": "us"}),
        node("c", labels={"zone": "eu"}, availability=Availability.PAUSE),
        node("d", labels={"zone": "eu"}, status=NodeStatus.DOWN),
    ]
    eligible = rebalance.Eligible(nodes)
    assert eligible.nodes(("node.labels.zone==eu",))[1] == {"a"}
    assert eligible.nodes(())[1] == {"a", "b"}
    assert eligible.nodes(("nonsense",))[1] == frozenset()


# -- steps -------------------------------------------------------------------------------------
def service(state: RolloutState | None = RolloutState.REBALANCING, **update: object) -> Service:
    status = UpdateStatus(state, 900.0, 1, 1, message="rebalancing: 0 of 2 tasks moved") if state else None
    config = UpdateConfig(**update)  # type: ignore[arg-type]
    return Service(id="s1", spec=ServiceSpec(name="web", image="app", replicas=4, update=config), update_status=status)


ELIGIBLE = ([Node(id="n0", hostname="n0"), Node(id="n1", hostname="n1")], frozenset({"n0", "n1"}))


def no_limit(_node: Node) -> int | None:
    return None


def moved(slot: int, *, ready_at: float = 0.0, state: TaskState = TaskState.RUNNING) -> Task:
    return msgspec.structs.replace(
        placed(slot, "n1", created_at=950.0), id=f"m{slot}", relocates=f"t{slot:03d}", ready_at=ready_at, state=state
    )


def test_a_rebalance_starts_its_moves_one_lane_at_a_time_and_completes() -> None:
    four_on_a = layout([4])
    result = rebalance.step(service(), four_on_a, [], ELIGIBLE, no_limit, NOW, automatic=False)
    assert [m.to_node for m in result.moves] == ["n1"]
    assert result.status is None  # its message says so already
    # One move in flight, not yet past the monitor: the lane is busy.
    in_flight = moved(4, ready_at=NOW - 1)
    holders = [*four_on_a[:3], in_flight]
    assert rebalance.step(service(), holders, [in_flight], ELIGIBLE, no_limit, NOW, False).moves == ()
    done = moved(4, ready_at=NOW - 5)
    step = rebalance.step(service(), [*four_on_a[:3], done], [done], ELIGIBLE, no_limit, NOW, False)
    assert len(step.moves) == 1 and step.status is not None
    assert step.status.message == "rebalancing: 1 of 2 tasks moved"
    second = moved(3, ready_at=NOW - 5)
    holders = [*four_on_a[:2], second, done]
    end = rebalance.step(service(), holders, [done, second], ELIGIBLE, no_limit, NOW, False)
    assert end.moves == ()
    assert end.status is not None and end.status.state == RolloutState.COMPLETED
    assert (end.status.message, end.status.completed_at) == ("rebalanced: 2 tasks moved", NOW)


def test_parallelism_zero_moves_everything_at_once() -> None:
    result = rebalance.step(service(parallelism=0), layout([6]), [], ELIGIBLE, no_limit, NOW, False)
    assert len(result.moves) == 3


def test_a_failed_move_pauses_and_says_why_unless_the_failure_action_is_continue() -> None:
    failed = msgspec.structs.replace(moved(4, state=TaskState.FAILED), error="exit status 3")
    holders = layout([4])
    for action in (FailureAction.PAUSE, FailureAction.ROLLBACK):
        result = rebalance.step(service(failure_action=action), holders, [failed], ELIGIBLE, no_limit, NOW, False)
        assert result.moves == ()
        assert result.status is not None and result.status.state == RolloutState.REBALANCE_PAUSED
        assert result.status.message == "paused: task web.4 failed: exit status 3 (image app)"
    going_on = rebalance.step(
        service(failure_action=FailureAction.CONTINUE), holders, [failed], ELIGIBLE, no_limit, NOW, False
    )
    assert len(going_on.moves) == 1
    assert going_on.status is not None and going_on.status.message == "rebalancing: 0 of 2 tasks moved; 1 failed"


def test_nothing_moves_while_a_slot_is_unplaced_or_on_another_version() -> None:
    unplaced = [*layout([4]), msgspec.structs.replace(placed(5, ""), state=TaskState.PENDING)]
    assert rebalance.step(service(), unplaced, [], ELIGIBLE, no_limit, NOW, False) == rebalance.Step()
    outdated = [*layout([3]), msgspec.structs.replace(placed(4, "a"), spec_version=0)]
    assert rebalance.step(service(), outdated, [], ELIGIBLE, no_limit, NOW, False) == rebalance.Step()


def test_nothing_moves_while_an_old_task_serves_beside_a_slot_s_new_one() -> None:
    """Start-first: an update's old task serves until its new one is ready. Found by the
    reconciler's property test: a rebalance moved the new one, and the slot held three tasks."""
    holders = [*layout([3]), placed(4, "n0", ready=False, created_at=950.0)]
    old = msgspec.structs.replace(placed(4, "n1"), id="old4", spec_version=0)
    for state in (None, RolloutState.REBALANCING):
        assert (
            rebalance.step(service(state), holders, [*holders, old], ELIGIBLE, no_limit, NOW, True) == rebalance.Step()
        )
    # A move's old task beside it is the rebalance's own: it goes on.
    in_flight = moved(4, ready_at=NOW - 5)
    going_on = rebalance.step(
        service(), [*layout([3]), in_flight], [*layout([4]), in_flight], ELIGIBLE, no_limit, NOW, False
    )
    assert going_on.status is not None


def test_auto_rebalance_starts_only_when_settled_and_off_by_more_than_one() -> None:
    four_on_a = layout([4])
    assert rebalance.step(service(None), four_on_a, [], ELIGIBLE, no_limit, NOW, automatic=False) == rebalance.Step()
    started = rebalance.step(service(None), four_on_a, [], ELIGIBLE, no_limit, NOW, automatic=True)
    assert len(started.moves) == 1
    assert started.status == UpdateStatus(
        RolloutState.REBALANCING, NOW, 1, 1, message="rebalancing: 0 of 2 tasks moved"
    )
    completed = rebalance.step(service(RolloutState.COMPLETED), four_on_a, [], ELIGIBLE, no_limit, NOW, True)
    assert completed.status is not None
    # Off by one: no move (hysteresis). A rollout under way or paused, or a paused rebalance: wait.
    assert rebalance.step(service(None), layout([2, 1]), [], ELIGIBLE, no_limit, NOW, True) == rebalance.Step()
    for state in (RolloutState.UPDATING, RolloutState.PAUSED, RolloutState.REBALANCE_PAUSED):
        assert rebalance.step(service(state), four_on_a, [], ELIGIBLE, no_limit, NOW, True) == rebalance.Step()


# -- the handler -------------------------------------------------------------------------------
def cluster_with(spec_: ServiceSpec, nodes: int = 1) -> tuple[Sim, str]:
    sim = Sim()
    sim.add_node(node("n1"))
    service_id = sim.create_service(spec_)
    sim.converge()
    for i in range(2, nodes + 1):
        sim.add_node(node(f"n{i}"))
    return sim, service_id


def test_the_handler_refuses_bad_input_and_writes_nothing_when_balanced() -> None:
    sim, service_id = cluster_with(spec("web", replicas=4), nodes=1)
    result, changes = commands.apply(sim.state, RebalanceService(service_id, NOW))
    assert (result.ok, changes) == (True, [])
    assert result.message == "nothing to move: 4 tasks on 1 node (4), as even as the eligible nodes allow"
    assert commands.apply(sim.state, RebalanceService("nope", NOW))[0].code == "not_found"
    stale = commands.apply(sim.state, RebalanceService(service_id, NOW, expected_version=7))[0]
    assert stale.code == "failed_precondition" and "changed since version 7" in stale.message

    sim_global, global_id = cluster_with(spec("agent", mode=ServiceMode.GLOBAL), nodes=2)
    refused = commands.apply(sim_global.state, RebalanceService(global_id, NOW))[0]
    assert refused.code == "invalid_argument"
    assert refused.message == "service agent is global: it runs one task on each eligible node, none to move"


def test_the_handler_starts_a_rebalance_and_refuses_during_a_rollout() -> None:
    sim, service_id = cluster_with(spec("web", replicas=4), nodes=2)
    result = sim.run(RebalanceService(service_id, sim.now))
    assert result.message == "rebalancing: 0 of 2 tasks moved"
    status = sim.state.services[service_id].update_status
    assert status is not None and (status.state, status.from_version, status.to_version) == (
        RolloutState.REBALANCING,
        1,
        1,
    )
    again, changes = commands.apply(sim.state, RebalanceService(service_id, sim.now))
    assert again.ok and changes == [] and again.message == "rebalancing already (rebalancing: 0 of 2 tasks moved)"

    sim.update_service(service_id, spec("web", replicas=4, image="busybox:2"))
    status = sim.state.services[service_id].update_status
    assert status is not None and status.message == "replaces the rebalance of version 1, which was rebalancing"
    refused = commands.apply(sim.state, RebalanceService(service_id, sim.now))[0]
    assert refused.code == "failed_precondition"
    assert refused.message == (
        "the update of service web to version 2 is updating; rebalance it once the rollout completed"
    )


def test_auto_rebalance_is_a_cluster_setting() -> None:
    sim = Sim()
    sim.state.apply([Put("cluster", ClusterInfo("c", 0.0, "", "", "", ""))])
    sim.run(UpdateClusterSettings(auto_rebalance=True))
    assert sim.state.cluster is not None and sim.state.cluster.auto_rebalance
    sim.run(UpdateClusterSettings(wg_key_rotation_period=60.0))  # other settings leave it
    assert sim.state.cluster.auto_rebalance
    sim.run(UpdateClusterSettings(auto_rebalance=False))
    assert not sim.state.cluster.auto_rebalance


# -- the FSM's slot guard ----------------------------------------------------------------------
def test_a_slot_takes_one_move_beside_the_task_it_replaces() -> None:
    sim, service_id = cluster_with(spec("web", replicas=1), nodes=2)
    (old,) = sim.live(service_id)
    fresh = msgspec.structs.replace(old, id="move1", node_id="", state=TaskState.PENDING, relocates=old.id)
    twice = msgspec.structs.replace(fresh, id="move2")
    duplicate = msgspec.structs.replace(fresh, id="plain", relocates="")
    orphan_move = msgspec.structs.replace(fresh, id="move3", relocates="gone")
    sim.run(ApplyPlan(created=(fresh, twice, duplicate, orphan_move)))
    assert {t.id for t in sim.live(service_id)} == {old.id, "move1"}


# -- through the reconciler --------------------------------------------------------------------
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


def test_an_automatic_rebalance_waits_until_the_new_node_settled() -> None:
    fresh = ([ELIGIBLE[0][0], msgspec.structs.replace(ELIGIBLE[0][1], updated_at=NOW - 2.0)], ELIGIBLE[1])
    four_on_n0 = layout([4])
    assert rebalance.step(service(None), four_on_n0, [], fresh, no_limit, NOW, True, settle=3.0) == rebalance.Step()
    later = rebalance.step(service(None), four_on_n0, [], fresh, no_limit, NOW + 1.0, True, settle=3.0)
    assert [m.to_node for m in later.moves] == ["n1"]


# -- a property over random histories -----------------------------------------------------------
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


# -- the Control API -----------------------------------------------------------------------------
def test_the_api_answers_refusals_and_nothing_to_move_without_a_raft_entry() -> None:
    async def scenario() -> None:
        manager = Manager()
        await manager.init()
        await manager.control.CreateService(cpb.CreateServiceRequest(spec=web(2)), None)
        agent = pb.ServiceSpec(name="agent", image="busybox", mode="global")
        await manager.control.CreateService(cpb.CreateServiceRequest(spec=agent), None)
        before = manager.store.applied_index
        cases = [
            (cpb.RebalanceServiceRequest(service="nope"), grpc.StatusCode.NOT_FOUND, "not found"),
            (cpb.RebalanceServiceRequest(service="agent"), grpc.StatusCode.INVALID_ARGUMENT, "is global"),
            (cpb.RebalanceServiceRequest(service="web", version=7), grpc.StatusCode.FAILED_PRECONDITION, "changed"),
        ]
        for request, code, needle in cases:
            with pytest.raises(ApiError) as err:
                await manager.control.RebalanceService(request, None)
            assert err.value.code == code and needle in err.value.message
        answer = await manager.control.RebalanceService(cpb.RebalanceServiceRequest(service="web"), None)
        assert (answer.moves, answer.message) == (0, "nothing to move: no task is placed")
        assert answer.service.spec.name == "web"
        assert manager.store.applied_index == before, "no Raft entry"

        info = await manager.control.UpdateCluster(cpb.UpdateClusterRequest(auto_rebalance=True), None)
        assert info.auto_rebalance
        info = await manager.control.UpdateCluster(cpb.UpdateClusterRequest(wg_key_rotation_period=0), None)
        assert info.auto_rebalance, "a field left unset keeps its value"

    run(scenario())


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


# -- the CLI's wait ------------------------------------------------------------------------------
class Answers:
    """A client whose GetService returns the given statuses in turn (the last one again)."""

    def __init__(self, *statuses: tuple[str, str, float]) -> None:
        self.statuses = list(statuses)

    def call(self, method: str, request: object) -> pb.Service:
        assert method == "GetService"
        state, message, started_at = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        service = pb.Service(id="s1", spec=pb.ServiceSpec(name="web", replicas=4), version=1)
        service.update_status.CopyFrom(
            pb.UpdateStatus(state=state, message=message, started_at=started_at, from_version=1, to_version=1)
        )
        return service


def started_service() -> pb.Service:
    return Answers(("rebalancing", "rebalancing: 0 of 2 tasks moved", 5.0)).call("GetService", None)


def test_the_cli_follows_a_rebalance_to_its_end(capsys: pytest.CaptureFixture[str]) -> None:
    done = Answers(
        ("rebalancing", "rebalancing: 0 of 2 tasks moved", 5.0),
        ("rebalancing", "rebalancing: 1 of 2 tasks moved", 5.0),
        ("completed", "rebalanced: 2 tasks moved", 5.0),
    )
    assert service_rebalance._follow(done, started_service(), timeout=10) == 0
    assert capsys.readouterr().err.splitlines() == [
        "web: rebalancing: 0 of 2 tasks moved",
        "web: rebalancing: 1 of 2 tasks moved",
        "web: rebalanced: 2 tasks moved",
    ]
    paused = Answers(("rebalance_paused", "paused: task web.3 failed: exit status 3 (image app)", 5.0))
    with pytest.raises(CliError) as err:
        service_rebalance._follow(paused, started_service(), timeout=10)
    assert err.value.code == Exit.PAUSED
    assert err.value.message.startswith("web: the rebalance paused: task web.3 failed")
    replaced = Answers(("updating", "replaces the rebalance of version 1, which was rebalancing", 9.0))
    with pytest.raises(CliError) as err:
        service_rebalance._follow(replaced, started_service(), timeout=10)
    assert (err.value.code, err.value.message) == (Exit.FAILURE, "web: the rebalance was replaced: updating")


def test_a_move_under_way_is_not_moved_again() -> None:
    in_flight = msgspec.structs.replace(placed(1, "a", ready=False), relocates="t000")
    tasks = [in_flight, placed(2, "a"), placed(3, "a")]
    assert [m.task_id for m in rebalance.plan(tasks, {"a": None, "b": None})] == ["t003"]
    only_moves = [msgspec.structs.replace(t, relocates=f"x{t.slot}") for t in layout([0, 0, 3])[:3]]
    only_moves = [msgspec.structs.replace(t, ready_at=0.0, state=TaskState.STARTING) for t in only_moves]
    assert rebalance.plan(only_moves, {"n0": None, "n1": None, "n2": None}) == ()


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
