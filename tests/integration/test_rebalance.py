"""Rebalancing end to end (ADR 36) on a real manager and real exec-runtime agents, driven by the
CLI: a node joins after a service was placed, `service rebalance` moves only the tasks needed
(start-first, the others untouched), a second call has nothing to move, and with
`cluster update --auto-rebalance true` a node that joins receives its share by itself. Bad input
gets one line and exit 2.

The agents run in the test machine's own namespace, off the overlay: the tasks are processes
that need no network. Zero failed requests while tasks move needs the overlay and a load:
test_rebalance_load.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.fixtures.exec_cluster import remove_exec_leftovers
from tests.integration.harness import Manager
from tests.integration.test_agent_exec import Processes
from tests.waiting import wait_for
from warren import pki, tls
from warren.agent import settings as agent_settings
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import control_pb2_grpc
from warren.api.v1 import types_pb2 as pb

pytestmark = pytest.mark.integration

MONITOR = ["--update-monitor", "1s"]


class Worker:
    """An exec-runtime agent with its own node id and hostname (`python -m warren.agent.daemon`)."""

    def __init__(self, root: Path, manager: Manager, node_id: str, managers: list[str] | None = None) -> None:
        self.root = root / node_id
        self.manager = manager  # signs its certificate
        self.managers = managers or [manager.addr]
        self.node_id = node_id
        self.data_dir = self.root / "data"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True)
        ca = self.manager.authority()
        cert, key = ca.issue_keypair(self.node_id, pki.ROLE_WORKER)
        tls.save_credentials(self.data_dir / "certs", ca.cert_pem, cert, key)
        (self.data_dir / "node.json").write_text(json.dumps({"node_id": self.node_id, "managers": self.managers}))
        agent_settings.save(self.data_dir, agent_settings.AgentSettings(runtime="exec", wireguard="off"))
        log = open(self.root / "agent.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "warren.agent.daemon", "--data-dir", str(self.data_dir)),
                *(arg for addr in self.managers for arg in ("--manager", addr)),
                *("--runtime", "exec", "--hostname", self.node_id),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.manager.env(),
            cwd=self.root,
        )

    def ready(self, control: control_pb2_grpc.ControlStub) -> bool:
        nodes = control.ListNodes(cpb.ListNodesRequest(), timeout=10).nodes
        return any(n.id == self.node_id and n.status == "ready" for n in nodes)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=20)

    def log(self) -> str:
        path = self.root / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Cluster:
    def __init__(self, root: Path) -> None:
        (root / "manager").mkdir()
        self.root = root
        self.manager = Manager(root / "manager", start_args=["--heartbeat-period", "1s"])
        self.procs = Processes(f"warren-rebalance-{time.time_ns()}")
        self.workers: list[Worker] = []
        self._channel: grpc.Channel | None = None

    def control(self) -> control_pb2_grpc.ControlStub:
        """Reads over one gRPC channel (a CLI process per poll is slow on a loaded machine)."""
        if self._channel is None:
            self._channel = self.manager.channel()
        return control_pb2_grpc.ControlStub(self._channel)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def add_worker(self, node_id: str) -> Worker:
        worker = Worker(self.root, self.manager, node_id)
        self.workers.append(worker)
        worker.start()
        wait_for(lambda: worker.ready(self.control()), timeout=30, message=f"node {node_id} to be ready")
        return worker

    def sleeper(self) -> list[str]:
        """Tasks on the workers only, running until stopped, carrying the test's marker."""
        return ["--constraint", "node.role==worker", "--", "sh", "-c", "sleep 600; exit 0", self.procs.marker.decode()]

    def running(self, name: str) -> list[pb.Task]:
        tasks = self.control().ListTasks(cpb.ListTasksRequest(service=name), timeout=10).tasks
        return [t for t in tasks if t.state == "running" and t.desired_state == "running"]

    def spread(self, name: str) -> list[int]:
        return sorted(Counter(t.node_id for t in self.running(name)).values(), reverse=True)

    def status(self, name: str) -> pb.UpdateStatus:
        return self.control().GetService(cpb.GetServiceRequest(service=name), timeout=10).update_status


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("rebalance"))
    try:
        cluster.manager.start()
        cluster.add_worker("rebal-a")
        yield cluster
    finally:
        cluster.close()
        for worker in cluster.workers:
            worker.kill()
        cluster.manager.stop()
        cluster.procs.kill_all()
        for worker in cluster.workers:
            remove_exec_leftovers(worker.data_dir)
        print("---- manager log ----\n" + cluster.manager.log()[-6000:])
        for worker in cluster.workers:
            print(f"---- {worker.node_id} log ----\n" + worker.log()[-4000:])


def test_rebalance_moves_only_what_it_must_and_auto_rebalance_does_it_by_itself(cluster: Cluster) -> None:
    manager = cluster.manager
    created = manager.cli(
        "service", "create", "web", "--image", "exec", "--replicas", "4", *MONITOR, *cluster.sleeper()
    )
    assert created.returncode == 0, created.stderr
    assert cluster.spread("web") == [4]
    before = {t.id for t in cluster.running("web")}

    cluster.add_worker("rebal-b")
    assert cluster.spread("web") == [4], "the scheduler never moves a placed task by itself"
    moved = manager.cli("service", "rebalance", "web")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert moved.stdout.strip() == "web: moving 2 of 4 tasks"
    assert "web: rebalanced: 2 tasks moved" in moved.stderr
    assert cluster.spread("web") == [2, 2]
    after = {t.id for t in cluster.running("web")}
    assert len(before & after) == 2, "the two tasks that stayed were not touched"
    assert all(t.spec_version == 1 for t in cluster.running("web")), "no new version"
    wait_for(lambda: len(cluster.procs.pids()) == 4, message="the moved tasks' old processes to stop")
    status = cluster.status("web")
    assert (status.state, status.message) == ("completed", "rebalanced: 2 tasks moved")

    again = manager.cli("service", "rebalance", "web")
    assert again.returncode == 0, again.stderr
    assert (
        again.stdout.strip() == "web: nothing to move: 4 tasks on 2 nodes (2, 2), as even as the eligible nodes allow"
    )
    assert cluster.status("web").started_at == status.started_at, "nothing was written"

    on = manager.cli("cluster", "update", "--auto-rebalance", "true")
    assert (on.returncode, on.stdout.strip()) == (0, "Auto-rebalance: on"), on.stderr
    info = manager.cli("cluster", "info")
    assert any(line.split() == ["Auto-rebalance:", "on"] for line in info.stdout.splitlines()), info.stdout
    cluster.add_worker("rebal-c")  # 2, 2, 0: off by two, so one task moves
    wait_for(lambda: cluster.spread("web") == [2, 1, 1], timeout=30, message="web spread over the three nodes")
    wait_for(
        lambda: cluster.status("web").message == "rebalanced: 1 task moved",
        message="the automatic rebalance to complete",
    )
    wait_for(lambda: len(cluster.procs.pids()) == 4, message="the moved task's old process to stop")
    off = manager.cli("cluster", "update", "--auto-rebalance", "false")
    assert (off.returncode, off.stdout.strip()) == (0, "Auto-rebalance: off"), off.stderr


def test_bad_rebalance_input_gets_one_line_and_exit_2(cluster: Cluster) -> None:
    manager = cluster.manager
    created = manager.cli("service", "create", "agentd", "--image", "exec", "--mode", "global", *cluster.sleeper())
    assert created.returncode == 0, created.stderr
    refused = manager.cli("service", "rebalance", "agentd")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr == (
        "warren: service agentd is global: it runs one task on each eligible node, none to move\n"
    )
    bad = manager.cli("cluster", "update", "--auto-rebalance", "maybe")
    assert bad.returncode == 2
    assert "expected true or false (got 'maybe')" in bad.stderr and "Traceback" not in bad.stderr
    missing = manager.cli("service", "rebalance", "nope")
    assert missing.returncode == 3 and missing.stderr.count("\n") == 1, missing.stderr
    assert manager.cli("service", "rm", "agentd").returncode == 0
