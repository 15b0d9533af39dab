"""A leader failover in the middle of a rebalance changes nothing (ADR 36): three real managers,
two exec-runtime agents that know all three. The service's 4 tasks start on the first worker
while the second is paused; the second becomes active, `service rebalance` starts, and the leader
is killed with SIGKILL once the first move runs. The new leader continues the same rebalance from
the replicated state: it completes with exactly the 2 moves planned, no slot ever holds more than
two live tasks (sampled every 0.1 s throughout), and the spread ends 2 and 2.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.fixtures.exec_cluster import remove_exec_leftovers
from tests.integration.harness import Manager, manager_trio
from tests.integration.test_agent_exec import Processes
from tests.integration.test_rebalance import Worker
from tests.waiting import wait_for
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import control_pb2_grpc
from warren.api.v1 import types_pb2 as pb

pytestmark = pytest.mark.integration


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[list[Manager]]:
    with manager_trio(tmp_path) as managers:
        yield managers


def _channel(manager: Manager) -> grpc.Channel:
    """To `manager`, with the admin credentials the founder wrote (joined managers hold none)."""
    founder = manager.founder or manager
    return manager.channel(founder.data_dir / "admin")


def _tasks(manager: Manager) -> list[pb.Task] | None:
    """The service's tasks as `manager` reads them; None while it cannot answer."""
    try:
        with _channel(manager) as channel:
            request = cpb.ListTasksRequest(service="web", include_history=True)
            return list(control_pb2_grpc.ControlStub(channel).ListTasks(request, timeout=5).tasks)
    except grpc.RpcError:
        return None


def _status(manager: Manager) -> pb.UpdateStatus | None:
    try:
        with _channel(manager) as channel:
            stub = control_pb2_grpc.ControlStub(channel)
            return stub.GetService(cpb.GetServiceRequest(service="web"), timeout=5).update_status
    except grpc.RpcError:
        return None


def _leader(managers: list[Manager]) -> Manager:
    def find() -> Manager | None:
        for manager in managers:
            try:
                with _channel(manager) as channel:
                    info = control_pb2_grpc.ControlStub(channel).GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=5)
            except grpc.RpcError:
                continue
            if info.raft_state == "leader":
                return manager
        return None

    return wait_for(find, timeout=30, message="a leader")


def test_a_leader_failover_mid_rebalance_changes_nothing(trio: list[Manager], tmp_path: Path) -> None:
    procs = Processes(f"warren-rebalance-failover-{time.time_ns()}")
    addrs = [m.addr for m in trio]
    workers = [Worker(tmp_path / "workers", trio[0], name, addrs) for name in ("fo-a", "fo-b")]
    violations: list[str] = []
    stop = threading.Event()
    try:
        for worker in workers:
            worker.start()
        with _channel(trio[0]) as channel:
            control = control_pb2_grpc.ControlStub(channel)
            wait_for(lambda: all(w.ready(control) for w in workers), timeout=30, message="both workers ready")
        paused = trio[0].cli("node", "update", "--availability", "pause", "fo-b")
        assert paused.returncode == 0, paused.stderr
        created = trio[0].cli(
            *("service", "create", "web", "--image", "exec", "--replicas", "4", "--update-monitor", "2s"),
            *("--constraint", "node.role==worker", "--", "sh", "-c", "sleep 600; exit 0", procs.marker.decode()),
        )
        assert created.returncode == 0, created.stderr
        assert trio[0].cli("node", "update", "--availability", "active", "fo-b").returncode == 0

        def watch() -> None:  # every live manager's view, every 0.1 s: never three tasks in a slot
            while not stop.is_set():
                for manager in trio:
                    tasks = _tasks(manager) or []
                    live = Counter(t.slot for t in tasks if t.desired_state == "running" and t.state != "failed")
                    violations.extend(f"slot {s}: {n} live tasks" for s, n in live.items() if n > 2)
                time.sleep(0.1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        leader = _leader(trio)
        started = leader.cli("service", "rebalance", "web", "--detach")
        assert (started.returncode, started.stdout.strip()) == (0, "web: moving 2 of 4 tasks"), started.stderr
        wait_for(
            lambda: any(t.relocates and t.state == "running" for t in _tasks(leader) or []),
            message="the first move to run",
        )
        before = _status(leader)
        leader.kill()
        assert before is not None and before.state == "rebalancing", before  # killed mid-rebalance
        survivors = [m for m in trio if m is not leader]
        new_leader = _leader(survivors)
        done = wait_for(
            lambda: (s := _status(new_leader)) is not None and s.state != "rebalancing" and s,
            timeout=60,
            message="the rebalance to end",
        )
        assert (done.state, done.message) == ("completed", "rebalanced: 2 tasks moved")
        assert done.started_at == before.started_at, "the same rebalance went on"
        tasks = _tasks(new_leader) or []
        assert sum(1 for t in tasks if t.relocates) == 2, "no move was made twice"
        running = [t for t in tasks if t.state == "running" and t.desired_state == "running"]
        assert sorted(Counter(t.node_id for t in running).values()) == [2, 2]
        stop.set()
        watcher.join(timeout=10)
        assert not violations, violations[:5]
    finally:
        stop.set()
        for worker in workers:
            worker.kill()
        procs.kill_all()
        for worker in workers:
            remove_exec_leftovers(worker.data_dir)
            print(f"---- {worker.node_id} log ----\n" + worker.log()[-3000:])
