"""Stacks from real Compose files through the CLI (#14, ADR 49), on one module-scoped manager and
exec agent: `stack plan/deploy` and `apply` with their exit codes and warnings, bad files refused
in one line that deploy nothing, and the published samples planned."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Manager
from tests.integration.stackrig import Cluster, stack_cluster, stack_tasks
from tests.waiting import wait_for
from warren.api.v1 import control_pb2 as cpb
from warren.cli.errors import Exit

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with stack_cluster(tmp_path_factory.mktemp("stacks")) as parts:
        yield parts


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
