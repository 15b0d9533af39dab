"""Stacks end to end through the API (#14, ADR 49), on one module-scoped manager and exec agent:
deploy; a re-deploy changes nothing; one changed image plans one update and replaces only that
service's tasks; depends_on service_healthy holds the dependent until its dependency is healthy;
bad stacks are refused whole; `stack ls/services/ps/rm` through the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.integration.stackrig import Cluster, deploy, stack_cluster, stack_tasks
from tests.waiting import holds, wait_for
from warren.api.v1 import control_pb2 as cpb
from warren.cli.errors import Exit
from warren.model import HealthCheck, PortConfig, RestartPolicy, ServiceSpec, UpdateConfig
from warren.stack.spec import Dependency, DependencyCondition, StackNetwork, StackObject, StackService, StackSpec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with stack_cluster(tmp_path_factory.mktemp("stacks")) as parts:
        yield parts


def exec_service(name: str, marker: str, replicas: int = 1, image: str = "exec", **fields: object) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        image=image,
        command=("sh", "-c", "exec sleep 1000", marker),
        replicas=replicas,
        constraints=("node.role==worker",),
        stop_grace_period=1.0,
        restart=RestartPolicy(delay=0.2),
        update=UpdateConfig(parallelism=0, monitor=0.5),  # a lean rollout: every task at once
        **fields,  # type: ignore[arg-type]
    )


def app(marker: str, web_image: str = "exec") -> StackSpec:
    return StackSpec(
        name="app",
        services=(
            StackService(exec_service("app_web", marker, replicas=2, image=web_image, ports=(PortConfig(80, 18080),))),
            StackService(exec_service("app_db", marker)),
        ),
        secrets=(StackObject("app_token", b"s3cret"),),
        configs=(StackObject("app_conf", b"x=1"),),
        networks=(StackNetwork("app_default"),),
    )


def test_deploy_redeploy_update_one_service_and_remove(cluster: Cluster) -> None:
    manager, _agent, procs = cluster
    marker = procs.marker.decode()
    reply = deploy(manager, app(marker))
    assert reply.deployed
    assert sorted((c.kind, c.name, c.action) for c in reply.changes) == [
        ("config", "app_conf", "create"),
        ("network", "app_default", "create"),
        ("secret", "app_token", "create"),
        ("service", "app_db", "create"),
        ("service", "app_web", "create"),
    ]
    wait_for(lambda: {k: len(v) for k, v in stack_tasks(manager, "app").items()} == {"app_web": 2, "app_db": 1}, 45)
    before = stack_tasks(manager, "app")

    # The same stack again: no change, and no task restarted.
    again = deploy(manager, app(marker))
    assert list(again.changes) == [] and not again.orphaned
    holds(lambda: stack_tasks(manager, "app") == before, seconds=2, message="the same tasks after a re-deploy")

    # One changed image: the plan shows exactly one update, and the deploy replaces only its tasks.
    plan = deploy(manager, app(marker, web_image="exec:2"), dry_run=True)
    assert [(c.kind, c.name, c.action, list(c.diff), c.replaces) for c in plan.changes] == [
        ("service", "app_web", "update", ["image exec → exec:2"], 2)
    ]
    assert not plan.deployed and stack_tasks(manager, "app") == before
    deploy(manager, app(marker, web_image="exec:2"))

    def web_replaced() -> bool:
        now = stack_tasks(manager, "app")
        return len(now.get("app_web", ())) == 2 and not now["app_web"] & before["app_web"]

    wait_for(web_replaced, timeout=60, message="app_web's tasks replaced")
    assert stack_tasks(manager, "app")["app_db"] == before["app_db"]
    assert deploy(manager, app(marker, web_image="exec:2"), dry_run=True).changes == []

    # The CLI reads the stack from the state.
    listed = manager.cli_json("stack", "ls")
    counts = [(s["name"], s["services"], s["secrets"], s["configs"], s["networks"]) for s in listed]
    assert counts == [("app", 2, 1, 1, 1)]  # type: ignore[union-attr]
    services = manager.cli_json("stack", "services", "app")
    assert [s["spec"]["name"] for s in services] == ["app_db", "app_web"]  # type: ignore[union-attr]
    table = manager.cli("stack", "ps", "app")
    assert table.returncode == 0 and "app_web.1" in table.stdout and "app_db.1" in table.stdout

    # stack rm: nothing of it is left, and its processes stop.
    removed = manager.cli("stack", "rm", "app")
    assert removed.returncode == 0, removed.stderr
    assert "removed service app_web" in removed.stdout and "removed secret" in removed.stdout
    assert "removed network" in removed.stdout
    assert manager.cli_json("stack", "ls") == []
    assert manager.cli_json("service", "ls") == []
    assert manager.cli_json("secret", "ls") == [] and manager.cli_json("config", "ls") == []
    wait_for(lambda: not procs.pids(), timeout=30, message="the stack's processes to stop")
    gone = manager.cli("stack", "rm", "app")
    assert gone.returncode == Exit.NOT_FOUND and "stack 'app' not found" in gone.stderr.replace('"', "'")
    assert manager.cli("stack", "ps", "app").returncode == Exit.NOT_FOUND


def test_depends_on_service_healthy_holds_the_dependent_until_healthy(cluster: Cluster, tmp_path: Path) -> None:
    manager, _agent, procs = cluster
    marker = procs.marker.decode()
    flag = tmp_path / "db-ready"
    # Failures in the start period do not count: db runs, not healthy, until the flag exists.
    health = HealthCheck(command=("test", "-f", str(flag)), interval=0.3, timeout=2.0, retries=1, start_period=120)
    stack = StackSpec(
        name="dep",
        services=(
            StackService(exec_service("dep_db", marker, health=health)),
            StackService(
                exec_service("dep_web", marker, replicas=2),
                depends_on=(Dependency("dep_db", DependencyCondition.HEALTHY),),
            ),
        ),
    )
    deploy(manager, stack)
    try:

        def web_tasks() -> list[dict]:
            return [t for t in manager.cli_json("service", "ps", "dep_web") if t["desired_state"] == "running"]  # type: ignore[union-attr]

        def db_states() -> list[str]:
            return [t["state"] for t in manager.cli_json("service", "ps", "dep_db")]  # type: ignore[union-attr]

        # Its agent reports it starting until its first healthy check (ADR 33's readiness).
        wait_for(lambda: db_states() == ["starting"], timeout=30, message="dep_db started, not yet healthy")
        held = "waiting for dependencies: 0/1 tasks of dep_db healthy"
        wait_for(lambda: [t["message"] for t in web_tasks()] == [held, held], timeout=15, message="dep_web held")
        holds(
            lambda: all(t["state"] == "pending" for t in web_tasks()),
            seconds=2,
            message="dep_web pending while dep_db is not healthy",
        )
        service = manager.control().GetService(cpb.GetServiceRequest(service="dep_web"), timeout=10)
        assert [(d.service, d.condition) for d in service.depends_on] == [("dep_db", "service_healthy")]
        flag.touch()
        wait_for(lambda: len(stack_tasks(manager, "dep").get("dep_web", ())) == 2, timeout=30, message="dep_web up")
    finally:
        assert manager.cli("stack", "rm", "dep").returncode == 0
        wait_for(lambda: not procs.pids(), timeout=30, message="the stack's processes to stop")


def test_bad_stacks_are_refused_whole_and_write_nothing(cluster: Cluster) -> None:
    manager, _agent, procs = cluster
    marker = procs.marker.decode()

    def refused(stack: StackSpec) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as err:
            deploy(manager, stack)
        return err.value

    one = StackSpec(
        name="one", services=(StackService(exec_service("one_web", marker, ports=(PortConfig(80, 18090),))),)
    )
    deploy(manager, one)
    try:
        # A port another stack publishes: nothing of this stack is created, not even its config.
        clash = StackSpec(
            name="two",
            services=(
                StackService(exec_service("two_a", marker)),
                StackService(exec_service("two_b", marker, ports=(PortConfig(80, 18090),))),
            ),
            configs=(StackObject("two_conf", b"c"),),
        )
        err = refused(clash)
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS and "18090/tcp" in err.details()
        cycle = StackSpec(
            name="three",
            services=(
                StackService(exec_service("a", marker), depends_on=(Dependency("b"),)),
                StackService(exec_service("b", marker), depends_on=(Dependency("a"),)),
            ),
        )
        err = refused(cycle)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "cycle" in err.details()
        err = refused(StackSpec(name="bad name!", services=one.services))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "invalid stack name" in err.details()
        missing = StackSpec(
            name="four", services=(StackService(exec_service("f", marker)),), secrets=(StackObject("ext"),)
        )
        err = refused(missing)
        assert err.code() == grpc.StatusCode.NOT_FOUND and "external secret" in err.details()
        assert [s["name"] for s in manager.cli_json("stack", "ls")] == ["one"]  # type: ignore[index]
        assert [s["spec"]["name"] for s in manager.cli_json("service", "ls")] == ["one_web"]  # type: ignore[index]
        assert manager.cli_json("config", "ls") == []
    finally:
        assert manager.cli("stack", "rm", "one").returncode == 0
        wait_for(lambda: not procs.pids(), timeout=30, message="the stack's processes to stop")
