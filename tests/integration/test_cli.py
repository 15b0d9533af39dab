"""The real CLI against a real manager: the operator's view of Warren."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.harness import Manager, free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _ps(manager: Manager, service: str, *extra: str) -> list[dict]:
    return manager.cli_json("service", "ps", service, *extra)  # type: ignore[return-value]


def test_service_lifecycle(manager: Manager) -> None:
    create = manager.cli(
        "service",
        "create",
        "web",
        "--image",
        "busybox:latest",
        "--replicas",
        "3",
        "--env",
        "GREETING=hi",
        "--label",
        "tier=front",
        "--",
        "httpd",
        "-f",
        "-p",
        "8080",
    )
    assert create.returncode == 0, create.stderr
    # The CLI waited for convergence and said honestly how far tasks can get without an agent.
    assert "3 of 3 tasks assigned" in create.stderr

    [svc] = manager.cli_json("service", "ls")
    assert svc["spec"]["name"] == "web" and svc["spec"]["replicas"] == "3"
    inspect = manager.cli_json("service", "inspect", "web")
    # The words after `--` replace the image's CMD and keep its ENTRYPOINT, as in Docker (ADR 42).
    assert inspect["spec"].get("command", []) == [] and inspect["spec"]["args"] == ["httpd", "-f", "-p", "8080"]
    assert inspect["spec"]["env"] == {"GREETING": "hi"}

    tasks = _ps(manager, "web")
    assert sorted(int(t["slot"]) for t in tasks) == [1, 2, 3]
    assert {t["state"] for t in tasks} == {"assigned"}

    scale = manager.cli("service", "scale", "web=5")
    assert scale.returncode == 0, scale.stderr
    assert sorted(int(t["slot"]) for t in _ps(manager, "web")) == [1, 2, 3, 4, 5]

    # Scale down: the newest tasks go first (all are equally far along here); between tasks
    # created in the same pass, the higher slot counts as newer.
    assert manager.cli("service", "scale", "web", "--replicas", "2").returncode == 0
    live = wait_for(
        lambda: [t for t in _ps(manager, "web") if t["desired_state"] == "running"] or None, message="live tasks"
    )
    assert sorted(int(t["slot"]) for t in live) == [1, 2]

    # An update replaces a task with one running the new spec version.
    update = manager.cli("service", "update", "web", "--env-add", "GREETING=hello", "--detach")
    assert update.returncode == 0, update.stderr
    assert manager.cli_json("service", "inspect", "web")["version"] == "2"
    wait_for(lambda: any(t["spec_version"] == "2" for t in _ps(manager, "web")), message="a version-2 task")

    rm = manager.cli("service", "rm", "web")
    assert rm.returncode == 0, rm.stderr
    assert manager.cli_json("service", "ls") == []
    assert manager.cli("service", "ps", "web").returncode == 3


def test_pending_tasks_explain_why(manager: Manager) -> None:
    result = manager.cli(
        "service", "create", "zoned", "--image", "busybox", "--constraint", "node.labels.zone==b", "--detach"
    )
    assert result.returncode == 0, result.stderr
    [task] = wait_for(lambda: [t for t in _ps(manager, "zoned") if t.get("message")], message="a pending reason")
    assert task["state"] == "pending"
    assert "node.labels.zone==b" in task["message"]

    table = manager.cli("service", "ps", "zoned")
    assert "node.labels.zone==b" in table.stdout

    # Labelling the node satisfies the constraint: the task gets placed.
    [node] = manager.cli_json("node", "ls")
    assert manager.cli("node", "update", "--label-add", "zone=b", node["hostname"]).returncode == 0
    wait_for(lambda: _ps(manager, "zoned")[0]["state"] == "assigned", message="the task to be placed")

    # Draining the node moves its tasks off it; with no other node they wait, saying why.
    assert manager.cli("node", "update", "--availability", "drain", node["id"]).returncode == 0
    assert manager.cli_json("node", "inspect", node["id"])["availability"] == "drain"
    wait_for(
        lambda: any(t["state"] == "pending" and "drain" in t["message"] for t in _ps(manager, "zoned")),
        message="a pending task blaming the drain",
    )
    assert manager.cli("node", "update", "--availability", "active", "--label-rm", "zone", node["id"]).returncode == 0
    assert "zone" not in manager.cli_json("node", "inspect", node["id"]).get("labels", {})


def test_global_service_follows_nodes(manager: Manager) -> None:
    result = manager.cli("service", "create", "agent", "--image", "busybox", "--mode", "global", "--detach")
    assert result.returncode == 0, result.stderr
    tasks = wait_for(lambda: _ps(manager, "agent") or None, message="a global task")
    assert len(tasks) == 1 and tasks[0]["state"] == "assigned"


def test_join_tokens(manager: Manager) -> None:
    worker = manager.cli("cluster", "join-token", "worker", "-q")
    assert worker.returncode == 0
    token = worker.stdout.strip()
    info = manager.cli_json("cluster", "info")
    assert token.startswith(f"WRNTKN-1-{info['ca_fingerprint']}-")
    manager_token = manager.cli("cluster", "join-token", "manager", "-q").stdout.strip()
    assert manager_token != token
    rotated = manager.cli("cluster", "join-token", "worker", "--rotate", "-q").stdout.strip()
    assert rotated != token and rotated.startswith(f"WRNTKN-1-{info['ca_fingerprint']}-")
    assert manager.cli("cluster", "join-token", "worker", "-q").stdout.strip() == rotated
    verbose = manager.cli("cluster", "join-token", "worker")
    assert f"warren cluster join --token {rotated}" in verbose.stdout


def test_metrics_endpoint(manager: Manager) -> None:
    assert manager.cli("service", "create", "m", "--image", "busybox", "--replicas", "2").returncode == 0
    body = urllib.request.urlopen(f"http://127.0.0.1:{manager.metrics_port}/metrics", timeout=5).read().decode()
    assert 'warren_nodes{status="ready"} 1.0' in body
    assert "warren_services 1.0" in body
    assert 'warren_tasks{state="assigned"} 2.0' in body
    assert 'warren_raft_role{role="leader"} 1.0' in body
    assert "warren_raft_commit_index" in body and "warren_raft_applied_index" in body
    assert 'warren_api_requests_total{code="OK",method="/warren.api.v1.Control/CreateService"} 1.0' in body
    assert "warren_api_request_duration_seconds_bucket" in body
    assert "warren_scheduler_pass_duration_seconds_count" in body


BAD_INPUT = [
    # (arguments, exit code, fragment of the one-line message)
    (["service", "create", "x"], 2, "--image"),
    (["service", "create", "bad name!", "--image", "busybox"], 2, "invalid service name"),
    (["service", "create", "x", "--image", "busybox", "--replicas", "-1"], 2, "replicas"),
    (["service", "create", "x", "--image", "busybox", "--replicas", "lots"], 2, "replicas"),
    (["service", "create", "x", "--image", "busybox", "--reserve-memory", "12Q"], 2, "12Q"),
    (["service", "create", "x", "--image", "busybox", "--constraint", "node.labels.zone~=a"], 2, "constraint"),
    (["service", "create", "x", "--image", "busybox", "--mode", "sometimes"], 2, "mode"),
    (["service", "create", "x", "--image", "busybox", "--restart-condition", "maybe"], 2, "maybe"),
    (["service", "create", "x", "--image", "busybox", "--publish", "99999:80"], 2, "99999"),
    (["service", "create", "web", "--image", "busybox"], 4, "already in use"),
    (["service", "create", "x", "--image", "busybox", "--publish", "8080:80"], 4, "8080"),
    (["service", "scale", "nope=3"], 3, "nope"),
    (["service", "scale", "web=-2"], 2, "web=-2"),
    (["service", "rm", "nope"], 3, "not found"),
    (["service", "inspect", "nope"], 3, "not found"),
    (["service", "update", "web", "--image", ""], 2, "image"),
    (["node", "update", "--availability", "sleepy", "x"], 2, "sleepy"),
    (["node", "update", "--availability", "drain", "no-such-node"], 3, "not found"),
    (["cluster", "join-token", "superuser"], 2, "superuser"),
    (["service", "frobnicate"], 2, "frobnicate"),
    (["node", "rotate-key", "no-such-node"], 3, "not found"),
    (["cluster", "update"], 2, "nothing to change"),
    (["cluster", "update", "--wireguard-key-rotation", "soon"], 2, "soon"),
    (["cluster", "update", "--wireguard-key-rotation", "1s"], 2, "at least 10s"),
]


def test_bad_input_gives_clear_errors_and_leaves_state_unchanged(manager: Manager) -> None:
    assert (
        manager.cli(
            "service", "create", "web", "--image", "busybox", "--replicas", "2", "--publish", "8080:80"
        ).returncode
        == 0
    )
    before = manager.cli_json("service", "ls")
    for args, code, fragment in BAD_INPUT:
        result = manager.cli(*args)
        assert result.returncode == code, (args, result.returncode, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (args, result.stderr)
        assert fragment in lines[0], (args, lines[0])
    [node] = manager.cli_json("node", "ls")
    result = manager.cli("node", "rm", node["id"])
    assert result.returncode == 4 and "manager" in result.stderr
    result = manager.cli("node", "rotate-key", node["id"])  # its agent runs without --wireguard
    assert result.returncode == 4 and "not on the overlay" in result.stderr, result.stderr
    assert manager.cli_json("node", "inspect", node["id"])["wg_key_desired_epoch"] == "0"
    assert "rotation: off" in manager.cli("cluster", "info").stdout.replace("  ", " ")
    after = manager.cli_json("service", "ls")
    assert [(s["id"], s["version"], s["spec"]) for s in after] == [(s["id"], s["version"], s["spec"]) for s in before]


def test_unreachable_manager_and_missing_credentials(manager: Manager, tmp_path: Path) -> None:
    unreachable = manager.cli("--manager", f"127.0.0.1:{free_port()}", "service", "ls")
    assert unreachable.returncode == 5
    assert "cannot reach a manager" in unreachable.stderr and "Traceback" not in unreachable.stderr

    env = dict(manager.env(), WARREN_CONFIG=str(tmp_path / "nowhere.json"))
    missing = subprocess.run(
        [sys.executable, "-m", "warren.cli.main", "service", "ls"], capture_output=True, text=True, env=env, timeout=30
    )
    assert missing.returncode == 6
    assert "warren cluster init" in missing.stderr and "Traceback" not in missing.stderr


def test_restarting_init_resumes_and_never_reinitialises(manager: Manager) -> None:
    info = manager.cli_json("cluster", "info")
    assert manager.cli("service", "create", "keep", "--image", "busybox", "--detach").returncode == 0
    manager.stop()
    manager.start()
    again = manager.cli_json("cluster", "info")
    assert again["id"] == info["id"] and again["ca_fingerprint"] == info["ca_fingerprint"]
    assert [s["spec"]["name"] for s in manager.cli_json("service", "ls")] == ["keep"]
    assert "initialised" not in manager.log().split("Manager ", 2)[-1]


@pytest.mark.parametrize("period", ["1s"])
def test_node_goes_down_after_missed_heartbeats(tmp_path: Path, period: str) -> None:
    from tests.integration.test_security_and_dispatcher import ScriptedWorker, _issue
    from warren import pki

    manager = Manager(tmp_path)
    try:
        manager.start_args = ["--heartbeat-period", period]  # type: ignore[attr-defined]
        manager.start()
        creds = _issue(manager, tmp_path / "w", "workerdown1", pki.ROLE_WORKER)
        worker = ScriptedWorker(manager, creds, "worker-down")
        assert (
            manager.cli(
                "service",
                "create",
                "s",
                "--image",
                "busybox",
                "--replicas",
                "2",
                "--constraint",
                "node.role==worker",
                "--detach",
            ).returncode
            == 0
        )
        wait_for(lambda: len(worker.tasks) == 2, message="tasks on the worker")
        worker.close()  # stops heartbeating: down after 3 periods
        started = time.monotonic()
        node = wait_for(
            lambda: next(
                (n for n in manager.cli_json("node", "ls") if n["hostname"] == "worker-down" and n["status"] == "down"),
                None,
            ),
            timeout=15,
            message="the silent worker to be marked down",
        )
        assert time.monotonic() - started >= 2.0
        assert "heartbeat" in node.get("status_message", "")
        # Its tasks are orphaned and replaced by pending ones (no other worker to take them).
        tasks = wait_for(
            lambda: [t for t in _ps(manager, "s", "--all") if t["state"] == "orphaned"] or None,
            message="orphaned tasks",
        )
        assert len(tasks) == 2
        live = [t for t in _ps(manager, "s") if t["desired_state"] == "running"]
        assert len(live) == 2 and all(t["state"] == "pending" for t in live)
    finally:
        manager.stop()
    assert os.path.exists(manager.data_dir)


def test_secrets_on_disk_are_owner_only(manager: Manager) -> None:
    """The data directory holds the CA key (wrapped, in the LMDB state and snapshots) and the
    Raft secret that unwraps it; ca-key.pem is gone once the cluster is committed (ADR 24)."""
    assert manager.data_dir.stat().st_mode & 0o077 == 0
    assert not (manager.data_dir / "ca-key.pem").exists()
    for path in [
        manager.data_dir / "raft.secret",
        manager.data_dir / "admin" / "key.pem",
        *(manager.data_dir / "db").iterdir(),
    ]:
        assert path.stat().st_mode & 0o077 == 0, path
