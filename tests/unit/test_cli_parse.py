"""The CLI without a manager: flags -> ServiceSpec, usage errors, config, exit codes, startup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.ports import free_port
from warren import pki
from warren.api.v1 import types_pb2 as pb
from warren.cli import main, progress, service, service_spec
from warren.cli.errors import CliError, Exit
from warren.clientconfig import ConfigError, Context, config_path, load_context, save_context

GiB = 1024**3
MiB = 1024**2


def create_spec(*argv: str) -> pb.ServiceSpec:
    return service_spec.build_spec(main.parse_args(["service", "create", *argv]))


def updated(spec: pb.ServiceSpec, *argv: str) -> pb.ServiceSpec:
    new = pb.ServiceSpec()
    new.CopyFrom(spec)
    service_spec.apply_update(new, main.parse_args(["service", "update", spec.name, *argv]))
    return new


# -- service create -> ServiceSpec -------------------------------------------------------------
def test_create_minimal_uses_manager_defaults() -> None:
    spec = create_spec("web", "--image", "nginx:1.27")
    assert (spec.name, spec.image, spec.mode, spec.replicas) == ("web", "nginx:1.27", "replicated", 1)
    # Unset here means "the model's default" on the manager side.
    assert not spec.HasField("restart")
    assert not spec.HasField("health")
    assert not spec.HasField("stop_grace_period")
    assert list(spec.command) == [] and list(spec.args) == []


def test_create_all_flags() -> None:
    spec = create_spec(
        "web", "--image", "nginx", "--replicas", "3",
        "--env", "A=1", "-e", "B=x=y",
        "--constraint", "node.role==worker", "--constraint", "node.labels.zone==a",
        "--reserve-cpu", "0.5", "--reserve-memory", "512M", "--limit-cpu", "2", "--limit-memory", "1G",
        "--restart-condition", "on-failure", "--restart-delay", "10s", "--restart-max-attempts", "3",
        "--restart-window", "2m",
        "--health-http", "http://localhost:8080/health", "--health-interval", "5s", "--health-timeout", "500ms",
        "--health-retries", "5", "--health-start-period", "1m",
        "--publish", "8080:80", "-p", "5353:53/udp",
        "--label", "tier=front", "-l", "canary",
        "--stop-grace-period", "30s", "--stop-drain", "5s",
        "--", "nginx", "-g", "daemon off;",
    )  # fmt: skip
    assert spec.replicas == 3
    assert dict(spec.env) == {"A": "1", "B": "x=y"}
    assert list(spec.constraints) == ["node.role==worker", "node.labels.zone==a"]
    assert (spec.reservations.nano_cpus, spec.reservations.memory_bytes) == (500_000_000, 512 * MiB)
    assert (spec.limits.nano_cpus, spec.limits.memory_bytes) == (2_000_000_000, GiB)
    assert spec.restart == pb.RestartPolicy(condition="on-failure", delay=10.0, max_attempts=3, window=120.0)
    assert spec.health == pb.HealthCheck(
        kind="http", target="http://localhost:8080/health", interval=5.0, timeout=0.5, retries=5, start_period=60.0
    )
    assert [(p.published, p.target, p.protocol, p.mode) for p in spec.ports] == [
        (8080, 80, "tcp", "ingress"),
        (5353, 53, "udp", "ingress"),
    ]
    assert dict(spec.labels) == {"tier": "front", "canary": ""}
    assert spec.stop_grace_period == 30.0
    assert spec.stop_drain == 5.0
    # Docker's semantics: the words after the name replace the image's CMD, not its ENTRYPOINT.
    assert list(spec.command) == []
    assert list(spec.args) == ["nginx", "-g", "daemon off;"]


def test_create_partial_restart_policy_is_completed_with_defaults() -> None:
    spec = create_spec("web", "--image", "x", "--restart-max-attempts", "2")
    assert spec.restart == pb.RestartPolicy(condition="any", delay=5.0, max_attempts=2, window=0.0)


def test_create_health_cmd_runs_in_a_shell_with_default_timings() -> None:
    spec = create_spec("web", "--image", "x", "--health-cmd", "curl -f localhost || exit 1")
    assert spec.health.kind == "cmd"
    assert list(spec.health.command) == ["/bin/sh", "-c", "curl -f localhost || exit 1"]
    assert (spec.health.interval, spec.health.timeout, spec.health.retries) == (30.0, 30.0, 3)


def test_create_health_tcp() -> None:
    spec = create_spec("db", "--image", "x", "--health-tcp", "127.0.0.1:5432")
    assert (spec.health.kind, spec.health.target) == ("tcp", "127.0.0.1:5432")


def test_create_global_mode() -> None:
    spec = create_spec("agent", "--image", "x", "--mode", "global")
    assert spec.mode == "global" and spec.replicas == 0
    with pytest.raises(CliError) as err:
        create_spec("agent", "--image", "x", "--mode", "global", "--replicas", "2")
    assert err.value.code == Exit.USAGE


def test_health_options_need_a_check() -> None:
    with pytest.raises(CliError, match="need a check") as err:
        create_spec("web", "--image", "x", "--health-interval", "5s")
    assert err.value.code == Exit.USAGE


def test_command_only_allowed_where_it_means_something() -> None:
    with pytest.raises(SystemExit) as exc:
        main.parse_args(["service", "ls", "--", "echo"])
    assert exc.value.code == Exit.USAGE


# -- service update ----------------------------------------------------------------------------
@pytest.fixture
def base_spec() -> pb.ServiceSpec:
    return create_spec(
        "web", "--image", "nginx:1", "--replicas", "2", "-e", "A=1", "-e", "B=2", "--constraint", "node.role==worker",
        "-l", "tier=front", "-p", "8080:80", "-p", "9090:90", "--health-cmd", "true", "--health-retries", "7",
    )  # fmt: skip


def test_update_edits_lists_and_maps(base_spec: pb.ServiceSpec) -> None:
    spec = updated(
        base_spec, "--image", "nginx:2", "--env-add", "C=3", "--env-rm", "A", "--constraint-rm", "node.role==worker",
        "--constraint-add", "node.labels.zone==b", "--label-rm", "tier", "--label-add", "team=ops",
        "--publish-rm", "9090", "--publish-add", "8081:81", "--reserve-memory", "1G",
    )  # fmt: skip
    assert spec.image == "nginx:2"
    assert dict(spec.env) == {"B": "2", "C": "3"}
    assert list(spec.constraints) == ["node.labels.zone==b"]
    assert dict(spec.labels) == {"team": "ops"}
    assert [(p.published, p.target) for p in spec.ports] == [(8080, 80), (8081, 81)]
    assert spec.reservations.memory_bytes == GiB
    assert spec.replicas == 2 and spec.health.retries == 7  # untouched


def test_update_publish_add_replaces_same_published_port(base_spec: pb.ServiceSpec) -> None:
    spec = updated(base_spec, "--publish-add", "8080:8000")
    assert [(p.published, p.target) for p in spec.ports] == [(9090, 90), (8080, 8000)]


def test_update_health(base_spec: pb.ServiceSpec) -> None:
    spec = updated(base_spec, "--health-http", "http://x/")
    assert (spec.health.kind, spec.health.target, list(spec.health.command)) == ("http", "http://x/", [])
    assert spec.health.retries == 7  # timings kept when only the probe changes
    assert not updated(base_spec, "--no-healthcheck").HasField("health")
    with pytest.raises(CliError):
        updated(base_spec, "--no-healthcheck", "--health-retries", "2")


def test_update_without_flags_changes_nothing(base_spec: pb.ServiceSpec) -> None:
    assert updated(base_spec) == base_spec


def test_update_command(base_spec: pb.ServiceSpec) -> None:
    spec = updated(base_spec, "--", "sleep", "60")
    assert (list(spec.command), list(spec.args)) == ([], ["sleep", "60"])


def test_only_replicas_changed(base_spec: pb.ServiceSpec) -> None:
    assert service_spec.only_replicas_changed(base_spec, updated(base_spec, "--replicas", "5"))
    assert not service_spec.only_replicas_changed(base_spec, updated(base_spec, "--replicas", "5", "--image", "y"))


# -- service scale -----------------------------------------------------------------------------
def test_scale_targets() -> None:
    parse = main.parse_args
    assert service.scale_targets(parse(["service", "scale", "web", "--replicas", "3"])) == [("web", 3)]
    assert service.scale_targets(parse(["service", "scale", "web=3", "api=0"])) == [("web", 3), ("api", 0)]
    for argv in (["web"], ["web=x"], ["=3"], ["web=3", "--replicas", "2"], ["a", "b", "--replicas", "1"]):
        with pytest.raises(CliError) as err:
            service.scale_targets(parse(["service", "scale", *argv]))
        assert err.value.code == Exit.USAGE


# -- convergence -------------------------------------------------------------------------------
def _task(
    slot: int, state: str, desired: str = "running", version: int = 1, node: str = "n1", created: float = 0.0
) -> pb.Task:
    return pb.Task(id=f"t{slot}{state}{version}", slot=slot, state=state, desired_state=desired,
                   spec_version=version, node_id=node, created_at=created)  # fmt: skip


def _service(replicas: int, version: int = 1, mode: str = "replicated") -> pb.Service:
    return pb.Service(id="s1", version=version, spec=pb.ServiceSpec(name="web", mode=mode, replicas=replicas))


def test_converged_when_all_assigned_without_agent() -> None:
    c = progress.Convergence(_service(2), [_task(1, "assigned"), _task(2, "assigned")], check_version=False)
    assert c.done
    assert "no agent has started them" in c.summary()


def test_converged_when_all_running() -> None:
    c = progress.Convergence(_service(2), [_task(1, "running"), _task(2, "running")], check_version=False)
    assert c.done and c.summary() == "web: 2 of 2 tasks running"


def test_not_converged_while_pending_or_starting() -> None:
    tasks = [_task(1, "assigned"), _task(2, "pending"), _task(3, "starting")]
    tasks[1].message = "no suitable node: insufficient memory on 1 node"
    c = progress.Convergence(_service(3), tasks, check_version=False)
    assert not c.done
    assert c.lines()[0] == "web: overall progress: 1 of 3 tasks assigned"
    assert "web.2: pending: no suitable node: insufficient memory on 1 node" in c.lines()[1]


def test_not_converged_with_extra_or_outdated_tasks() -> None:
    scaled_down = [_task(1, "assigned"), _task(2, "assigned")]
    assert not progress.Convergence(_service(1), scaled_down, check_version=False).done
    stopping = [_task(1, "assigned"), _task(2, "assigned", desired="shutdown")]
    assert progress.Convergence(_service(1), stopping, check_version=False).done
    rolling = [_task(1, "assigned", version=2), _task(2, "assigned", version=1)]
    c = progress.Convergence(_service(2, version=2), rolling, check_version=True)
    assert not c.done and "older version" in c.lines()[-1]
    assert progress.Convergence(_service(2, version=2), rolling, check_version=False).done


def test_a_task_that_failed_and_was_replaced_is_history_not_live() -> None:
    # A task that fails on its own keeps desired state running; once a newer task runs in its
    # slot, the wait must not count it (it hung until its timeout: "1 more to stop").
    replaced = [_task(1, "failed", created=1.0), _task(1, "running", version=2, created=2.0)]
    c = progress.Convergence(_service(1, version=2), replaced, check_version=True)
    assert c.done and c.extra == 0 and c.stale == 0
    on_node = [_task(0, "failed", node="a", created=1.0), _task(0, "running", node="a", version=2, created=2.0)]
    assert progress.Convergence(_service(0, version=2, mode="global"), on_node, check_version=True).done
    # The newest task of a slot stays, ended or not: its error is what the wait shows.
    rejected = [_task(1, "rejected", created=1.0)]
    rejected[0].error = "no such image"
    c = progress.Convergence(_service(1), rejected, check_version=False)
    assert not c.done and "  web.1: rejected: no such image" in c.lines()


def test_global_target_is_its_task_count() -> None:
    c = progress.Convergence(_service(0, mode="global"), [_task(0, "assigned", node="a")], check_version=False)
    assert c.done and c.target == 1


# -- client config -----------------------------------------------------------------------------
def _credentials(tmp: Path) -> Context:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp / name).write_text("x")
    return Context("lab", ["10.0.0.1:4242"], tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem")


def test_save_and_load_context(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "config.json"
    written = save_context(_credentials(tmp_path), path=path)
    assert written == path and oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_context(path=path) == _credentials(tmp_path)
    other = Context("prod", ["10.1.0.1:4242", "10.1.0.2:4242"], tmp_path / "ca.pem", tmp_path / "cert.pem",
                    tmp_path / "key.pem")  # fmt: skip
    save_context(other, make_current=False, path=path)
    data = json.loads(path.read_text())
    assert data["current"] == "lab" and set(data["contexts"]) == {"lab", "prod"}
    assert load_context("prod", path=path).managers == ["10.1.0.1:4242", "10.1.0.2:4242"]
    with pytest.raises(ConfigError, match="no context named 'nope'"):
        load_context("nope", path=path)


def test_load_context_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no credentials: run `warren cluster init` or set WARREN_CONFIG"):
        load_context(path=tmp_path / "missing.json")
    path = save_context(_credentials(tmp_path), path=tmp_path / "config.json")
    (tmp_path / "key.pem").unlink()
    with pytest.raises(ConfigError, match=r"key\.pem"):
        load_context(path=path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_context(path=path)


def test_config_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WARREN_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert config_path() == tmp_path / "warren" / "config.json"
    monkeypatch.setenv("WARREN_CONFIG", str(tmp_path / "x.json"))
    assert config_path() == tmp_path / "x.json"


# -- the process: exit codes, one-line errors, startup imports ---------------------------------
def run_cli(*argv: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "WARREN_DEBUG"}
    env["WARREN_CONFIG"] = str(config or "/nonexistent/warren/config.json")
    return subprocess.run(
        [sys.executable, "-m", "warren.cli.main", *argv], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["service", "create", "web", "--image", "x", "--replicas", "three"], "--replicas: invalid count 'three'"),
        (["service", "create", "web", "--image", "x", "--reserve-memory", "12Q"], "invalid size '12Q'"),
        (["service", "create", "web", "--image", "x", "--restart-delay", "soon"], "invalid duration 'soon'"),
        (["service", "create", "web"], "--image"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["service", "frobnicate"], "invalid choice: 'frobnicate'"),
        (["--manager", "nohost", "service", "ls"], "invalid address 'nohost'"),
        (["service", "create", "web", "--image", "x", "--mode", "global", "--replicas", "2"], "global"),
        (["node", "update", "n1"], "nothing to change"),
        (["service", "create", "web", "--image", "x", "--stop-signal", "SIGNOPE"], "invalid stop signal 'SIGNOPE'"),
        (["service", "create", "web", "--image", "x", "--stop-signal", "65"], "a number from 1 to 64"),
        # Numbers out of range (issue #10): a clear line and exit 2, never "internal error: ValueError".
        (["service", "create", "web", "--image", "x", "--replicas", "99999999999999999999999"], "at most 2147483647"),
        (["service", "create", "web", "--image", "x", "--replicas", "9" * 5000], "at most 2147483647"),
        (["service", "create", "web", "--image", "x", "--reserve-cpu", "1e30"], "invalid CPU count '1e30'"),
        (["service", "create", "web", "--image", "x", "--limit-cpu", "99999999999"], "at most 9223372036 cores"),
        (["service", "create", "web", "--image", "x", "--reserve-memory", "99999999999T"], "at most"),
        (["service", "create", "web", "--image", "x", "--limit-memory", "1e3"], "invalid size '1e3'"),
        (["service", "create", "web", "--image", "x", "--restart-delay", "99999999h"], "at most a year"),
        (["service", "create", "web", "--image", "x", "--restart-max-attempts", "99999999999"], "at most"),
        (["service", "create", "web", "--image", "x", "--stop-grace-period", "9" * 400], "at most a year"),
        (["service", "create", "web", "--image", "x", "--publish", "99999:1"], "expected 1-65535"),
        (["service", "create", "web", "--image", "x", "--publish", "80:\u00b2"], "invalid port mapping"),
        (["service", "create", "web", "--image", "x", "--health-cmd", "true", "--health-interval", "0s"],
         "must be more than 0"),
        (["service", "create", "web", "--image", "x", "--health-cmd", "true", "--health-timeout", "0"],
         "must be more than 0"),
        (["service", "create", "web", "--image", "x", "--health-cmd", "true", "--health-retries", "9" * 30],
         "at most"),
        (["service", "create", "web", "--image", "x", "--stop-signal", "\u00b2"], "invalid stop signal"),
        (["service", "create", "web", "--image", "x", "--stop-signal", "\u0669"], "invalid stop signal"),
        (["--timeout", "99999999h", "service", "ls"], "at most a year"),
        (["service", "logs", "web", "--tail", "99999999999999"], "invalid --tail"),
        (["worker", "start", "--wireguard-port", "99999"], "invalid port '99999'"),
        (["worker", "start", "--wireguard-port", "\u0669"], "invalid port"),
        (["service", "create", "x" * 100_000, "--image", "x", "--replicas", "-1"], "invalid count '-1'"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2_with_one_line(argv: list[str], needle: str) -> None:
    result = run_cli(*argv)
    assert result.returncode == Exit.USAGE, result.stderr
    assert result.stderr.count("\n") == 1 and needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert len(result.stderr) < 400, result.stderr[:400]  # input is echoed cut short


def test_missing_config_exits_6() -> None:
    result = run_cli("service", "ls")
    assert result.returncode == Exit.CREDENTIALS
    assert result.stderr == (
        "warren: no credentials: run `warren cluster init` or set WARREN_CONFIG "
        "(looked in /nonexistent/warren/config.json)\n"
    )


def test_cluster_join_with_a_malformed_token_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "worker"
    result = run_cli("cluster", "join", "--token", "x", "127.0.0.1:4244", "--data-dir", str(data))
    assert result.returncode == Exit.USAGE
    assert result.stderr.startswith("warren: join token is malformed") and "Traceback" not in result.stderr
    assert not data.exists()


def test_worker_start_without_an_identity_exits_6(tmp_path: Path) -> None:
    result = run_cli("worker", "start", "--data-dir", str(tmp_path))
    assert result.returncode == Exit.CREDENTIALS
    assert "holds no node identity" in result.stderr and "cluster join" in result.stderr


def test_unreachable_manager_exits_5(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.create("test-cluster")
    cert, key = ca.issue_keypair("admin", "admin")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    addr = f"127.0.0.1:{free_port()}"
    ctx = Context("test", [addr], tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    config = save_context(ctx, path=tmp_path / "config.json")
    result = run_cli("--timeout", "5", "service", "ls", config=config)
    assert result.returncode == Exit.UNAVAILABLE, result.stderr
    assert result.stderr == f"warren: cannot reach a manager at {addr}: connection refused\n"


def test_help_and_usage_errors_do_not_import_grpc_or_rich() -> None:
    code = (
        "import sys\n"
        "from warren.cli import main\n"
        "for argv in (['--help'], ['service', 'create', '--help'], ['service', 'create', 'x', '--replicas', 'y']):\n"
        "    try:\n"
        "        main.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'rich', 'google', 'cryptography'))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
