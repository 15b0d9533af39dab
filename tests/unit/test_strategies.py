"""Deployment strategies (ADR 35), pure: canary and blue/green through the in-memory cluster
(commands through the FSM, the real reconciler, fake agents), their routing, promote, rollback,
a leader failover mid-strategy, and the bad input each is refused with."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from tests.unit.core_sim import Sim, node, spec
from warren import commands, strategy, validate
from warren.model import (
    DeployConfig,
    DeployStrategy,
    RolloutState,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskState,
    UpdateConfig,
    UpdateOrder,
)
from warren.reconciler import ReconcileConfig
from warren.state import ClusterState, Put

MONITOR = 2.0


def canary_spec(image: str, replicas: int = 4, n: int = 1, weight: int | None = 20, auto: float = 0.0) -> ServiceSpec:
    deploy = DeployConfig(DeployStrategy.CANARY, canary_replicas=n, canary_weight=weight, canary_auto_promote=auto)
    s = spec("web", replicas=replicas, image=image, update=UpdateConfig(monitor=MONITOR))
    return msgspec.structs.replace(s, deploy=deploy)


def blue_green_spec(image: str, replicas: int = 3, keep: float = 60.0) -> ServiceSpec:
    s = spec("web", replicas=replicas, image=image, update=UpdateConfig(monitor=MONITOR))
    return msgspec.structs.replace(s, deploy=DeployConfig(DeployStrategy.BLUE_GREEN, blue_green_keep=keep))


def with_addresses(sim: Sim) -> None:
    """Give running tasks an overlay address (the sim's nodes have no overlay): routing needs one."""
    for t in list(sim.state.tasks.values()):
        if not t.overlay_address:
            sim.state.apply([Put("task", msgspec.structs.replace(t, overlay_address=f"10.0.0.{int(t.id[1:]) % 250}"))])


def step(sim: Sim) -> None:
    sim.reconcile()
    sim.agents_step()
    with_addresses(sim)
    sim.tick()


def run_until(sim: Sim, done: Callable[[], bool], rounds: int = 100) -> None:
    for _ in range(rounds):
        if done():
            return
        step(sim)
    raise AssertionError("condition never held")


def status(sim: Sim, service_id: str = "s001") -> RolloutState | None:
    found = sim.state.services[service_id].update_status
    return None if found is None else found.state


def images(sim: Sim, service_id: str = "s001") -> list[str]:
    return sorted(t.spec.image for t in sim.running(service_id))


def deployed(make: Callable[[str], ServiceSpec]) -> Sim:
    sim = Sim()
    sim.add_node(node("n1", cpus=16, mem_gb=32))
    sim.create_service(make("app:1"))
    run_until(sim, lambda: len(sim.running("s001")) == sim.state.services["s001"].spec.replicas)
    step(sim)
    return sim


def routed_images(sim: Sim) -> tuple[list[str], list[str], int]:
    service = sim.state.services["s001"]
    tasks = sim.state.service_tasks("s001")
    by_address = {t.overlay_address: t.spec.image for t in tasks}
    r = strategy.routing(service, tasks)
    return sorted(by_address[a] for a in r.backends), sorted(by_address[a] for a in r.canary), r.canary_weight


# -- canary ------------------------------------------------------------------------------------
def test_a_canary_starts_beside_the_old_tasks_takes_its_weight_and_waits_for_promotion() -> None:
    sim = deployed(canary_spec)
    sim.update_service("s001", canary_spec("app:2"))
    run_until(sim, lambda: status(sim) == RolloutState.CANARY)
    assert images(sim) == ["app:1"] * 4 + ["app:2"]  # beside: no old task stopped
    message = sim.state.services["s001"].update_status.message  # type: ignore[union-attr]
    assert "20% of new connections" in message and "warren service promote web" in message
    backends, canary, weight = routed_images(sim)
    assert backends == ["app:1"] * 4 + ["app:2"] and canary == ["app:2"] and weight == 20
    for _ in range(10):  # it waits, whatever the time
        step(sim)
    assert status(sim) == RolloutState.CANARY and images(sim) == ["app:1"] * 4 + ["app:2"]


@pytest.mark.parametrize(("replicas", "asked", "started"), [(4, 9, 3), (2, 3, 1)])
def test_more_canaries_than_replicas_is_valid_and_starts_at_most_replicas_minus_one(
    replicas: int, asked: int, started: int
) -> None:
    # `service scale` does not revalidate the spec: scaling below --canary-replicas must not
    # make every following update invalid, so the count is clamped, not refused.
    validate.check_spec(canary_spec("app:2", replicas=replicas, n=asked))
    sim = deployed(lambda image: canary_spec(image, replicas=replicas, n=asked))
    sim.update_service("s001", canary_spec("app:2", replicas=replicas, n=asked))
    run_until(sim, lambda: status(sim) == RolloutState.CANARY)
    for _ in range(5):
        step(sim)
    assert images(sim) == ["app:1"] * replicas + ["app:2"] * started


def test_promote_rolls_the_rest_under_the_update_settings() -> None:
    sim = deployed(canary_spec)
    sim.update_service("s001", canary_spec("app:2"))
    run_until(sim, lambda: status(sim) == RolloutState.CANARY)
    sim.run(commands.PromoteService("s001", sim.now))
    assert routed_images(sim)[1] == []  # promoted: no more weighting
    run_until(sim, lambda: status(sim) == RolloutState.COMPLETED)
    run_until(sim, lambda: images(sim) == ["app:2"] * 4)
    assert len(sim.live("s001")) == 4


def test_auto_promote_once_the_canaries_were_healthy_that_long() -> None:
    sim = deployed(lambda image: canary_spec(image, auto=5.0))
    sim.update_service("s001", canary_spec("app:2", auto=5.0))
    run_until(sim, lambda: status(sim) == RolloutState.CANARY)
    canary = next(t for t in sim.running("s001") if t.spec.image == "app:2")
    run_until(sim, lambda: sim.state.services["s001"].update_status.promoted_at > 0)  # type: ignore[union-attr]
    promoted_at = sim.state.services["s001"].update_status.promoted_at  # type: ignore[union-attr]
    assert promoted_at >= canary.ready_at + 5.0
    run_until(sim, lambda: images(sim) == ["app:2"] * 4 and status(sim) == RolloutState.COMPLETED)


def test_rollback_of_a_canary_removes_the_canaries_and_starts_nothing() -> None:
    sim = deployed(canary_spec)
    old_ids = {t.id for t in sim.running("s001")}
    sim.update_service("s001", canary_spec("app:2"))
    run_until(sim, lambda: status(sim) == RolloutState.CANARY)
    sim.run(commands.RollbackService("s001", sim.now))
    run_until(sim, lambda: status(sim) == RolloutState.ROLLBACK_COMPLETED and len(sim.running("s001")) == 4)
    assert {t.id for t in sim.running("s001")} == old_ids  # the very same tasks: all back to v1
    assert images(sim) == ["app:1"] * 4
    assert sim.state.services["s001"].version == 3  # a rollback is a new version (ADR 33)


def test_a_rolling_rollback_keeps_the_tasks_that_run_its_spec() -> None:
    """As a rollback from a canary: the tasks already running the spec rolled back to are
    adopted into the rollback's version, none restarted (ADR 33)."""

    def rolling(image: str) -> ServiceSpec:
        return msgspec.structs.replace(canary_spec(image), deploy=DeployConfig())

    sim = deployed(rolling)
    sim.update_service("s001", rolling("app:2"))
    run_until(sim, lambda: status(sim) == RolloutState.COMPLETED and images(sim) == ["app:2"] * 4)
    on_v2 = {t.id for t in sim.running("s001")}
    sim.update_service("s001", rolling("app:1"))  # back to version 1's spec, as version 3
    sim.run(commands.RollbackService("s001", sim.now))  # to version 2's spec, as version 4
    run_until(sim, lambda: status(sim) == RolloutState.ROLLBACK_COMPLETED and len(sim.running("s001")) == 4)
    assert {t.id for t in sim.running("s001")} == on_v2
    assert sorted(t.spec_version for t in sim.running("s001")) == [4] * 4


def test_a_failing_canary_applies_the_failure_action() -> None:
    sim = deployed(canary_spec)
    failing = msgspec.structs.replace(
        canary_spec("app:bad"),
        update=UpdateConfig(
            monitor=MONITOR, failure_action=msgspec.convert("rollback", type=type(UpdateConfig().failure_action))
        ),
    )
    sim.update_service("s001", failing)
    sim.reconcile()
    canary = next(t for t in sim.live("s001") if t.spec.image == "app:bad")
    sim.report(canary, TaskState.FAILED, error="exit 1")
    run_until(sim, lambda: status(sim) == RolloutState.ROLLBACK_COMPLETED)
    run_until(sim, lambda: images(sim) == ["app:1"] * 4 and len(sim.live("s001")) == 4)


def test_a_paused_canary_cannot_be_promoted_and_says_why() -> None:
    sim = deployed(canary_spec)
    sim.update_service("s001", canary_spec("app:bad"))
    sim.reconcile()
    canary = next(t for t in sim.live("s001") if t.spec.image == "app:bad")
    sim.report(canary, TaskState.FAILED, error="exit 1")
    run_until(sim, lambda: status(sim) == RolloutState.PAUSED)
    result, changes = commands.apply(sim.state, commands.PromoteService("s001", sim.now))
    assert not result.ok and result.code == "invalid_argument" and "paused" in result.message and not changes
    assert images(sim) == ["app:1"] * 4


def test_promote_with_no_canary_is_refused_with_nothing_written() -> None:
    sim = deployed(canary_spec)
    result, changes = commands.apply(sim.state, commands.PromoteService("s001", sim.now))
    assert (result.ok, result.code, changes) == (False, "invalid_argument", [])
    assert result.message == "service web has no canary to promote"
    sim.update_service("s001", msgspec.structs.replace(canary_spec("app:2"), deploy=DeployConfig()))
    run_until(sim, lambda: status(sim) == RolloutState.COMPLETED)
    result, changes = commands.apply(sim.state, commands.PromoteService("s001", sim.now))
    assert result.message == "service web has no canary to promote (its last rollout is completed)" and not changes


def test_a_new_leader_continues_a_canary_from_the_replicated_state() -> None:
    """A failover is a reconciler that starts with nothing but the state: a fresh id counter and
    no routes. It neither restarts the canary nor promotes it."""
    sim = deployed(canary_spec)
    sim.update_service("s001", canary_spec("app:2"))
    run_until(sim, lambda: status(sim) == RolloutState.CANARY)
    before = {t.id for t in sim.live("s001")}
    new_leader = Sim(ReconcileConfig())
    new_leader.state, new_leader.now, new_leader.heartbeats = sim.state, sim.now, dict(sim.heartbeats)
    new_leader._ids = iter(range(900_000, 999_999))  # type: ignore[assignment]
    for _ in range(5):
        step(new_leader)
    assert status(new_leader) == RolloutState.CANARY and {t.id for t in new_leader.live("s001")} == before
    new_leader.run(commands.PromoteService("s001", new_leader.now))
    run_until(new_leader, lambda: images(new_leader) == ["app:2"] * 4)


# -- blue/green --------------------------------------------------------------------------------
def test_blue_green_starts_a_full_set_out_of_routing_then_switches_at_once() -> None:
    sim = deployed(blue_green_spec)
    sim.update_service("s001", blue_green_spec("app:2"))
    step(sim)
    assert sorted(t.spec.image for t in sim.live("s001")) == ["app:1"] * 3 + ["app:2"] * 3  # a full set, at once
    switched = False
    for _ in range(30):
        backends = routed_images(sim)[0]
        if status(sim) == RolloutState.COMPLETED:
            switched = True
            assert backends == ["app:2"] * 3  # every endpoint: the new set only
            break
        assert backends == ["app:1"] * 3  # until the switch: the old set only, whatever is ready
        step(sim)
    assert switched
    assert images(sim) == ["app:1"] * 3 + ["app:2"] * 3  # the old set kept, out of routing
    assert "kept 60s" in sim.state.services["s001"].update_status.message  # type: ignore[union-attr]


def test_blue_green_rollback_within_keep_switches_back_without_starting_a_task() -> None:
    sim = deployed(blue_green_spec)
    blue = {t.id for t in sim.running("s001")}
    sim.update_service("s001", blue_green_spec("app:2"))
    run_until(sim, lambda: status(sim) == RolloutState.COMPLETED)
    created_before = len(sim.state.tasks)
    sim.run(commands.RollbackService("s001", sim.now))
    assert routed_images(sim)[0] == ["app:1"] * 3  # the next endpoints push routes to the old set again
    run_until(sim, lambda: status(sim) == RolloutState.ROLLBACK_COMPLETED and len(sim.running("s001")) == 3)
    assert {t.id for t in sim.running("s001")} == blue and len(sim.state.tasks) == created_before


def test_blue_green_removes_the_old_set_once_keep_expired_through_the_drain() -> None:
    sim = deployed(lambda image: blue_green_spec(image, keep=10.0))
    sim.update_service("s001", blue_green_spec("app:2", keep=10.0))
    run_until(sim, lambda: status(sim) == RolloutState.COMPLETED)
    switched_at = sim.state.services["s001"].update_status.completed_at  # type: ignore[union-attr]
    drained: list[Task] = []
    for _ in range(40):
        plan = sim.plan()
        drained += [t for t in sim.state.tasks.values() if t.spec.image == "app:1" and t.draining_since]
        if any(u.desired_state == TaskState.SHUTDOWN for u in plan.updated):
            assert sim.now >= switched_at + 10.0
        step(sim)
    assert images(sim) == ["app:2"] * 3
    assert drained and all(t.draining_since >= switched_at + 10.0 for t in drained)  # the uniform stop path


def test_a_new_leader_continues_a_blue_green_switch_and_its_keep() -> None:
    sim = deployed(blue_green_spec)
    sim.update_service("s001", blue_green_spec("app:2"))
    run_until(sim, lambda: status(sim) == RolloutState.COMPLETED)
    live = {t.id for t in sim.live("s001")}
    new_leader = Sim(ReconcileConfig())
    new_leader.state, new_leader.now, new_leader.heartbeats = sim.state, sim.now, dict(sim.heartbeats)
    for _ in range(5):
        step(new_leader)
    assert {t.id for t in new_leader.live("s001")} == live  # the old set is still kept
    assert routed_images(new_leader)[0] == ["app:2"] * 3


def test_blue_green_doubles_the_reservations_and_waits_for_room() -> None:
    """The scheduler counts both sets: with room for one set only, the new set waits (pending,
    with the scheduler's reason) and the old set keeps serving; nothing is stopped first."""
    sim = Sim()
    sim.add_node(node("n1", cpus=2, mem_gb=8))

    def make(image: str) -> ServiceSpec:
        return msgspec.structs.replace(blue_green_spec(image, replicas=2), reservations=spec("x", cpus=1).reservations)

    sim.create_service(make("app:1"))
    run_until(sim, lambda: len(sim.running("s001")) == 2)
    sim.update_service("s001", make("app:2"))
    for _ in range(5):
        step(sim)
    assert images(sim) == ["app:1", "app:1"] and status(sim) == RolloutState.UPDATING
    pending = [t for t in sim.live("s001") if t.state == TaskState.PENDING]
    assert len(pending) == 2 and all("cpu" in t.message.lower() for t in pending)


# -- routing -----------------------------------------------------------------------------------
def test_routing_without_a_strategy_under_way_is_every_routed_task() -> None:
    sim = deployed(canary_spec)
    assert routed_images(sim) == (["app:1"] * 4, [], 0)


def test_a_canary_without_a_weight_takes_its_share_of_the_tasks() -> None:
    sim = deployed(lambda image: canary_spec(image, weight=None))
    sim.update_service("s001", canary_spec("app:2", weight=None))
    run_until(sim, lambda: status(sim) == RolloutState.CANARY)
    assert routed_images(sim) == (["app:1"] * 4 + ["app:2"], [], 0)


def test_spec_equality_ignores_only_scale_and_rollout_settings() -> None:
    a = canary_spec("app:1")
    assert strategy.matches(a, msgspec.structs.replace(a, replicas=9, deploy=DeployConfig(), update=UpdateConfig()))
    assert not strategy.matches(a, msgspec.structs.replace(a, image="app:2"))
    assert not strategy.matches(a, msgspec.structs.replace(a, force_update=1))  # --force replaces every task


# -- bad input ---------------------------------------------------------------------------------
BASE = ServiceSpec(name="web", image="app:1", replicas=3)


@pytest.mark.parametrize(
    ("deploy", "extra", "message"),
    [
        (
            DeployConfig(canary_replicas=1),
            {},
            "--canary-replicas, --canary-weight and --canary-auto-promote need --deploy-strategy canary",
        ),
        (DeployConfig(canary_weight=20), {}, "need --deploy-strategy canary"),
        (DeployConfig(DeployStrategy.BLUE_GREEN, canary_auto_promote=5), {}, "need --deploy-strategy canary"),
        (
            DeployConfig(DeployStrategy.CANARY, canary_replicas=1, canary_weight=101),
            {},
            "--canary-weight must be a percentage, 0 to 100 (got 101)",
        ),
        (DeployConfig(DeployStrategy.CANARY), {}, "--canary-replicas must be between 1 and"),
        (
            DeployConfig(DeployStrategy.CANARY, canary_replicas=1),
            {"replicas": 1},
            "--deploy-strategy canary needs at least 2 replicas (got 1)",
        ),
        (DeployConfig(blue_green_keep=60), {}, "--blue-green-keep needs --deploy-strategy blue-green"),
        (DeployConfig(DeployStrategy.CANARY, canary_replicas=1, blue_green_keep=60), {}, "--blue-green-keep needs"),
        (
            DeployConfig(DeployStrategy.BLUE_GREEN, blue_green_keep=60),
            {"update": UpdateConfig(order=UpdateOrder.STOP_FIRST)},
            "--update-order stop-first contradicts --deploy-strategy blue-green",
        ),
        (
            DeployConfig(DeployStrategy.CANARY, canary_replicas=1),
            {"mode": ServiceMode.GLOBAL, "replicas": 0},
            "--deploy-strategy canary is for replicated services: a global service rolls node by node",
        ),
        (DeployConfig(DeployStrategy.BLUE_GREEN, blue_green_keep=float("nan")), {}, "--blue-green-keep must be"),
        (
            DeployConfig(DeployStrategy.CANARY, canary_replicas=1, canary_auto_promote=-1),
            {},
            "--canary-auto-promote must be",
        ),
    ],
)
def test_contradictory_strategy_flags_are_refused_with_one_line(
    deploy: DeployConfig, extra: dict[str, object], message: str
) -> None:
    bad = msgspec.structs.replace(BASE, deploy=deploy, **extra)
    with pytest.raises(validate.ValidationError) as err:
        validate.check_spec(bad)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_valid_strategies_pass() -> None:
    for deploy in (
        DeployConfig(DeployStrategy.CANARY, canary_replicas=2, canary_weight=0, canary_auto_promote=30),
        DeployConfig(DeployStrategy.BLUE_GREEN, blue_green_keep=300),
    ):
        validate.check_spec(msgspec.structs.replace(BASE, deploy=deploy))


def test_promote_of_a_stale_version_is_a_conflict() -> None:
    state = ClusterState()
    state.apply([Put("service", Service(id="s1", spec=BASE, version=3))])
    result, _ = commands.apply(state, commands.PromoteService("s1", 1.0, expected_version=2))
    assert result.code == "failed_precondition" and "changed since version 2" in result.message
