"""The pure rebalance plan (ADR 36): the fewest moves, even within one, room and eligibility
respected, idempotent; which task moves first, what a node has room for, which nodes are
eligible; a move under way is not moved again."""

from __future__ import annotations

from collections import Counter

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.core_sim import node
from tests.unit.rebalance_rig import layout, placed
from warren import rebalance
from warren.model import Availability, Node, NodeStatus, Resources, Task, TaskState


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


def test_a_move_under_way_is_not_moved_again() -> None:
    in_flight = msgspec.structs.replace(placed(1, "a", ready=False), relocates="t000")
    tasks = [in_flight, placed(2, "a"), placed(3, "a")]
    assert [m.task_id for m in rebalance.plan(tasks, {"a": None, "b": None})] == ["t003"]
    only_moves = [msgspec.structs.replace(t, relocates=f"x{t.slot}") for t in layout([0, 0, 3])[:3]]
    only_moves = [msgspec.structs.replace(t, ready_at=0.0, state=TaskState.STARTING) for t in only_moves]
    assert rebalance.plan(only_moves, {"n0": None, "n1": None, "n2": None}) == ()
