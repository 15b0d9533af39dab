"""Issue #10, item 2, on a real manager: a service spec beyond the bound is refused cleanly (CLI
exit 2, INVALID_ARGUMENT over the API); one at the bound with many replicas reaches a real exec
agent, whose session would fail if each task carried its spec; and a node whose sessions keep
failing is not ready, says why, gets nothing scheduled, and is ready again once a session works
(a scripted worker, speaking the dispatcher protocol)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.fixtures.exec_cluster import exec_cluster
from tests.integration.harness import Manager
from tests.integration.test_agent_exec import WORKER_ID, Agent, Processes
from tests.integration.test_security_and_dispatcher import _issue
from tests.waiting import wait_for
from warren import pki
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import dispatcher_pb2_grpc
from warren.api.v1 import types_pb2 as pb
from warren.validate import MAX_SPEC_BYTES

pytestmark = pytest.mark.integration

KIB = 1024
REPLICAS = 20  # x 250 KiB: about 5 MB of specs if every task carried its own (gRPC's default: 4 MiB)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Manager, Agent, Processes]]:
    with exec_cluster(tmp_path, "test") as parts:
        yield parts


def _env_flags(total: int) -> list[str]:
    """--env flags of 60 KiB values adding up to about `total` bytes."""
    flags = []
    for i in range(total // (60 * KIB)):
        flags += ["--env", f"V{i}={'x' * (60 * KIB)}"]
    return flags


def test_a_spec_beyond_the_bound_is_refused_cleanly(manager: Manager) -> None:
    # The spec from the issue (60 x 64 KiB of environment), over the API.
    spec = pb.ServiceSpec(
        name="big", image="busybox", mode="replicated", replicas=2, env={f"V{i}": "x" * (64 * KIB) for i in range(60)}
    )
    with pytest.raises(grpc.RpcError) as err:
        manager.control().CreateService(cpb.CreateServiceRequest(spec=spec), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the service spec is too large" in err.value.details()

    # From the CLI (its arguments alone are limited to 2 MiB by Linux): exit 2, one line.
    result = manager.cli("service", "create", "big", "--image", "busybox", "--detach", *_env_flags(1024 * KIB))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "the service spec is too large" in lines[0] and "256 KiB" in lines[0]
    assert "Traceback" not in result.stderr
    assert manager.cli_json("service", "ls") == []


def test_a_spec_at_the_bound_reaches_a_worker_running_many_replicas(
    cluster: tuple[Manager, Agent, Processes],
) -> None:
    manager, agent, procs = cluster
    wait_for(
        lambda: any(n["hostname"] == "exec-worker" and n["status"] == "ready" for n in manager.cli_json("node", "ls")),
        message="the worker to register",
    )
    env = _env_flags(MAX_SPEC_BYTES - 16 * KIB)  # 4 x 60 KiB: just under the bound
    created = manager.cli(
        "service",
        "create",
        "web",
        "--image",
        "exec",
        "--replicas",
        str(REPLICAS),
        "--constraint",
        "node.role==worker",
        "--detach",
        *env,
        "--",
        "sh",
        "-c",
        "sleep 1000; exit 0",
        procs.marker.decode(),
    )
    assert created.returncode == 0, created.stderr

    def running() -> int:
        result = manager.cli("service", "ps", "web", "--format", "json")
        assert result.returncode == 0, result.stderr
        tasks = json.loads(result.stdout)
        return sum(1 for t in tasks if t["state"] == "running" and t["node_id"] == WORKER_ID)

    wait_for(lambda: running() == REPLICAS and len(procs.pids()) == REPLICAS, timeout=60, message="every replica")
    # Each process got the whole environment.
    pid = min(procs.pids())
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert sum(1 for v in environ if v.startswith(b"V") and v.endswith(b"x" * (60 * KIB))) == len(env) // 2
    # The node stayed ready all along, and the agent's session never failed.
    nodes = {n["hostname"]: n for n in manager.cli_json("node", "ls")}
    assert nodes["exec-worker"]["status"] == "ready"
    assert "RESOURCE_EXHAUSTED" not in agent.log()
    # Reading the service back works too (`service ls` broke on the 4 MiB default in the issue).
    listed = manager.cli_json("service", "ls")
    assert [s["spec"]["name"] for s in listed] == ["web"]
    inspected = manager.cli("service", "inspect", "web")
    assert inspected.returncode == 0, inspected.stderr

    # Removing the service stops every replica.
    assert manager.cli("service", "rm", "web").returncode == 0
    wait_for(lambda: not procs.pids(), timeout=60, message="every replica stopped")


class FailingWorker:
    """A worker whose agent says its last sessions failed, then beats to show one works."""

    def __init__(self, manager: Manager, creds: Path) -> None:
        self.stub = dispatcher_pb2_grpc.DispatcherStub(manager.channel(creds))
        self.stream: grpc.Future | None = None

    def open(self, failed: int, why: str) -> dpb.AssignmentsMessage:
        self.close()
        request = dpb.SessionRequest(
            description=dpb.NodeDescription(
                hostname="n1", resources=pb.Resources(nano_cpus=4_000_000_000, memory_bytes=8 << 30)
            ),
            specs_by_reference=True,
            failed_sessions=failed,
            last_failure=why,
        )
        self.stream = self.stub.Session(request)
        return next(self.stream)  # type: ignore[call-overload]

    def close(self) -> None:
        if self.stream is not None:
            self.stream.cancel()


def test_a_node_whose_session_keeps_failing_is_not_ready_and_says_why(manager: Manager, tmp_path: Path) -> None:
    worker = FailingWorker(manager, _issue(manager, tmp_path / "worker", "failingnode1", pki.ROLE_WORKER))
    why = "RESOURCE_EXHAUSTED: Received message larger than max (7800000 vs. 4194304)"
    try:
        first = worker.open(2, why)

        def node() -> dict:
            return next(n for n in manager.cli_json("node", "ls") if n["hostname"] == "n1")

        assert node()["status"] == "unknown"
        assert node()["status_message"] == f"its session is failing: {why} (2 in a row)"
        table = manager.cli("node", "ls")
        row = next(line for line in table.stdout.splitlines() if " n1 " in line)
        assert "unknown" in row and row.endswith(f"its session is failing: {why} (2 in a row)")

        # Nothing is placed on it, and the pending task says why.
        created = manager.cli(
            "service", "create", "web", "--image", "busybox", "--constraint", "node.hostname==n1", "--detach"
        )
        assert created.returncode == 0, created.stderr

        def task() -> dict:
            tasks = manager.cli_json("service", "ps", "web")
            return tasks[0] if tasks else {}

        wait_for(lambda: task().get("message", "").startswith("no suitable node"), message="the task to stay pending")
        assert task()["state"] == "pending"
        assert f"node n1: its session is failing: {why}" in task()["message"]

        # A heartbeat shows this session works: the node is ready again and gets the task.
        worker.stub.Heartbeat(dpb.HeartbeatRequest(session_id=first.session_id), timeout=10)
        wait_for(lambda: node()["status"] == "ready" and not node()["status_message"], message="the node ready")
        wait_for(lambda: task().get("state") == "assigned", message="the task placed on the node")
    finally:
        worker.close()


def test_service_ls_holds_many_specs_at_the_bound(manager: Manager) -> None:
    """20 services at the bound: a 5 MB `service ls` reply, beyond gRPC's 4 MiB default."""
    env = {f"V{i}": "x" * (60 * KIB) for i in range(4)}
    control = manager.control()
    for i in range(20):
        spec = pb.ServiceSpec(name=f"big{i:02}", image="busybox", mode="replicated", replicas=0, env=env)
        control.CreateService(cpb.CreateServiceRequest(spec=spec), timeout=30)
    listed = manager.cli("service", "ls", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    services = json.loads(listed.stdout)
    assert len(services) == 20 and all(s["spec"]["env"] == env for s in services)
    assert len(listed.stdout) > 4 << 20
