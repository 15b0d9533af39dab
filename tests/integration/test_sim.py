"""`warren sim` against a real manager (ADR 50): 20 simulated nodes join with the real token,
become ready, run a 100-replica service, fail a share of starts (rescheduled by the managers),
and, once killed through the control socket, are marked down and their tasks run elsewhere.

One manager and one simulator for the module; the tests run in order and build on each other.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.harness import Manager
from tests.integration.simrig import SimProcess
from tests.waiting import wait_for
from warren.api.v1 import control_pb2 as cpb
from warren.runtime.sim import START_FAILURE

pytestmark = pytest.mark.integration

NODES = 20
REPLICAS = 100
FAIL_RATE = "0.1"
KILLED = 3


@dataclass
class Rig:
    manager: Manager
    sim: SimProcess

    def nodes(self) -> dict[str, cpb.Node]:  # type: ignore[name-defined]
        reply = self.manager.control().ListNodes(cpb.ListNodesRequest(), timeout=10)
        return {n.hostname: n for n in reply.nodes if n.hostname.startswith("sim-")}

    def tasks(self, history: bool = False) -> list:  # type: ignore[type-arg]
        request = cpb.ListTasksRequest(service="web", include_history=history)
        return list(self.manager.control().ListTasks(request, timeout=10).tasks)

    def running(self) -> list:  # type: ignore[type-arg]
        """The running tasks, if there is exactly one per slot (a failed one stays listed)."""
        running = [t for t in self.tasks() if t.state == "running"]
        slots = {t.slot for t in running}
        return running if len(running) == len(slots) == REPLICAS else []


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("sim")
    (root / "m1").mkdir()
    manager = Manager(root / "m1", start_args=["--heartbeat-period", "2s"], schedule_on_manager=False)
    sim: SimProcess | None = None
    try:
        manager.start()
        extra = ["--start-delay", "20ms", "--fail-rate", FAIL_RATE, "--label", "rack=sim", "--seed", "15"]
        extra += ["--log-format", "json", "--log-level", "info"]  # ADR 62
        sim = SimProcess(manager, root, NODES, *extra)
        yield Rig(manager, sim)
    finally:
        if sim is not None:
            sim.stop()
        manager.stop()


def test_every_simulated_node_joins_and_is_ready(rig: Rig) -> None:
    def ready() -> bool:
        assert rig.sim.status()["nodes"] <= NODES
        nodes = rig.nodes()
        return len(nodes) == NODES and all(n.status == "ready" for n in nodes.values())

    wait_for(ready, timeout=60, interval=0.5, message="20 ready simulated nodes")
    listed = rig.manager.cli_json("node", "ls")
    assert isinstance(listed, list)
    sims = [n for n in listed if n["hostname"].startswith("sim-")]
    assert sorted(n["hostname"] for n in sims) == [f"sim-{i:04d}" for i in range(NODES)]
    assert all(n["status"] == "ready" and n["labels"] == {"rack": "sim"} for n in sims)
    # The simulated overlay: each node got its own subnet from the managers' plan.
    subnets = [n.overlay_subnet for n in rig.nodes().values()]
    assert all(subnets) and len(set(subnets)) == NODES
    # Each node holds its own certificate, made by the real join.
    assert len({p.read_bytes() for p in rig.sim.data_dir.glob("nodes/*/certs/cert.pem")}) == NODES
    # The process names itself, and its JSON log lines say which simulated node each is about.
    title = Path(f"/proc/{rig.sim.process.pid}/cmdline").read_bytes().rstrip(b"\0")
    assert title == f"warren: sim {NODES} nodes".encode()
    records = [json.loads(line) for line in rig.sim.log().splitlines() if line.strip()]
    node_ids = {json.loads(p.read_text())["node_id"] for p in rig.sim.data_dir.glob("nodes/*/node.json")}
    assert len(node_ids) == NODES
    assert any(r["component"] == "agent.session" and r.get("node") in node_ids for r in records)


def test_a_service_runs_on_them_and_failed_starts_are_rescheduled(rig: Rig) -> None:
    created = rig.manager.cli(
        "service", "create", "web", "--image", "busybox", "--replicas", str(REPLICAS), "--restart-delay", "0s", "-d"
    )
    assert created.returncode == 0, created.stderr

    tasks = wait_for(rig.running, timeout=90, interval=0.5, message="100 running tasks, one per slot")
    by_id = {n.id: n for n in rig.nodes().values()}
    assert {t.node_id for t in tasks} <= set(by_id)
    assert len({t.node_id for t in tasks}) == NODES  # spread over every simulated node
    assert sorted(t.slot for t in tasks) == list(range(1, REPLICAS + 1))
    # A 10 % failure rate over 100+ starts: failed tasks are kept as history, replaced by others.
    failed = [t for t in rig.tasks(history=True) if t.state == "failed"]
    assert failed, "no start failed at a 10% fail rate"
    assert all(START_FAILURE in t.error for t in failed)
    assert {t.slot for t in failed} <= {t.slot for t in tasks}
    # The simulator's own account agrees, and says what its collector cost (#15).
    status = wait_for(
        lambda: (s := rig.sim.status())["tasks"].get("running") == REPLICAS and s,
        timeout=30,
        interval=0.5,
        message="the simulator counting every task running",
    )
    assert status["running"] == REPLICAS and status["failed_starts"] >= len(failed)
    assert len(status["gc_seconds"]) == 3 and all(0 <= s < status["cpu_seconds"] for s in status["gc_seconds"])
    assert status["gc_seconds"][0] > 0  # 100+ tasks' sessions and controllers allocate


def test_the_heartbeat_period_is_changed_at_run_time(rig: Rig) -> None:
    """`cluster update --heartbeat-period` (ADR 52): the agents take it up, and no node is marked
    down while they move from the old pace to the faster one."""
    bad = rig.manager.cli("cluster", "update", "--heartbeat-period", "10ms")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "100ms" in bad.stderr, bad.stderr
    updated = rig.manager.cli("cluster", "update", "--heartbeat-period", "1s")
    assert updated.returncode == 0, updated.stderr
    assert "every 1s" in updated.stdout
    info = rig.manager.control().GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=10)
    assert info.heartbeat_period == 1.0
    # Every node stays ready for longer than the old down timeout (3 x 2 s).
    deadline = time.monotonic() + 6.5
    while time.monotonic() < deadline:
        assert all(n.status == "ready" for n in rig.nodes().values())
        time.sleep(0.5)


def test_killed_nodes_are_marked_down_and_their_tasks_run_elsewhere(rig: Rig) -> None:
    """Nodes killed together are found down up to a heartbeat period apart: none is given a task
    after the kill, not even the tasks of another killed node found down first (ADR 68)."""
    killed_at = time.time()
    killed = rig.manager.cli("sim", "--kill", str(KILLED), "--data-dir", str(rig.sim.data_dir))
    assert killed.returncode == 0, killed.stderr
    names = [line.split()[0] for line in killed.stdout.splitlines()]
    assert len(names) == KILLED and all(n.startswith("sim-") for n in names)

    def down() -> bool:
        nodes = rig.nodes()
        return all(nodes[n].status == "down" for n in names)

    wait_for(down, timeout=30, interval=0.5, message="the killed nodes marked down")
    dead = {rig.nodes()[n].id for n in names}

    def moved() -> bool:
        running = rig.running()
        return bool(running) and all(t.node_id not in dead for t in running)

    wait_for(moved, timeout=60, interval=0.5, message="every task running on a live node")
    wait_for(
        lambda: all(n.status == "ready" for h, n in rig.nodes().items() if h not in names),
        timeout=30,
        message="every other node ready",
    )
    status = rig.sim.status()
    assert (status["live"], sorted(status["killed"])) == (NODES - KILLED, sorted(names))
    request = cpb.StreamEventsRequest(since=killed_at, until=time.time() + 1)
    events = list(rig.manager.control().StreamEvents(request, timeout=30))
    orphaned = [e for e in events if e.action == "orphaned" and e.attributes["node_id"] in dead]
    given = [e.actor_name for e in events if e.action == "assigned" and e.attributes.get("node_id") in dead]
    assert orphaned and not given, f"tasks given to killed nodes after the kill: {given}"
