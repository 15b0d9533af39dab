"""The stack engine's pure core (#14, ADR 49): ApplyStack / RemoveStack all or nothing, idempotent
re-deploys, prune and orphans, the plan's diffs, and depends_on holding a service's tasks."""

from __future__ import annotations

import msgspec
import pytest

from tests.unit.core_sim import Sim, node, spec
from warren import commands
from warren.commands import ApplyStack, RemoveStack
from warren.model import (
    ClusterInfo,
    Config,
    FileRef,
    HealthCheck,
    Network,
    NetworkAttachment,
    PortConfig,
    Secret,
    Service,
    ServiceDependency,
    ServiceMode,
    ServiceSpec,
    TaskState,
    Volume,
)
from warren.stack.plan import Action, StackPlan, plan_stack, spec_diff
from warren.stack.spec import STACK_LABEL

AT = 2000.0


def sim_with(*nodes: str) -> Sim:
    sim = Sim()
    sim.state.cluster = ClusterInfo("c", 0.0, "cert", "key", "w", "m", dek_wrapped="dek", kek_wrapped="kek")
    for name in nodes:
        sim.add_node(node(name))
    return sim


def service(name: str, sid: str = "", **fields: object) -> Service:
    base = spec(name, **{k: v for k, v in fields.items() if k in ("replicas", "image", "constraints")})  # type: ignore[arg-type]
    extra = {k: v for k, v in fields.items() if k not in ("replicas", "image", "constraints", "depends_on")}
    depends = fields.get("depends_on", ())
    return Service(id=sid or f"id-{name}", spec=msgspec.structs.replace(base, **extra), depends_on=depends)  # type: ignore[arg-type]


def stack_cmd(*services: Service, name: str = "app", prune: bool = False, **fields: object) -> ApplyStack:
    return ApplyStack(name, AT, services=services, dek_wrapped="dek", prune=prune, **fields)  # type: ignore[arg-type]


def full_stack(image: str = "busybox:1", prune: bool = False) -> ApplyStack:
    web = service(
        "app_web",
        replicas=3,
        image=image,
        ports=(PortConfig(80, 8080),),
        secrets=(FileRef("app_token", "/run/secrets/token"),),
        configs=(FileRef("app_conf", "/etc/app.conf"),),
        networks=(NetworkAttachment("app_default"),),
    )
    db = service("app_db", replicas=1, image="busybox:db")
    return stack_cmd(
        web,
        db,
        prune=prune,
        secrets=(Secret("sec1", "app_token", b"sealed", 6),),
        configs=(Config("cfg1", "app_conf", b"x=1"),),
        networks=(Network("net1", "app_default"),),
        volumes=(Volume("vol1", "app_data"),),
    )


def apply(sim: Sim, cmd: commands.Command) -> commands.Result:
    result, changes = commands.apply(sim.state, cmd)
    if result.ok:
        sim.state.apply(changes)
    return result


def names_in(sim: Sim, stack: str = "app") -> dict[str, list[str]]:
    state = sim.state
    return {
        "services": sorted(s.spec.name for s in state.services.values() if s.spec.labels.get(STACK_LABEL) == stack),
        "secrets": sorted(s.name for s in state.secrets.values() if s.labels.get(STACK_LABEL) == stack),
        "configs": sorted(c.name for c in state.configs.values() if c.labels.get(STACK_LABEL) == stack),
        "networks": sorted(n.name for n in state.networks.values() if n.labels.get(STACK_LABEL) == stack),
        "volumes": sorted(v.name for v in state.volumes.values() if v.labels.get(STACK_LABEL) == stack),
    }


def test_a_deploy_creates_every_object_labelled_with_its_stack_in_one_command() -> None:
    sim = sim_with("n1", "n2")
    assert apply(sim, full_stack()).ok
    assert names_in(sim) == {
        "services": ["app_db", "app_web"],
        "secrets": ["app_token"],
        "configs": ["app_conf"],
        "networks": ["app_default"],
        "volumes": ["app_data"],
    }
    sim.converge()
    assert len(sim.running("id-app_web")) == 3


def test_the_same_stack_again_changes_nothing_and_restarts_no_task() -> None:
    sim = sim_with("n1", "n2")
    apply(sim, full_stack())
    sim.converge()
    before = {t.id for t in sim.state.tasks.values()}
    result, changes = commands.apply(sim.state, full_stack())
    assert result.ok and changes == []
    plan = plan_stack(sim.state, full_stack())
    assert isinstance(plan, StackPlan) and not plan.changed
    sim.converge()
    assert {t.id for t in sim.state.tasks.values()} == before


def test_one_changed_image_updates_only_that_service_through_the_update_path() -> None:
    sim = sim_with("n1", "n2")
    apply(sim, full_stack())
    sim.converge()
    plan = plan_stack(sim.state, full_stack(image="busybox:2"))
    assert isinstance(plan, StackPlan)
    assert [(c.kind, c.name, c.action) for c in plan.changes] == [("service", "app_web", Action.UPDATE)]
    assert plan.changes[0].diff == ("image busybox:1 → busybox:2",)
    assert plan.changes[0].replaces == 3
    db_tasks = {t.id for t in sim.live("id-app_db")}
    assert apply(sim, full_stack(image="busybox:2")).ok
    web = sim.state.services["id-app_web"]
    assert web.version == 2 and web.update_status is not None  # a rollout under its update settings
    sim.converge()
    assert {t.id for t in sim.live("id-app_db")} == db_tasks
    assert {t.spec.image for t in sim.live("id-app_web")} == {"busybox:2"}


def test_a_change_of_scale_alone_replaces_no_task() -> None:
    sim = sim_with("n1")
    apply(sim, stack_cmd(service("app_web", replicas=2)))
    sim.converge()
    plan = plan_stack(sim.state, stack_cmd(service("app_web", replicas=5)))
    assert isinstance(plan, StackPlan)
    (change,) = plan.changes
    assert change.diff == ("replicas 2 → 5",) and change.replaces == 0


def test_a_port_conflict_refuses_the_whole_stack_and_writes_nothing() -> None:
    sim = sim_with("n1")
    sim.create_service(msgspec.structs.replace(spec("other"), ports=(PortConfig(80, 8080),)))
    before = (dict(sim.state.services), dict(sim.state.secrets), dict(sim.state.networks))
    result, changes = commands.apply(sim.state, full_stack())
    assert not result.ok and changes == []
    assert result.code == "already_exists" and "8080/tcp" in result.message and "other" in result.message
    assert (dict(sim.state.services), dict(sim.state.secrets), dict(sim.state.networks)) == before


def test_a_missing_external_object_refuses_the_stack() -> None:
    sim = sim_with("n1")
    result = apply(sim, stack_cmd(service("app_web"), external_secrets=("shared_tls",)))
    assert not result.ok and result.code == "not_found"
    assert "external secret 'shared_tls'" in result.message or "external secret shared_tls" in result.message
    assert not sim.state.services


def test_a_name_owned_elsewhere_is_not_taken_over() -> None:
    sim = sim_with("n1")
    sim.create_service(spec("app_web"))
    result = apply(sim, stack_cmd(service("app_web", sid="new")))
    assert not result.ok and "belongs to no stack" in result.message
    assert apply(sim, stack_cmd(service("b_web"), name="b")).ok
    result = apply(sim, stack_cmd(service("b_web", sid="x")))
    assert not result.ok and "belongs to stack 'b'" in result.message.replace('"', "'")


def test_a_changed_config_value_is_refused() -> None:
    sim = sim_with("n1")
    apply(sim, full_stack())
    changed = msgspec.structs.replace(full_stack(), configs=(Config("cfg2", "app_conf", b"x=2"),))
    result = apply(sim, changed)
    assert not result.ok and result.code == "failed_precondition" and "immutable" in result.message


def test_without_prune_a_service_dropped_from_the_file_is_orphaned_and_with_prune_removed() -> None:
    sim = sim_with("n1")
    apply(sim, full_stack())
    sim.converge()
    web_only = msgspec.structs.replace(full_stack(), services=full_stack().services[:1])
    result = apply(sim, web_only)
    assert result.ok and "app_db" in result.message
    plan = plan_stack(sim.state, web_only)
    assert isinstance(plan, StackPlan) and plan.orphaned == ("app_db",) and not plan.changed
    assert sim.state.service_by_name("app_db") is not None
    pruned = msgspec.structs.replace(web_only, prune=True)
    plan = plan_stack(sim.state, pruned)
    assert isinstance(plan, StackPlan)
    assert [(c.name, c.action, c.replaces) for c in plan.changes] == [("app_db", Action.REMOVE, 1)]
    assert apply(sim, pruned).ok
    assert sim.state.service_by_name("app_db") is None
    sim.converge()
    assert not any(t.state < TaskState.COMPLETE for t in sim.state.service_tasks("id-app_db"))


def test_prune_removes_a_secret_no_longer_declared_and_unused() -> None:
    sim = sim_with("n1")
    apply(sim, full_stack())
    web = full_stack().services[0]
    plain = msgspec.structs.replace(web, spec=msgspec.structs.replace(web.spec, secrets=()))
    cmd = msgspec.structs.replace(full_stack(prune=True), services=(plain, full_stack().services[1]), secrets=())
    plan = plan_stack(sim.state, cmd)
    assert isinstance(plan, StackPlan)
    assert ("secret", "app_token", Action.REMOVE) in [(c.kind, c.name, c.action) for c in plan.changes]
    assert apply(sim, cmd).ok and sim.state.secret_by_name("app_token") is None


def test_stack_rm_removes_what_the_stack_created_and_keeps_externals() -> None:
    sim = sim_with("n1")
    sim.state.apply([commands.apply(sim.state, commands.CreateConfig(Config("ext", "shared", b"s")))[1][0]])
    cmd = msgspec.structs.replace(full_stack(), external_configs=("shared",))
    assert apply(sim, cmd).ok
    sim.converge()
    assert apply(sim, RemoveStack("app", AT)).ok
    assert names_in(sim) == {"services": [], "secrets": [], "configs": [], "networks": [], "volumes": []}
    assert sim.state.config_by_name("shared") is not None
    sim.converge()
    assert not any(t.state < TaskState.COMPLETE for t in sim.state.tasks.values())
    result = apply(sim, RemoveStack("app", AT))
    assert not result.ok and result.code == "not_found"


def test_the_plan_says_which_tasks_cannot_be_placed() -> None:
    sim = sim_with("n1", "n2")
    db = service("app_db", replicas=2, constraints=("node.labels.disk==ssd",))
    plan = plan_stack(sim.state, stack_cmd(db, service("app_web")))
    assert isinstance(plan, StackPlan)
    assert plan.unplaceable == (
        "2 tasks of app_db cannot be placed: no suitable node: "
        "constraint node.labels.disk==ssd not satisfied on 2 nodes",
    )
    assert not sim.state.services  # the plan wrote nothing


def test_the_plan_of_a_refused_stack_is_the_refusal() -> None:
    sim = sim_with("n1")
    result = plan_stack(sim.state, stack_cmd(service("app_web"), external_networks=("nope",)))
    assert isinstance(result, commands.Result) and not result.ok


def test_spec_diff_names_nested_fields() -> None:
    old = ServiceSpec("web", "app:1", replicas=3, env={"A": "1"}, labels={STACK_LABEL: "s"})
    new = msgspec.structs.replace(
        old, image="app:2", replicas=5, env={"A": "2", "B": "x"}, health=HealthCheck(command=("true",))
    )
    assert spec_diff(old, new) == [
        "image app:1 → app:2",
        "env.A 1 → 2",
        "env.B (none) → x",
        "replicas 3 → 5",
        "health (none) → HealthCheck(command=[true])",
    ]


# -- depends_on --------------------------------------------------------------------------------
def _healthy_db_and_web() -> ApplyStack:
    db = service("app_db", health=HealthCheck(command=("true",), interval=1))
    web = service("app_web", replicas=2, depends_on=(ServiceDependency("app_db", "service_healthy"),))
    return stack_cmd(db, web)


def test_depends_on_holds_a_service_until_its_dependency_is_healthy() -> None:
    sim = sim_with("n1", "n2")
    assert apply(sim, _healthy_db_and_web()).ok
    for _ in range(3):
        sim.reconcile()
        sim.agents_step()
        sim.tick()
    web = sim.state.service_tasks("id-app_web")
    assert len(web) == 2 and {t.state for t in web} == {TaskState.PENDING}
    assert {t.message for t in web} == {"waiting for dependencies: 0/1 tasks of app_db healthy"}
    (db,) = sim.running("id-app_db")
    sim.report(db, TaskState.RUNNING, health="healthy")
    sim.converge()
    assert len(sim.running("id-app_web")) == 2


def test_service_healthy_on_a_dependency_checked_only_by_its_image() -> None:
    """No check in db's spec: the agent may run its image's HEALTHCHECK (ADR 42) and report it
    healthy, which meets the condition; a task that runs with no check at all holds web, and
    the reason says why."""
    for reported, web_runs in (("healthy", True), ("", False)):
        sim = sim_with("n1", "n2")
        db = service("app_db")
        web = service("app_web", replicas=2, depends_on=(ServiceDependency("app_db", "service_healthy"),))
        assert apply(sim, stack_cmd(db, web)).ok
        sim.reconcile()
        sim.agents_step()
        (task,) = sim.state.service_tasks("id-app_db")
        sim.report(task, TaskState.RUNNING, health=reported)
        sim.converge()
        assert (len(sim.running("id-app_web")) == 2) is web_runs, reported
        if not web_runs:
            waiting = {t.message for t in sim.state.service_tasks("id-app_web")}
            assert waiting == {
                "waiting for dependencies: 0/1 tasks of app_db healthy "
                "(it has no health check: none in its spec, none in its image)"
            }


def test_a_new_leader_holds_the_same_services_from_the_replicated_state_alone() -> None:
    sim = sim_with("n1")
    apply(sim, _healthy_db_and_web())
    sim.reconcile()
    assert {t.state for t in sim.state.service_tasks("id-app_web")} == {TaskState.PENDING}
    # Another manager's reconciler starts from the state only (no memory of earlier passes).
    fresh = Sim()
    fresh.state = sim.state.copy()
    fresh.heartbeats = dict(sim.heartbeats)
    fresh.now = sim.now
    plan = fresh.plan()
    assert not any(t.service_name == "app_web" and t.node_id for t in plan.created)
    assert not any(u.node_id for u in plan.updated if sim.state.tasks[u.id].service_name == "app_web")


def test_service_completed_successfully_waits_for_exit_0() -> None:
    sim = sim_with("n1")
    from warren.model import RestartCondition, RestartPolicy

    init = service("app_init", restart=RestartPolicy(RestartCondition.NONE))
    web = service("app_web", depends_on=(ServiceDependency("app_init", "service_completed_successfully"),))
    apply(sim, stack_cmd(init, web))
    sim.reconcile()
    sim.agents_step()
    sim.reconcile()
    assert {t.state for t in sim.state.service_tasks("id-app_web")} == {TaskState.PENDING}
    (task,) = sim.running("id-app_init")
    sim.report(task, TaskState.COMPLETE, exit_code=0)
    sim.converge()
    assert len(sim.running("id-app_web")) == 1


@pytest.mark.parametrize("required", [True, False])
def test_a_missing_dependency_holds_only_when_required(required: bool) -> None:
    sim = sim_with("n1")
    apply(sim, stack_cmd(service("app_web", depends_on=(ServiceDependency("app_gone", required=required),))))
    sim.reconcile()
    sim.agents_step()
    sim.reconcile()
    assert bool(sim.running("id-app_web")) is not required


def test_the_stack_commands_round_trip_through_the_codec() -> None:
    cmd = full_stack()
    assert commands.decode(commands.encode(cmd)) == cmd
    assert commands.decode(commands.encode(RemoveStack("app", AT))) == RemoveStack("app", AT)


def test_service_started_counts_a_task_whose_health_checks_run() -> None:
    sim = sim_with("n1")
    db = service("app_db", health=HealthCheck(command=("true",)))
    web = service("app_web", depends_on=(ServiceDependency("app_db", "service_started"),))
    apply(sim, stack_cmd(db, web))
    sim.reconcile()
    (task,) = sim.state.service_tasks("id-app_db")
    sim.report(task, TaskState.STARTING)  # created, not yet running its process
    sim.reconcile()
    assert {t.state for t in sim.state.service_tasks("id-app_web")} == {TaskState.PENDING}
    sim.report(task, TaskState.STARTING, health="starting")  # it runs, before its first probe passed
    sim.reconcile()
    assert {t.state for t in sim.state.service_tasks("id-app_web")} == {TaskState.ASSIGNED}


def test_a_global_service_gets_no_task_and_no_new_version_while_its_dependency_is_unmet() -> None:
    sim = sim_with("n1", "n2")
    db = service("app_db", health=HealthCheck(command=("true",)))
    agent = service("app_agent", mode=ServiceMode.GLOBAL, depends_on=(ServiceDependency("app_db", "service_healthy"),))
    apply(sim, stack_cmd(db, agent))
    sim.converge()
    assert not sim.state.service_tasks("id-app_agent")
    (task,) = sim.running("id-app_db")
    sim.report(task, TaskState.RUNNING, health="healthy")
    sim.converge()
    before = {t.id for t in sim.live("id-app_agent")}
    assert len(before) == 2
    (task,) = sim.running("id-app_db")
    sim.report(task, TaskState.RUNNING, health="unhealthy")
    changed = msgspec.structs.replace(agent, spec=msgspec.structs.replace(agent.spec, image="busybox:2"))
    apply(sim, stack_cmd(db, changed))
    for _ in range(5):
        sim.reconcile()
        sim.agents_step()
        sim.tick()
    assert {t.id for t in sim.live("id-app_agent")} == before  # the old version serves on


def test_stack_rm_keeps_a_volume_a_task_still_holds_until_it_stopped() -> None:
    sim = sim_with("n1")
    from warren.model import Mount, MountType

    db = service("app_db", mounts=(Mount(MountType.VOLUME, "/data", "app_data"),))
    apply(sim, stack_cmd(db, volumes=(Volume("vol1", "app_data"),)))
    sim.converge()
    assert apply(sim, RemoveStack("app", AT)).ok
    assert names_in(sim)["volumes"] == ["app_data"]  # its task is still stopping
    sim.converge()
    assert apply(sim, RemoveStack("app", AT)).ok
    assert names_in(sim)["volumes"] == []
