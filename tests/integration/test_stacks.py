"""Stacks end to end (#14, ADR 49) on a real manager and an exec agent: StackSpecs built in code go
through the API, real Compose files through the CLI (`stack plan/deploy`, `apply`), and
`stack ls/services/ps/rm` through the CLI.

One module-scoped cluster: deploy; a re-deploy changes nothing (the same task ids); one changed
image plans exactly one update and replaces only that service's tasks; depends_on with
service_healthy holds the dependent service until its dependency is healthy; bad input is refused
whole; `stack rm` leaves no service, secret, config or network. And with three real managers, a
leader killed during a deploy leaves the whole stack or nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.fixtures.exec_cluster import exec_cluster
from tests.integration.harness import Manager, leader_of, manager_trio
from tests.integration.test_agent_exec import Agent, Processes
from tests.waiting import holds, wait_for
from warren.api import stackconvert
from warren.api.v1 import control_pb2 as cpb
from warren.cli.errors import Exit
from warren.model import HealthCheck, PortConfig, RestartPolicy, ServiceMode, ServiceSpec, UpdateConfig
from warren.stack.spec import Dependency, DependencyCondition, StackNetwork, StackObject, StackService, StackSpec

pytestmark = pytest.mark.integration

Cluster = tuple[Manager, Agent, Processes]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with exec_cluster(tmp_path_factory.mktemp("stacks"), "stacks") as parts:
        manager = parts[0]
        wait_for(
            lambda: any(n["status"] == "ready" for n in manager.cli_json("node", "ls") if n["role"] == "worker"),
            timeout=30,
            message="the worker to be ready",
        )
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


def deploy(
    manager: Manager, stack: StackSpec, dry_run: bool = False, prune: bool = False, creds: Path | None = None
) -> cpb.DeployStackResponse:
    request = cpb.DeployStackRequest(stack=stackconvert.stack_to_pb(stack), dry_run=dry_run, prune=prune)
    return manager.control(creds).DeployStack(request, timeout=30)


def stack_tasks(manager: Manager, name: str) -> dict[str, set[str]]:
    """service -> ids of its tasks running (desired running), through `stack ps`."""
    out: dict[str, set[str]] = {}
    for t in manager.cli_json("stack", "ps", name):  # type: ignore[union-attr]
        if t["state"] == "running" and t["desired_state"] == "running":
            out.setdefault(t["service_name"], set()).add(t["id"])
    return out


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


# -- the CLI's deploy and plan, from real Compose files -----------------------------------------
SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "compose"

CLI_COMPOSE = """\
name: cli
services:
  web:
    image: exec
    command: ["sh", "-c", "exec sleep 1000", "${MARK}"]
    environment:
      UNSET: "${WARREN_TEST_NOT_SET}"
    stop_grace_period: 1s
    deploy:
      replicas: 2
      placement:
        constraints: ["node.role==worker"]
"""


def write(directory: Path, text: str, name: str = "compose.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text)
    return directory / name


def stack_cli(manager: Manager, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`warren ARGS` as a user runs it, with `env` added to the environment (interpolation)."""
    command = [sys.executable, "-m", "warren.cli.main", *args]
    environ = {k: v for k, v in manager.env().items() if not k.startswith("WARREN_TEST_")}
    return subprocess.run(
        command, capture_output=True, text=True, env={**environ, **env}, timeout=120, cwd=manager.root
    )


def test_the_cli_plans_with_exit_codes_and_deploys_until_converged(cluster: Cluster, tmp_path: Path) -> None:
    manager, _agent, procs = cluster
    compose = str(write(tmp_path, CLI_COMPOSE))
    mark = {"MARK": procs.marker.decode()}
    unset = f"warren: warning: {compose}:7: services.web.environment.UNSET: the variable WARREN_TEST_NOT_SET is not set"
    try:
        plan = stack_cli(manager, "stack", "plan", "-c", compose, "cli", **mark)
        assert plan.returncode == 10, plan.stderr
        assert plan.stdout.splitlines()[0] == "+ network cli_default"
        assert "+ service cli_web" in plan.stdout.splitlines() and "    replicas 2" in plan.stdout.splitlines()
        assert plan.stdout.splitlines()[-1] == "Plan for stack cli: 2 to create, 0 to update, 0 to remove."
        # The loader's warning, one line on stderr, for plan, deploy and apply alike.
        assert plan.stderr.splitlines() == [unset + ": read as an empty string"]
        done = stack_cli(manager, "stack", "deploy", "-c", compose, "cli", **mark)
        assert done.returncode == 0, done.stderr
        assert done.stderr.splitlines()[0] == unset + ": read as an empty string"
        assert "cli_web: 2 of 2 tasks running" in done.stderr  # the wait, as `service create` shows it
        assert len(stack_tasks(manager, "cli")["cli_web"]) == 2
        same = stack_cli(manager, "stack", "plan", "-c", compose, "cli", WARREN_TEST_NOT_SET="", **mark)
        assert same.returncode == 0 and same.stdout == "No changes: stack cli is as the files say.\n"
        assert same.stderr == ""  # set (if empty): no warning
        applied = stack_cli(manager, "apply", "-f", compose, **mark)  # the file names its stack
        assert applied.returncode == 0 and "No changes: stack cli" in applied.stdout, applied.stderr
        assert applied.stderr.splitlines() == [unset + ": read as an empty string"]
        empty = write(tmp_path / "empty", "name: cli\nservices: {}\n")
        bad = stack_cli(manager, "apply", "-f", str(empty))
        assert bad.returncode == Exit.USAGE, bad.stderr
        assert bad.stderr == f"warren: {empty}:2: services: a stack needs at least one service\n"
    finally:
        assert manager.cli("stack", "rm", "cli").returncode == 0
        wait_for(lambda: not procs.pids(), timeout=30, message="the stack's processes to stop")


BAD_BASE = """\
services:
  web:
    image: exec
    command: ["sh", "-c", "exec sleep 1000", "MARK"]
    stop_grace_period: 1s
    deploy:
      placement:
        constraints: ["node.role==worker"]
"""


def test_bad_compose_files_are_one_line_and_deploy_nothing(cluster: Cluster, tmp_path: Path) -> None:
    """The issue's bad input, through the real CLI and a real manager: each is one line with its
    file:line and path, the right exit code, and nothing of the stack in the state."""
    manager, _agent, procs = cluster
    base = BAD_BASE.replace("MARK", procs.marker.decode())
    one = write(tmp_path / "one", base + "    ports: ['18091:80']\nconfigs:\n  c:\n    content: x\n")
    assert stack_cli(manager, "stack", "deploy", "--detach", "-c", str(one), "one").returncode == 0

    def state() -> tuple[list[str], ...]:
        api = manager.control()  # straight to the API: the CLI's start-up, x4 per case, is slow
        return (
            [s.name for s in api.ListStacks(cpb.ListStacksRequest(), timeout=10).stacks],
            sorted(s.spec.name for s in api.ListServices(cpb.ListServicesRequest(), timeout=10).services),
            sorted(c.name for c in api.ListConfigs(cpb.ListConfigsRequest(), timeout=10).configs),
            sorted(c.name for c in api.ListSecrets(cpb.ListSecretsRequest(), timeout=10).secrets),
        )

    before = state()
    assert before == (["one"], ["one_web"], ["one_c"], [])
    secret = "secrets:\n  s:\n    file: ./s.txt\n"
    cases = {
        "syntax": (base + "    ports: [18092\n", Exit.USAGE, ":10: invalid YAML: expected ',' or ']'"),
        "schema": (
            base.replace("    deploy:\n", "    deploy:\n      replicas: many\n"),
            Exit.USAGE,
            ":7: services.web.deploy.replicas: expected a whole number (got 'many')",
        ),
        "env_file": (
            base + "    env_file: ./missing.env\n",
            Exit.USAGE,
            ":9: services.web.env_file[0]: cannot read the env file",
        ),
        "secret_file": (
            base + "    secrets: [s]\n" + secret,
            Exit.USAGE,
            ":12: secrets.s.file: cannot read the secret file",
        ),
        "required": (
            base + "    environment:\n      NEED: ${WARREN_TEST_NEED:?set it first}\n",
            Exit.USAGE,
            ":10: services.web.environment.NEED: required variable WARREN_TEST_NEED is missing: set it first",
        ),
        "port": (
            base + "    ports: ['18091:80/tcp']\nconfigs:\n  c:\n    content: y\n",
            Exit.CONFLICT,
            "service two_web: port 18091/tcp is already published by service one_web",
        ),
        "unsupported": (base + "    build: .\n", Exit.USAGE, ":9: services.web.build: build is not supported"),
    }
    for case, (text, code, where) in cases.items():
        compose = write(tmp_path / case, text)
        (tmp_path / case / "s.txt").unlink(missing_ok=True)
        for command in ("plan", "deploy"):
            result = stack_cli(manager, "stack", command, "-c", str(compose), "two")
            assert result.returncode == code, (case, command, result.stderr)
            assert result.stderr.count("\n") == 1 and result.stderr.startswith("warren: "), (case, result.stderr)
            assert where in result.stderr, (case, result.stderr)
            assert "Traceback" not in result.stderr and result.stdout == ""
        assert state() == before, case
    # An unsupported key is named; --allow-unsupported deploys the rest.
    forced = stack_cli(
        manager,
        "stack",
        "deploy",
        "--detach",
        "--allow-unsupported",
        "-c",
        str(tmp_path / "unsupported" / "compose.yaml"),
        "two",
    )
    assert forced.returncode == 0, forced.stderr
    assert "services.web.build" in forced.stdout  # the plan's warning names it
    assert state()[:2] == (["one", "two"], ["one_web", "two_web"])
    for name in ("one", "two"):
        assert manager.cli("stack", "rm", name).returncode == 0
    wait_for(lambda: not procs.pids(), timeout=30, message="the stacks' processes to stop")


def test_published_compose_samples_plan_or_name_what_is_unsupported(cluster: Cluster) -> None:
    """The samples in tests/fixtures/compose, planned by a real manager through the CLI."""
    manager = cluster[0]

    def plan(sample: str, *flags: str) -> subprocess.CompletedProcess[str]:
        return stack_cli(manager, "stack", "plan", *flags, "-c", str(SAMPLES / sample), "vote")

    swarm = plan("voting-stack/docker-stack.yml")
    assert swarm.returncode == 10, swarm.stderr
    created = sorted(line for line in swarm.stdout.splitlines() if line.startswith("+ "))
    assert created == [
        "+ network vote_backend",
        "+ network vote_default",
        "+ network vote_frontend",
        "+ service vote_db",
        "+ service vote_redis",
        "+ service vote_result",
        "+ service vote_visualizer",
        "+ service vote_vote",
        "+ service vote_worker",
        "+ volume vote_db-data",
    ]
    for sample, named in (
        (
            "voting-compose/compose.yaml",
            [
                "services.vote.build@4",
                "services.result.build@27",
                "services.result.ports[1].host_ip@38",
                "services.worker.build@44",
                "services.seed.build@83",
                "services.seed.profiles@86",
            ],
        ),
        ("nginx-flask-mysql/compose.yaml", ["services.backend.build@3", "services.db.expose@36"]),
    ):
        path = SAMPLES / sample
        refused = plan(sample)
        assert refused.returncode == Exit.USAGE and refused.stderr.count("\n") == 1, refused.stderr
        assert refused.stderr.endswith("; deploy anyway with --allow-unsupported\n")
        shown = re.findall(rf"{re.escape(str(path))}:(\d+): ([\w.\[\]-]+):", refused.stderr)
        assert [f"{key}@{line}" for line, key in shown] == named[:5], refused.stderr  # the first five, then a count
        assert ("(and 1 more)" in refused.stderr) == (len(named) > 5)
        forced = plan(sample, "--allow-unsupported")
        assert forced.returncode == 10, forced.stderr
        assert all(f"{path}:{n.split('@')[1]}: {n.split('@')[0]}:" in forced.stdout for n in named[:5]), forced.stdout
    assert manager.cli_json("stack", "ls") == []  # a plan writes nothing


# -- failover ------------------------------------------------------------------------------------
def big_stack(name: str, services: int) -> StackSpec:
    specs = [
        ServiceSpec(name=f"{name}_s{i}", image="exec", command=("true",), replicas=0, mode=ServiceMode.REPLICATED)
        for i in range(services)
    ]
    return StackSpec(
        name=name,
        services=tuple(StackService(s) for s in specs),
        configs=tuple(StackObject(f"{name}_c{i}", b"x" * 1024) for i in range(5)),
    )


def test_a_leader_killed_during_a_deploy_leaves_the_whole_stack_or_nothing(tmp_path: Path) -> None:
    """A follower watches the stack appear while the leader commits it: the first time it sees
    any of it, it sees all of it (one entry); the leader is killed at that moment, and the new
    leader has the whole stack. A deploy made of several entries fails here: the follower sees
    it part-way (checked by proposing one entry per service)."""
    with manager_trio(tmp_path) as managers:
        leader = leader_of(managers)
        follower = next(m for m in managers if m is not leader)
        admin = managers[0].data_dir / "admin"  # the joined managers hold no admin credentials
        watch = follower.control(admin)
        stack = big_stack("ha", 40)
        errors: list[BaseException] = []

        def send() -> None:
            try:
                deploy(leader, stack, creds=admin)
            except BaseException as exc:  # the leader may die before it answers: any outcome is fine
                errors.append(exc)

        def seen() -> tuple[int, int] | None:
            stacks = watch.ListStacks(cpb.ListStacksRequest(), timeout=5).stacks
            return (stacks[0].services, stacks[0].configs) if stacks else None

        sender = threading.Thread(target=send)
        sender.start()
        first = wait_for(seen, timeout=30, interval=0.001, message="the stack on a follower")
        leader.kill()
        sender.join(timeout=60)
        assert first == (40, 5), f"a follower saw part of the stack: {first}"
        new_leader = leader_of([m for m in managers if m is not leader])

        def counts() -> tuple[int, int] | None:
            listed = new_leader.cli("--manager", new_leader.addr, "--consistent", "stack", "ls", "--format", "json")
            stacks = json.loads(listed.stdout) if listed.returncode == 0 else None
            return (stacks[0]["services"], stacks[0]["configs"]) if stacks else None

        assert wait_for(counts, timeout=30, message="the stack on the new leader") == (40, 5)
