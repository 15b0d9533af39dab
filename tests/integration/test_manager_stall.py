"""A manager that stops hearing because it was itself stopped must not declare its nodes down
(ADR 69): the leader is SIGSTOPped for longer than the node timeout, then resumed; no node is
marked down and no task starts again. A node that really dies afterwards is still marked down.

Two simulated nodes: fewer than the mass-silence guard needs, so what keeps them up here is
the stall compensation alone.
"""

from __future__ import annotations

import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Manager
from tests.integration.simrig import SimProcess
from tests.waiting import wait_for
from warren.api.v1 import control_pb2 as cpb

pytestmark = pytest.mark.integration

NODES = 2
REPLICAS = 4
TIMEOUT = 3.0  # 3 periods of 1 s
STOPPED_FOR = 1.5 * TIMEOUT


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Manager, SimProcess]]:
    (tmp_path / "m1").mkdir()
    manager = Manager(tmp_path / "m1", start_args=["--heartbeat-period", "1s"], schedule_on_manager=False)
    sim: SimProcess | None = None
    try:
        manager.start()
        sim = SimProcess(manager, tmp_path, NODES, "--start-delay", "10ms")
        yield manager, sim
    finally:
        if manager.process is not None and manager.process.poll() is None:
            manager.process.send_signal(signal.SIGCONT)  # a failed test may leave it stopped
        if sim is not None:
            sim.stop()
        manager.stop()


def sim_nodes(manager: Manager) -> dict[str, str]:
    reply = manager.control().ListNodes(cpb.ListNodesRequest(), timeout=10)
    return {n.hostname: n.status for n in reply.nodes if n.hostname.startswith("sim-")}


def running(manager: Manager) -> set[str]:
    reply = manager.control().ListTasks(cpb.ListTasksRequest(service="web", include_history=True), timeout=10)
    return {t.id for t in reply.tasks if t.state == "running"}


def all_tasks(manager: Manager) -> set[str]:
    reply = manager.control().ListTasks(cpb.ListTasksRequest(service="web", include_history=True), timeout=10)
    return {t.id for t in reply.tasks}


def stall_count(manager: Manager) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{manager.metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    lines = [line for line in text.splitlines() if line.startswith("warren_manager_stall_seconds_count")]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_a_stopped_leader_marks_no_node_down_when_it_resumes(rig: tuple[Manager, SimProcess]) -> None:
    manager, sim = rig
    wait_for(lambda: list(sim_nodes(manager).values()) == ["ready"] * NODES, timeout=30, interval=0.2)
    created = manager.cli("service", "create", "web", "--image", "busybox", "--replicas", str(REPLICAS), "-d")
    assert created.returncode == 0, created.stderr
    wait_for(lambda: len(running(manager)) == REPLICAS, timeout=30, interval=0.2, message="4 running tasks")
    tasks = all_tasks(manager)

    assert manager.process is not None
    manager.process.send_signal(signal.SIGSTOP)
    time.sleep(STOPPED_FOR)  # the fault itself lasts this long; every check below polls
    manager.process.send_signal(signal.SIGCONT)

    # For longer than a node timeout after it resumes: every node ready, no task replaced.
    deadline = time.monotonic() + TIMEOUT + 1
    while time.monotonic() < deadline:
        assert sim_nodes(manager) == {h: "ready" for h in sim_nodes(manager)}, sim_nodes(manager)
        assert all_tasks(manager) == tasks
        time.sleep(0.2)
    assert len(running(manager)) == REPLICAS
    assert stall_count(manager) >= 1  # the stall was measured, not just survived
    assert "event loop did not run for" in manager.log()

    # A node that dies now is marked down as usual, and its tasks run on the other.
    killed = sim.kill(1)
    assert len(killed) == 1
    wait_for(lambda: sim_nodes(manager)[killed[0]] == "down", timeout=20, interval=0.2, message="the killed node down")
    wait_for(lambda: len(running(manager)) == REPLICAS, timeout=20, interval=0.2, message="its tasks replaced")
