"""A rebalance's steps (ADR 36): its moves one lane at a time until it completes, paused by a
failed move, held while a slot is unplaced, outdated or mid-update, and started automatically
only once settled and off by more than one."""

from __future__ import annotations

import msgspec

from tests.unit.rebalance_rig import NOW, layout, placed
from warren import rebalance
from warren.model import (
    FailureAction,
    Node,
    RolloutState,
    Service,
    ServiceSpec,
    Task,
    TaskState,
    UpdateConfig,
    UpdateStatus,
)


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


def test_an_automatic_rebalance_waits_until_the_new_node_settled() -> None:
    fresh = ([ELIGIBLE[0][0], msgspec.structs.replace(ELIGIBLE[0][1], updated_at=NOW - 2.0)], ELIGIBLE[1])
    four_on_n0 = layout([4])
    assert rebalance.step(service(None), four_on_n0, [], fresh, no_limit, NOW, True, settle=3.0) == rebalance.Step()
    later = rebalance.step(service(None), four_on_n0, [], fresh, no_limit, NOW + 1.0, True, settle=3.0)
    assert [m.to_node for m in later.moves] == ["n1"]
