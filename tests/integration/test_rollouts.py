"""Rollouts end to end (ADR 33) on a real manager and a real exec-runtime agent, driven by the
CLI: an update whose new tasks fail pauses with the old tasks still serving (exit 7), a failure
action `rollback` returns every task to the old spec (exit 8) restarting only the failed slot,
history and rollback to any kept version, `--force` replaces every task, and bad rollout input
is refused with a clear line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.exec_cluster import exec_cluster
from tests.integration.harness import Manager
from tests.integration.test_agent_exec import Processes
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

FAST = ["--update-monitor", "1s", "--rollback-monitor", "1s"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Manager, Processes]]:
    with exec_cluster(tmp_path, "rollout") as (manager, _agent, procs):
        yield manager, procs


def _sleeper(procs: Processes, label: str) -> list[str]:
    """A task command that runs until stopped, carrying the test's marker; `label` tells versions apart."""
    return [
        "--constraint",
        "node.role==worker",
        "--",
        "sh",
        "-c",
        f": {label}; sleep 600; exit 0",
        procs.marker.decode(),
    ]


def _tasks(manager: Manager, name: str) -> list[dict]:
    return manager.cli_json("service", "ps", name)  # type: ignore[return-value]


def _running(manager: Manager, name: str) -> list[tuple[int, int]]:
    """(slot, version) of the tasks desired and actually running."""
    return sorted(
        (int(t["slot"]), int(t["spec_version"]))
        for t in _tasks(manager, name)
        if t["state"] == "running" and t["desired_state"] == "running"
    )


def _status(manager: Manager, name: str) -> dict:
    return manager.cli_json("service", "inspect", name)["update_status"]  # type: ignore[index]


def test_a_failing_update_pauses_and_the_old_tasks_keep_serving(cluster: tuple[Manager, Processes]) -> None:
    manager, procs = cluster
    created = manager.cli(
        "service", "create", "web", "--image", "exec", "--replicas", "3", *FAST, *_sleeper(procs, "v1")
    )
    assert created.returncode == 0, created.stderr
    before = {t["id"] for t in _tasks(manager, "web") if t["state"] == "running"}
    assert len(before) == 3

    update = manager.cli("service", "update", "web", "--", "sh", "-c", "exit 3", procs.marker.decode())
    assert update.returncode == 7, update.stdout + update.stderr
    line = update.stderr.strip().splitlines()[-1]
    assert line.startswith("warren: web: the update to version 2 paused: task web.")
    assert "failed: " in line and "(image exec)" in line
    status = _status(manager, "web")
    assert (status["state"], int(status["from_version"]), int(status["to_version"])) == ("paused", 1, 2)
    # The two slots the update did not reach still run version 1, untouched; the failed slot's
    # old task kept serving too (start-first: it stops only once its replacement is ready).
    assert _running(manager, "web") == [(1, 1), (2, 1), (3, 1)]
    assert {t["id"] for t in _tasks(manager, "web") if t["state"] == "running"} == before
    listed = manager.cli("service", "ls")
    assert "paused (v2)" in listed.stdout


def test_failure_action_rollback_returns_every_task_to_the_previous_spec(cluster: tuple[Manager, Processes]) -> None:
    manager, procs = cluster
    created = manager.cli(
        "service", "create", "web", "--image", "exec", "--replicas", "2", *FAST, *_sleeper(procs, "v1")
    )
    assert created.returncode == 0, created.stderr
    before = {int(t["slot"]): t["id"] for t in _tasks(manager, "web") if t["state"] == "running"}
    update = manager.cli(
        "service", "update", "web", "--update-failure-action", "rollback", "--update-order", "stop-first",
        "--timeout", "90s", "--", "sh", "-c", "exit 3", procs.marker.decode(),
    )  # fmt: skip
    assert update.returncode == 8, update.stdout + update.stderr
    assert "was rolled back to the previous spec (now version 3)" in update.stderr
    status = wait_for(
        lambda: (s := _status(manager, "web"))["state"] == "rollback_completed" and s, message="the rollback to end"
    )
    assert status["message"].startswith("rolled back: task web.")
    wait_for(lambda: _running(manager, "web") == [(1, 3), (2, 3)], timeout=30, message="both slots on version 3")
    # Only the failed slot restarts (stop-first: its old task was stopped); the slot the update
    # never reached keeps its task, adopted into version 3 (ADR 33).
    after = {int(t["slot"]): t["id"] for t in _tasks(manager, "web") if t["state"] == "running"}
    assert after[2] == before[2] and after[1] != before[1], (before, after)
    spec = manager.cli_json("service", "inspect", "web")["spec"]  # type: ignore[index]
    assert spec["args"][2] == ": v1; sleep 600; exit 0"  # version 3 runs version 1's command (sh -c ...)
    # The failed tasks of version 2 are history: failed, and desired shutdown (as in Swarm).
    failed = [t for t in manager.cli_json("service", "ps", "web", "--all") if t["spec_version"] == "2"]  # type: ignore[union-attr]
    assert failed and {(t["state"], t["desired_state"]) for t in failed} == {("failed", "shutdown")}, failed


def test_history_rollback_to_any_version_and_forced_restarts(cluster: tuple[Manager, Processes]) -> None:
    manager, procs = cluster
    create = ["service", "create", "web", "--image", "exec", "--replicas", "2", *FAST, *_sleeper(procs, "v1")]
    assert manager.cli(*create).returncode == 0
    for label in ("v2", "v3"):
        updated = manager.cli("service", "update", "web", "--env-add", f"LABEL={label}", "--timeout", "90s")
        assert updated.returncode == 0, updated.stderr
    assert _running(manager, "web") == [(1, 3), (2, 3)]

    history = manager.cli("service", "history", "web")
    assert history.returncode == 0, history.stderr
    rows = [line.split(None, 1) for line in history.stdout.strip().splitlines()[1:]]
    assert [r[0] for r in rows] == ["3", "2", "1"]
    assert "env +LABEL" in history.stdout and "env ~LABEL" in history.stdout and "created" in history.stdout

    back = manager.cli("service", "rollback", "web", "--to-version", "1", "--timeout", "90s")
    assert back.returncode == 0, back.stdout + back.stderr
    assert "rolling back to the spec of version 1 (as version 4)" in back.stdout
    inspected = manager.cli_json("service", "inspect", "web")
    assert "LABEL" not in inspected["spec"].get("env", {})  # type: ignore[index]
    assert _status(manager, "web")["state"] == "rollback_completed"
    assert _running(manager, "web") == [(1, 4), (2, 4)]

    before = {t["id"] for t in _tasks(manager, "web") if t["state"] == "running"}
    forced = manager.cli("service", "update", "web", "--force", "--timeout", "90s")
    assert forced.returncode == 0, forced.stderr
    after = {t["id"] for t in _tasks(manager, "web") if t["state"] == "running"}
    assert len(after) == 2 and not after & before  # every task replaced, nothing else changed
    assert _running(manager, "web") == [(1, 5), (2, 5)]


def test_bad_rollout_input_is_refused_with_one_line(cluster: tuple[Manager, Processes]) -> None:
    manager, procs = cluster
    assert (
        manager.cli("service", "create", "web", "--image", "exec", "--detach", *_sleeper(procs, "v1")).returncode == 0
    )
    cases = [
        (["service", "update", "web", "--update-parallelism", "-1"], 2, "invalid count '-1'"),
        (["service", "update", "web", "--update-max-failure-ratio", "1.5"], 2, "invalid ratio '1.5': at most 1"),
        (["service", "update", "web", "--rollback-failure-action", "rollback"], 2, "invalid choice: 'rollback'"),
        (["service", "update", "web", "--update-order", "sideways"], 2, "invalid choice: 'sideways'"),
        (["service", "rollback", "web"], 2, "service web has no earlier version to roll back to"),
        (["service", "rollback", "web", "--to-version", "0"], 2, "--to-version must be a version number"),
        (["service", "rollback", "web", "--to-version", "9"], 2, "service web has no version 9 (it keeps: 1)"),
        (["service", "rollback", "nope"], 3, "not found"),
    ]
    for args, code, needle in cases:
        result = manager.cli(*args)
        assert result.returncode == code, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert needle in lines[-1] and "Traceback" not in result.stderr, (args, result.stderr)
    assert int(manager.cli_json("service", "inspect", "web")["version"]) == 1  # type: ignore[index]
