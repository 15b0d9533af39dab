"""Only the tasks whose spec changed are replaced (ADR 33, Swarm's "dirty" test): a live task
that already runs the service's current spec, rollout settings aside, is adopted into the
current version in place, for updates and rollbacks alike; `--force` still replaces every task.
Through the in-memory cluster (commands through the FSM, the real reconciler, fake agents)."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from tests.unit.core_sim import Sim, node, running_task, spec
from warren import commands
from warren.commands import ApplyPlan, TaskUpdate
from warren.model import (
    DeployConfig,
    DeployStrategy,
    FailureAction,
    RolloutState,
    ServiceMode,
    ServiceSpec,
    TaskState,
    UpdateConfig,
    UpdateOrder,
)
from warren.state import Put

MONITOR = 2.0


def web(image: str = "app:1", order: UpdateOrder = UpdateOrder.START_FIRST, **fields: object) -> ServiceSpec:
    # A long delay after each success: the rollout waits there, one slot done, for the test.
    update = UpdateConfig(parallelism=1, monitor=MONITOR, delay=100.0, order=order)
    return msgspec.structs.replace(spec("web", replicas=4, image=image, update=update), **fields)


def deployed(make: ServiceSpec, nodes: int = 2) -> tuple[Sim, str]:
    sim = Sim()
    for i in range(1, nodes + 1):
        sim.add_node(node(f"n{i}", cpus=16, mem_gb=32))
    service_id = sim.create_service(make)
    sim.converge()
    return sim, service_id


def step(sim: Sim, seconds: float = 1.0) -> None:
    sim.reconcile()
    sim.agents_step()
    sim.tick(seconds)


def status(sim: Sim, service_id: str) -> RolloutState | None:
    found = sim.state.services[service_id].update_status
    return None if found is None else found.state


def run_until(sim: Sim, done: Callable[[], bool], rounds: int = 200) -> None:
    for _ in range(rounds):
        if done():
            return
        step(sim)
    raise AssertionError("condition never held")


def running_ids(sim: Sim, service_id: str) -> set[str]:
    return {t.id for t in sim.running(service_id)}


@pytest.mark.parametrize("order", [UpdateOrder.START_FIRST, UpdateOrder.STOP_FIRST])
def test_a_rollback_after_one_slot_updated_replaces_only_that_slot(order: UpdateOrder) -> None:
    sim, svc = deployed(web(order=order))
    sim.update_service(svc, web("app:2", order=order))
    run_until(sim, lambda: sorted(t.spec.image for t in sim.running(svc)) == ["app:1"] * 3 + ["app:2"])
    untouched = {t.id for t in sim.running(svc) if t.spec.image == "app:1"}
    updated = next(t for t in sim.running(svc) if t.spec.image == "app:2")
    ids_before = set(sim.state.tasks)

    sim.run(commands.RollbackService(svc, sim.now))  # version 3: version 1's spec
    run_until(sim, lambda: status(sim, svc) == RolloutState.ROLLBACK_COMPLETED)
    created = set(sim.state.tasks) - ids_before
    assert len(created) == 1  # the updated slot alone, not the three that never changed
    assert running_ids(sim, svc) == untouched | created
    assert {(t.spec_version, t.spec.image) for t in sim.running(svc)} == {(3, "app:1")}
    assert all(t.spec == sim.state.services[svc].spec for t in sim.running(svc))
    assert sim.state.tasks[updated.id].desired_state == TaskState.SHUTDOWN


def test_a_failure_action_rollback_restarts_only_the_failed_slot() -> None:
    back = UpdateConfig(parallelism=1, monitor=MONITOR, failure_action=FailureAction.ROLLBACK)
    sim, svc = deployed(msgspec.structs.replace(web(order=UpdateOrder.STOP_FIRST), update=back))
    old = running_ids(sim, svc)
    sim.update_service(svc, msgspec.structs.replace(web("bad:2"), update=back))
    run_until(sim, lambda: any(t.spec.image == "bad:2" and t.state == TaskState.RUNNING for t in sim.live(svc)))
    failing = next(t for t in sim.live(svc) if t.spec.image == "bad:2")
    sim.report(failing, TaskState.FAILED, exit_code=1, error="exit status 1")
    run_until(sim, lambda: status(sim, svc) == RolloutState.ROLLBACK_COMPLETED and len(sim.running(svc)) == 4)
    service = sim.state.services[svc]
    assert service.version == 3 and service.spec.image == "app:1"
    # Start-first (the update's default order): the failed slot's old task still served, so
    # the rollback adopts all four old tasks and starts none.
    assert running_ids(sim, svc) == old
    assert {t.spec_version for t in sim.running(svc)} == {3}
    assert sim.state.tasks[failing.id].desired_state == TaskState.SHUTDOWN  # history, not desired running


@pytest.mark.parametrize(
    "change",
    [
        {"update": UpdateConfig(parallelism=3, monitor=1.0)},
        {"rollback": UpdateConfig(parallelism=2)},
        {"stop_drain": 4.0},
        {"deploy": DeployConfig(DeployStrategy.CANARY, canary_replicas=1)},
        {"deploy": DeployConfig(DeployStrategy.BLUE_GREEN, blue_green_keep=30.0)},
    ],
    ids=["update", "rollback", "stop-drain", "canary", "blue-green"],
)
def test_an_update_of_rollout_settings_only_replaces_no_task_and_completes(change: dict[str, object]) -> None:
    sim, svc = deployed(web())
    old = running_ids(sim, svc)
    new_spec = msgspec.structs.replace(web(), **change)
    sim.update_service(svc, new_spec)
    step(sim)  # one pass adopts every task, and the rollout has nothing left to do
    assert status(sim, svc) == RolloutState.COMPLETED
    assert running_ids(sim, svc) == old
    assert all((t.spec_version, t.spec) == (2, new_spec) for t in sim.running(svc))
    sim.converge()
    assert running_ids(sim, svc) == old and len(sim.state.service_tasks(svc)) == 4


def test_a_settings_only_blue_green_update_says_nothing_switched() -> None:
    sim, svc = deployed(web())
    sim.update_service(svc, msgspec.structs.replace(web(), deploy=DeployConfig(DeployStrategy.BLUE_GREEN)))
    step(sim)
    found = sim.state.services[svc].update_status
    assert found is not None and found.state == RolloutState.COMPLETED
    assert "no task replaced, nothing switched" in found.message and "switched to version" not in found.message


def test_force_still_replaces_every_task() -> None:
    sim, svc = deployed(web(update=UpdateConfig(parallelism=0, monitor=MONITOR)))
    old = running_ids(sim, svc)
    forced = msgspec.structs.replace(sim.state.services[svc].spec, force_update=1)
    sim.update_service(svc, forced)
    run_until(sim, lambda: status(sim, svc) == RolloutState.COMPLETED and len(sim.running(svc)) == 4)
    assert not running_ids(sim, svc) & old
    assert {t.spec_version for t in sim.running(svc)} == {2}


def test_a_global_service_adopts_its_tasks_on_a_settings_only_update() -> None:
    sim, svc = deployed(spec("mon", mode=ServiceMode.GLOBAL), nodes=3)
    old = running_ids(sim, svc)
    assert len(old) == 3
    sim.update_service(svc, msgspec.structs.replace(spec("mon", mode=ServiceMode.GLOBAL), stop_drain=2.0))
    sim.converge()
    assert running_ids(sim, svc) == old and {t.spec_version for t in sim.running(svc)} == {2}


# -- the FSM: adopting is checked when the plan is applied --------------------------------------
def adopt_plan(task_id: str, version: int, **fields: object) -> ApplyPlan:
    return ApplyPlan(updated=(TaskUpdate(id=task_id, at=2000.0, spec_version=version, **fields),))  # type: ignore[arg-type]


def fsm_fixture() -> tuple[Sim, str]:
    sim, svc = deployed(web(), nodes=1)
    sim.update_service(svc, web(stop_drain=1.0))  # version 2: a spec the tasks run, settings aside
    return sim, svc


def test_the_fsm_adopts_a_live_task_into_the_current_spec_it_runs() -> None:
    sim, svc = fsm_fixture()
    task = sim.running(svc)[0]
    sim.run(adopt_plan(task.id, 2))
    adopted = sim.state.tasks[task.id]
    assert (adopted.spec_version, adopted.spec) == (2, sim.state.services[svc].spec)
    assert (adopted.state, adopted.started_at, adopted.ready_at) == (task.state, task.started_at, task.ready_at)


@pytest.mark.parametrize("case", ["other spec", "stale version", "stopping", "ended", "slot taken"])
def test_the_fsm_refuses_an_adoption_it_cannot_honour_and_keeps_the_rest(case: str) -> None:
    sim, svc = fsm_fixture()
    task = sim.running(svc)[0]
    version = 2
    if case == "other spec":
        sim.update_service(svc, web("app:2"))
        version = 3
    elif case == "stale version":  # the plan was computed before version 3 was committed
        sim.update_service(svc, web("app:2"))
    elif case == "stopping":
        sim.state.apply([Put("task", msgspec.structs.replace(task, draining_since=sim.now))])
    elif case == "ended":
        sim.state.apply([Put("task", msgspec.structs.replace(task, state=TaskState.FAILED))])
    elif case == "slot taken":
        twin = running_task("t999999", svc, sim.state.services[svc].spec, task.node_id, slot=task.slot, spec_version=2)
        sim.state.apply([Put("task", twin)])
    before = sim.state.tasks[task.id]
    sim.run(adopt_plan(task.id, version, message="noted"))
    after = sim.state.tasks[task.id]
    assert (after.spec_version, after.spec) == (before.spec_version, before.spec)
    assert after.message == "noted"  # the rest of the update still applies
