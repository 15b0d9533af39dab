"""mTLS roles on a real manager, and the dispatcher protocol driven by a scripted worker."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from tests.integration.harness import Manager
from tests.waiting import wait_for
from warren import pki, tls
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import control_pb2_grpc, dispatcher_pb2_grpc
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import types_pb2 as pb

pytestmark = pytest.mark.integration


def _issue(manager: Manager, directory: Path, node_id: str, role: str) -> Path:
    """Credentials signed by the cluster's own CA, as the join flow will issue them."""
    ca = manager.authority()
    cert, key = ca.issue_keypair(node_id, role)
    tls.save_credentials(directory, ca.cert_pem, cert, key)
    return directory


def test_worker_certificate_is_refused_on_the_control_api(shared_manager: Manager, tmp_path: Path) -> None:
    worker = _issue(shared_manager, tmp_path / "worker", "workernode1", pki.ROLE_WORKER)
    with pytest.raises(grpc.RpcError) as err:
        shared_manager.control(worker).ListServices(cpb.ListServicesRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "worker certificate may not call" in err.value.details()
    # The admin certificate is accepted on the same port.
    shared_manager.control().ListServices(cpb.ListServicesRequest(), timeout=5)


def test_admin_certificate_is_refused_on_the_dispatcher(shared_manager: Manager) -> None:
    dispatcher = dispatcher_pb2_grpc.DispatcherStub(shared_manager.channel())
    with pytest.raises(grpc.RpcError) as err:
        dispatcher.Heartbeat(dpb.HeartbeatRequest(session_id="x"), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_certificate_from_another_cluster_is_refused(shared_manager: Manager, tmp_path: Path) -> None:
    other = pki.CertificateAuthority.create("othercluster")
    cert, key = other.issue_keypair("intruder", pki.ROLE_ADMIN)
    ca_pem = (shared_manager.data_dir / "certs" / "ca.pem").read_bytes()
    channel = grpc.secure_channel(
        shared_manager.addr, tls.channel_credentials(ca_pem, cert, key), options=tls.channel_options()
    )
    with pytest.raises(grpc.RpcError) as err:
        control_pb2_grpc.ControlStub(channel).ListServices(cpb.ListServicesRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails


class ScriptedWorker:
    """Speaks the dispatcher protocol the way the agent will: session, heartbeats, reports."""

    def __init__(self, manager: Manager, creds: Path, hostname: str) -> None:
        self.stub = dispatcher_pb2_grpc.DispatcherStub(manager.channel(creds))
        self.messages: list[tuple[float, dpb.AssignmentsMessage]] = []
        self.session_id = ""
        self.tasks: dict[str, pb.Task] = {}
        self._stream = self.stub.Session(
            dpb.SessionRequest(
                description=dpb.NodeDescription(
                    hostname=hostname,
                    resources=pb.Resources(nano_cpus=4_000_000_000, memory_bytes=8 << 30),
                    labels={"zone": "b"},
                )
            )
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for(lambda: self.session_id, message="the COMPLETE assignments message")

    def _read(self) -> None:
        try:
            for message in self._stream:
                self.messages.append((time.monotonic(), message))
                self.session_id = message.session_id
                for task in message.updated:
                    self.tasks[task.id] = task
                for task_id in message.removed:
                    self.tasks.pop(task_id, None)
        except grpc.RpcError:
            pass

    def report(self, task_id: str, state: str) -> None:
        self.stub.UpdateTaskStatus(
            dpb.UpdateTaskStatusRequest(
                session_id=self.session_id, updates=[dpb.TaskStatus(task_id=task_id, state=state)]
            ),
            timeout=5,
        )

    def close(self) -> None:
        self._stream.cancel()


def test_scripted_worker_receives_pushed_assignments_and_reports_status(manager: Manager, tmp_path: Path) -> None:
    creds = _issue(manager, tmp_path / "worker", "workernode1", pki.ROLE_WORKER)
    worker = ScriptedWorker(manager, creds, "worker-1")
    try:
        first = worker.messages[0][1]
        assert first.type == dpb.AssignmentsMessage.COMPLETE
        assert manager.addr in first.managers

        nodes = {n["hostname"]: n for n in manager.cli_json("node", "ls")}
        assert nodes["worker-1"]["status"] == "ready"
        assert nodes["worker-1"]["role"] == "worker"

        sent = time.monotonic()
        result = manager.cli(
            "service",
            "create",
            "web",
            "--image",
            "busybox",
            "--replicas",
            "2",
            "--constraint",
            "node.labels.zone==b",
            "--detach",
        )
        assert result.returncode == 0, result.stderr
        wait_for(lambda: len(worker.tasks) == 2, message="two tasks pushed to the worker")
        pushed_at = next(t for t, m in worker.messages if m.updated)
        assert pushed_at - sent < 5.0  # pushed by the stream, not discovered by polling

        # Incremental messages chain by version with no gap.
        current = first.version
        for _, message in worker.messages[1:]:
            assert message.type == dpb.AssignmentsMessage.INCREMENTAL
            assert (message.applies_to, message.version) == (current, current + 1)
            current = message.version

        task = next(iter(worker.tasks.values()))
        assert task.spec.image == "busybox"
        worker.report(task.id, "running")
        ps = {t["id"]: t for t in manager.cli_json("service", "ps", "web")}
        assert ps[task.id]["state"] == "running"

        # A worker cannot move its task backwards, nor report on a task it does not hold.
        worker.report(task.id, "starting")
        assert {t["id"]: t for t in manager.cli_json("service", "ps", "web")}[task.id]["state"] == "running"

        # Scaling down removes a task from the worker's set, pushed on the stream.
        assert manager.cli("service", "scale", "web=1", "--detach").returncode == 0
        wait_for(
            lambda: any(t.desired_state == "shutdown" for t in worker.tasks.values()) or len(worker.tasks) < 2,
            message="scale-down pushed to the worker",
        )
    finally:
        worker.close()


def test_dispatcher_validates_input(shared_manager: Manager, tmp_path: Path) -> None:
    creds = _issue(shared_manager, tmp_path / "worker", "workernode2", pki.ROLE_WORKER)
    stub = dispatcher_pb2_grpc.DispatcherStub(shared_manager.channel(creds))
    with pytest.raises(grpc.RpcError) as err:
        stub.Heartbeat(dpb.HeartbeatRequest(session_id="nonexistent"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Session(dpb.SessionRequest(description=dpb.NodeDescription(hostname="bad host!")), timeout=5))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for description in (
        dpb.NodeDescription(hostname="w", resources=pb.Resources(nano_cpus=-5)),
        dpb.NodeDescription(hostname="w", labels={"warren.reserved": "x"}),
        dpb.NodeDescription(hostname="w", labels={"big": "x" * 100_000}),
    ):
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Session(dpb.SessionRequest(description=description), timeout=5))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, description
    assert all(n["hostname"] != "w" for n in shared_manager.cli_json("node", "ls"))
    worker = ScriptedWorker(shared_manager, creds, "worker-2")
    try:
        with pytest.raises(grpc.RpcError) as err:
            worker.report("sometask", "no-such-state")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            worker.report("sometask", "pending")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        worker.close()


def test_standard_health_service_answers_serving(shared_manager: Manager, tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    worker = _issue(shared_manager, tmp_path / "worker", "healthprobe", pki.ROLE_WORKER)
    for creds in (None, worker):  # admins and nodes may both probe it
        stub = health_pb2_grpc.HealthStub(shared_manager.channel(creds))
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_new_session_supersedes_the_old_one(shared_manager: Manager, tmp_path: Path) -> None:
    creds = _issue(shared_manager, tmp_path / "worker", "workertwice", pki.ROLE_WORKER)
    first = ScriptedWorker(shared_manager, creds, "worker-twice")
    second = ScriptedWorker(shared_manager, creds, "worker-twice")
    try:
        first._reader.join(timeout=5)  # the old stream ends on its own
        assert not first._reader.is_alive()
        with pytest.raises(grpc.RpcError) as err:
            first.stub.Heartbeat(dpb.HeartbeatRequest(session_id=first.session_id), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        second.stub.Heartbeat(dpb.HeartbeatRequest(session_id=second.session_id), timeout=5)
    finally:
        first.close()
        second.close()
