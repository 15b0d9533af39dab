"""Deployment strategies end to end (ADR 35) on a real manager and a real exec-runtime agent,
driven by the CLI, in one cluster for the module: canary -> promote -> every task on the new
version; canary -> rollback -> the very same old tasks; blue/green switch, then an instant
rollback that starts no task; and the strategy flags that contradict each other, refused."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.fixtures.exec_cluster import exec_cluster
from tests.integration.harness import Manager
from tests.integration.test_agent_exec import Processes
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

WAIT = ["--timeout", "60s"]
FAST = ["--update-monitor", "1s", "--rollback-monitor", "1s", *WAIT]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Manager, Processes]]:
    with exec_cluster(tmp_path_factory.mktemp("strategies"), "strategy") as (manager, _agent, procs):
        yield manager, procs


def _sleeper(procs: Processes, label: str) -> list[str]:
    return ["--constraint", "node.role==worker", "--", "sh", "-c", f": {label}; sleep 600", procs.marker.decode()]


def _running(manager: Manager, name: str) -> list[tuple[str, int]]:
    """(task id, version) of the tasks desired and actually running."""
    tasks = manager.cli_json("service", "ps", name)
    return sorted(
        (t["id"], int(t["spec_version"])) for t in tasks if t["state"] == "running" and t["desired_state"] == "running"
    )


def _versions(manager: Manager, name: str) -> list[int]:
    return sorted(v for _, v in _running(manager, name))


def _status(manager: Manager, name: str) -> dict:
    return manager.cli_json("service", "inspect", name)["update_status"]  # type: ignore[index]


def _create(manager: Manager, procs: Processes, name: str, *flags: str) -> None:
    created = manager.cli("service", "create", name, "--image", "exec", *flags, *FAST, *_sleeper(procs, "v1"))
    assert created.returncode == 0, created.stderr


def test_canary_then_promote_puts_every_task_on_the_new_version(cluster: tuple[Manager, Processes]) -> None:
    manager, procs = cluster
    canary = ["--deploy-strategy", "canary", "--canary-replicas", "1", "--canary-weight", "20"]
    _create(manager, procs, "cw", "--replicas", "3", *canary)
    update = manager.cli("service", "update", "cw", "--env-add", "V=2", *FAST)
    assert update.returncode == 0, update.stderr  # the wait ends at the canary's resting point
    assert "cw: canary: 1 of 3 tasks on version 2" in update.stderr
    assert "awaiting `warren service promote cw`" in update.stderr
    assert _versions(manager, "cw") == [1, 1, 1, 2]  # beside the old tasks, none stopped
    assert _status(manager, "cw")["state"] == "canary"
    assert "canary (v2)" in manager.cli("service", "ls").stdout
    inspected = manager.cli("service", "inspect", "cw", "--format", "table")
    assert "canary: 1 task(s), 20% of new connections, promoted by `warren service promote`" in inspected.stdout

    promoted = manager.cli("service", "promote", "cw", *WAIT)
    assert promoted.returncode == 0, promoted.stderr
    assert "cw: promoted the canaries of version 2" in promoted.stdout
    wait_for(lambda: _versions(manager, "cw") == [2, 2, 2], timeout=30, message="every task on version 2")
    assert _status(manager, "cw")["state"] == "completed"

    again = manager.cli("service", "promote", "cw")
    assert again.returncode == 2, again.stderr
    assert again.stderr.strip() == "warren: service cw has no canary to promote (its last rollout is completed)"


def test_canary_then_rollback_keeps_the_very_same_old_tasks(cluster: tuple[Manager, Processes]) -> None:
    manager, procs = cluster
    _create(manager, procs, "cr", "--replicas", "3", "--deploy-strategy", "canary", "--canary-replicas", "1")
    before = _running(manager, "cr")
    assert manager.cli("service", "update", "cr", "--env-add", "V=2", *FAST).returncode == 0
    assert _versions(manager, "cr") == [1, 1, 1, 2]
    back = manager.cli("service", "rollback", "cr", *WAIT)
    assert back.returncode == 0, back.stdout + back.stderr
    # The very same old tasks, adopted into the rollback's version 3 (ADR 33: they run its spec).
    kept = [(task_id, 3) for task_id, _ in before]
    wait_for(lambda: _running(manager, "cr") == kept, timeout=30, message="the canary gone, the old tasks kept")
    status = _status(manager, "cr")
    assert (status["state"], int(status["to_version"])) == ("rollback_completed", 3)


def test_blue_green_switches_then_rolls_back_without_starting_a_task(cluster: tuple[Manager, Processes]) -> None:
    manager, procs = cluster
    _create(manager, procs, "bg", "--replicas", "2", "--deploy-strategy", "blue-green", "--blue-green-keep", "10m")
    blue = _running(manager, "bg")
    update = manager.cli("service", "update", "bg", "--env-add", "V=2", *FAST)
    assert update.returncode == 0, update.stderr
    assert "switched to version 2; version 1 kept 600s" in update.stderr
    assert _versions(manager, "bg") == [1, 1, 2, 2]  # the old set kept, out of routing
    ids_before = {t["id"] for t in manager.cli_json("service", "ps", "bg", "--all")}

    started = time.monotonic()
    back = manager.cli("service", "rollback", "bg", *WAIT)
    assert back.returncode == 0, back.stdout + back.stderr
    blue_as_v3 = [(task_id, 3) for task_id, _ in blue]  # adopted into the rollback's version
    wait_for(lambda: _running(manager, "bg") == blue_as_v3, timeout=30, message="the old set serving alone")
    rollback_took = time.monotonic() - started
    assert {t["id"] for t in manager.cli_json("service", "ps", "bg", "--all")} <= ids_before  # no task started
    print(f"blue/green rollback to the kept set: {rollback_took:.1f}s")


CANARY = ["--deploy-strategy", "canary"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["--canary-replicas", "1"],
            "--canary-replicas, --canary-weight and --canary-auto-promote need --deploy-strategy",
        ),
        ([*CANARY, "--canary-replicas", "1", "--canary-weight", "101"], "must be a percentage, 0 to 100 (got 101)"),
        (CANARY, "--canary-replicas must be between 1 and"),
        (["--blue-green-keep", "1m"], "--blue-green-keep needs --deploy-strategy blue-green"),
        (
            ["--deploy-strategy", "blue-green", "--update-order", "stop-first"],
            "--update-order stop-first contradicts --deploy-strategy blue-green",
        ),
        (["--deploy-strategy", "sideways"], "invalid choice: 'sideways'"),
    ],
)
def test_contradictory_strategy_flags_are_refused_with_nothing_written(
    cluster: tuple[Manager, Processes], args: list[str], needle: str
) -> None:
    manager, procs = cluster
    if manager.cli("service", "inspect", "bad").returncode != 0:
        _create(manager, procs, "bad", "--replicas", "2", "--detach")
    result = manager.cli("service", "update", "bad", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert needle in lines[-1] and "Traceback" not in result.stderr
    assert int(manager.cli_json("service", "inspect", "bad")["version"]) == 1  # type: ignore[index]


def test_strategies_on_a_global_service_are_refused(cluster: tuple[Manager, Processes]) -> None:
    manager, _ = cluster
    flags = ("--image", "exec", "--mode", "global", "--deploy-strategy", "blue-green")
    result = manager.cli("service", "create", "global-bg", *flags, "--", "true")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "warren: --deploy-strategy blue-green is for replicated services: a global service rolls node by node"
    )
    # Not "g": a one-letter name is also a prefix of other services' ids, which inspect accepts.
    assert manager.cli("service", "inspect", "global-bg").returncode == 3  # nothing written
