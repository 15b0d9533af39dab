"""Service versions (ADR 33): an update starts a rollout and is remembered with a summary, a
replica-only change is scaling, a rollback is a new version with an older spec, and a plan's
rollout changes apply only to the version they were decided for."""

from __future__ import annotations

import msgspec

from warren import commands, revisions
from warren.model import PortConfig, RolloutState, Service, ServiceSpec, UpdateStatus
from warren.state import ClusterState, Put

V1 = ServiceSpec(name="web", image="app:1", replicas=2)


def _run(state: ClusterState, command: commands.Command) -> commands.Result:
    result, changes = commands.apply(state, command)
    state.apply(changes)
    return result


def _created(spec: ServiceSpec = V1) -> ClusterState:
    state = ClusterState()
    assert _run(state, commands.CreateService(Service(id="s1", spec=spec, created_at=1.0))).ok
    return state


def _update(state: ClusterState, at: float, **fields: object) -> commands.Result:
    spec = msgspec.structs.replace(state.services["s1"].spec, **fields)
    return _run(state, commands.UpdateService("s1", spec, at))


def test_an_update_starts_a_rollout_and_is_remembered() -> None:
    state = _created()
    assert [(r.version, r.summary) for r in state.services["s1"].history] == [(1, "created")]
    assert _update(state, 10.0, image="app:2").ok
    service = state.services["s1"]
    assert service.version == 2
    assert service.update_status == UpdateStatus(RolloutState.UPDATING, 10.0, from_version=1, to_version=2)
    assert [(r.version, r.summary, r.at) for r in service.history] == [
        (1, "created", 1.0),
        (2, "image app:1 -> app:2", 10.0),
    ]


def test_a_replica_only_change_scales_without_a_version() -> None:
    state = _created()
    assert _update(state, 10.0, replicas=5).ok
    service = state.services["s1"]
    assert (service.version, service.spec.replicas, service.update_status) == (1, 5, None)


def test_an_update_during_an_update_replaces_it_and_says_so() -> None:
    state = _created()
    _update(state, 10.0, image="app:2")
    _update(state, 20.0, image="app:3")
    status = state.services["s1"].update_status
    assert status is not None and (status.from_version, status.to_version) == (2, 3)
    assert status.message == "replaces the update to version 2, which was updating"


def test_a_forced_update_is_a_version_that_changes_nothing_else() -> None:
    state = _created()
    assert _update(state, 10.0, force_update=1).ok
    service = state.services["s1"]
    assert service.version == 2 and service.history[-1].summary == "force update 0 -> 1"


def test_rollback_returns_to_the_version_before_as_a_new_version_keeping_the_scale() -> None:
    state = _created()
    _update(state, 10.0, image="app:2")
    _run(state, commands.ScaleService("s1", 7, 11.0))
    assert _run(state, commands.RollbackService("s1", 20.0)).ok
    service = state.services["s1"]
    assert (service.version, service.spec.image, service.spec.replicas) == (3, "app:1", 7)
    assert service.update_status == UpdateStatus(
        RolloutState.ROLLBACK_STARTED, 20.0, 2, 3, message="rollback to version 1 requested"
    )
    assert service.history[-1].summary == "rollback to version 1: image app:2 -> app:1"
    # --to-version, keeping today's scale, or with the count that version last ran with
    _run(state, commands.ScaleService("s1", 3, 21.0))
    assert _run(state, commands.RollbackService("s1", 30.0, to_version=2)).ok
    assert (state.services["s1"].spec.image, state.services["s1"].spec.replicas) == ("app:2", 3)
    assert _run(state, commands.RollbackService("s1", 40.0, to_version=2, restore_replicas=True)).ok
    assert (state.services["s1"].spec.image, state.services["s1"].spec.replicas) == ("app:2", 7)
    # The current spec is stored once: the history's current entry holds none.
    assert [r.spec is None for r in state.services["s1"].history] == [False] * 4 + [True]
    assert state.services["s1"].previous_spec is None


def test_rollbacks_that_cannot_be_are_refused_and_change_nothing() -> None:
    state = _created()
    before = state.services["s1"]
    refused = _run(state, commands.RollbackService("s1", 5.0))
    assert (refused.code, refused.message) == (
        "invalid_argument",
        "service web has no earlier version to roll back to",
    )
    _update(state, 10.0, image="app:2")
    before = state.services["s1"]
    missing = _run(state, commands.RollbackService("s1", 11.0, to_version=9))
    assert (missing.code, missing.message) == ("invalid_argument", "service web has no version 9 (it keeps: 1, 2)")
    current = _run(state, commands.RollbackService("s1", 11.0, to_version=2))
    assert current.code == "invalid_argument"
    stale = _run(state, commands.RollbackService("s1", 11.0, expected_version=1))
    assert stale.code == "failed_precondition"
    assert _run(state, commands.RollbackService("nope", 11.0)).code == "not_found"
    assert state.services["s1"] == before


def test_a_rollback_whose_ports_were_taken_meanwhile_is_refused() -> None:
    state = _created(msgspec.structs.replace(V1, ports=(PortConfig(80, 8080),)))
    _update(state, 10.0, ports=(PortConfig(80, 8081),))
    assert _run(
        state,
        commands.CreateService(
            Service(id="s2", spec=ServiceSpec(name="other", image="x", ports=(PortConfig(80, 8080),)))
        ),
    ).ok
    assert _run(state, commands.RollbackService("s1", 20.0)).code == "already_exists"


def test_a_plans_rollout_change_applies_only_to_its_version() -> None:
    state = _created()
    _update(state, 10.0, image="app:2")
    done = UpdateStatus(RolloutState.COMPLETED, 10.0, 1, 2, completed_at=15.0)
    assert _run(state, commands.ApplyPlan(rollouts=(commands.RolloutChange("s1", 1, done),))).ok
    assert state.services["s1"].update_status.state == RolloutState.UPDATING  # decided for version 1: stale
    _run(state, commands.ApplyPlan(rollouts=(commands.RolloutChange("s1", 2, done),)))
    assert state.services["s1"].update_status == done


def test_a_failure_action_rollback_reverts_with_the_status_it_was_decided_with() -> None:
    state = _created()
    _update(state, 10.0, image="app:2")
    back = UpdateStatus(RolloutState.ROLLBACK_STARTED, 15.0, 2, 3, message="rolled back: task web.1 failed")
    _run(state, commands.ApplyPlan(rollouts=(commands.RolloutChange("s1", 2, back, revert=True),)))
    service = state.services["s1"]
    assert (service.version, service.spec.image, service.update_status) == (3, "app:1", back)


def test_a_revert_with_no_earlier_version_pauses_instead() -> None:
    state = ClusterState()
    # A service from before histories, at version 2 with nothing earlier known.
    state.apply([Put("service", Service(id="s1", spec=V1, version=2))])
    back = UpdateStatus(RolloutState.ROLLBACK_STARTED, 15.0, 2, 3, message="rolled back: task web.1 failed")
    _run(state, commands.ApplyPlan(rollouts=(commands.RolloutChange("s1", 2, back, revert=True),)))
    status = state.services["s1"].update_status
    assert status is not None and status.state == RolloutState.PAUSED and state.services["s1"].version == 2
    assert status.message == "paused: cannot roll back (no earlier version); rolled back: task web.1 failed"


def test_the_history_is_bounded() -> None:
    state = _created()
    for n in range(2, 30):
        _update(state, float(n), image=f"app:{n}")
    history = state.services["s1"].history
    assert len(history) == revisions.MAX_REVISIONS and history[-1].version == 29 and history[0].version == 20
