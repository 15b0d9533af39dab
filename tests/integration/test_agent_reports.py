"""What an agent reports is input too: task status text and its node description are bounded,
so that one worker cannot make `service ps`, `node ls` or another node's session too large."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.integration.harness import Manager
from tests.integration.test_security_and_dispatcher import ScriptedWorker, _issue
from tests.waiting import wait_for
from warren import pki
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import dispatcher_pb2_grpc
from warren.api.v1 import types_pb2 as pb

pytestmark = pytest.mark.integration


def _two_tasks_pushed(manager: Manager, worker: ScriptedWorker, service: str, hostname: str) -> None:
    """Create `service` with two replicas on the scripted worker, and wait until it holds both."""
    spec = pb.ServiceSpec(name=service, image="busybox", replicas=2, constraints=[f"node.hostname=={hostname}"])
    manager.control().CreateService(cpb.CreateServiceRequest(spec=spec), timeout=10)
    wait_for(lambda: len(worker.tasks) == 2, message="two tasks pushed to the worker")


def test_task_status_text_is_truncated_and_the_report_kept(manager: Manager, tmp_path: Path) -> None:
    creds = _issue(manager, tmp_path / "worker", "reporter1", pki.ROLE_WORKER)
    worker = ScriptedWorker(manager, creds, "reporter")
    try:
        _two_tasks_pushed(manager, worker, "web", "reporter")
        for task_id in worker.tasks:  # 3 MiB each: one request fits the 4 MiB limit, both would not
            status = dpb.TaskStatus(task_id=task_id, state="running", message="m" * (3 << 20), error="e\n" * 10)
            request = dpb.UpdateTaskStatusRequest(session_id=worker.session_id, updates=[status])
            worker.stub.UpdateTaskStatus(request, timeout=10)
        # `service ps` still fits the CLI's message limit, and the reports were kept, cut short.
        tasks = manager.control().ListTasks(cpb.ListTasksRequest(service="web"), timeout=10).tasks
        assert sorted(t.state for t in tasks) == ["running", "running"]
        assert all(t.message.startswith("mmm") and len(t.message) <= 4096 for t in tasks)
        assert all(t.error == "e\n" * 10 for t in tasks)  # short text is kept as it was
    finally:
        worker.close()


@pytest.mark.parametrize(
    "status",
    [
        dpb.TaskStatus(task_id="t", state="running", health="bogus"),
        dpb.TaskStatus(task_id="t", state="running", runtime_id="r" * 1000),
        dpb.TaskStatus(task_id="t", state="running", runtime_id="abc\x1b[2J"),
    ],
    ids=["health", "long-runtime-id", "escape-runtime-id"],
)
@pytest.mark.parametrize("transport", ["call", "stream"])
def test_task_status_fields_with_fixed_forms_are_checked(
    manager: Manager, tmp_path: Path, status: dpb.TaskStatus, transport: str
) -> None:
    creds = _issue(manager, tmp_path / "worker", f"reporter2{transport}", pki.ROLE_WORKER)
    worker = ScriptedWorker(manager, creds, "reporter")
    try:
        request = dpb.UpdateTaskStatusRequest(session_id=worker.session_id, updates=[status])
        with pytest.raises(grpc.RpcError) as err:
            if transport == "call":
                worker.stub.UpdateTaskStatus(request, timeout=10)
            else:  # the batch ends its stream with the same status
                list(worker.stub.StatusReports(iter([request]), timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "running" not in {t.state for t in manager.control().ListTasks(cpb.ListTasksRequest()).tasks}
    finally:
        worker.close()


def test_each_batch_on_the_report_stream_is_answered_once_the_state_holds_it(manager: Manager, tmp_path: Path) -> None:
    """ADR 79: batches on one StatusReports stream, answered in turn, each after its commit:
    the manager's next read shows it."""
    creds = _issue(manager, tmp_path / "worker", "reporter3", pki.ROLE_WORKER)
    worker = ScriptedWorker(manager, creds, "streamer")
    try:
        _two_tasks_pushed(manager, worker, "streamed", "streamer")
        first, second = sorted(worker.tasks)
        answered = threading.Event()

        def batches() -> Iterator[dpb.UpdateTaskStatusRequest]:
            for task_id in (first, second):
                status = dpb.TaskStatus(task_id=task_id, state="running", runtime_id=f"r-{task_id}")
                yield dpb.UpdateTaskStatusRequest(session_id=worker.session_id, updates=[status])
                answered.wait(10)  # the second batch goes once the first is answered

        def states() -> dict[str, str]:
            listed = manager.control().ListTasks(cpb.ListTasksRequest(service="streamed"), timeout=10).tasks
            return {t.id: t.state for t in listed}

        seen = []
        for _ in worker.stub.StatusReports(batches(), timeout=20):
            seen.append(states())
            answered.set()
        assert len(seen) == 2
        assert seen[0][first] == "running" and seen[0][second] != "running"
        assert seen[1] == {first: "running", second: "running"}
    finally:
        worker.close()


@pytest.mark.parametrize(
    "description",
    [
        dpb.NodeDescription(hostname="w", os="x" * 100_000),
        dpb.NodeDescription(hostname="w", arch="x86_64\x1b[31m"),
        dpb.NodeDescription(hostname="w", addr="10.0.0.1\n"),
        dpb.NodeDescription(hostname="w", addr=" "),
    ],
    ids=["long-os", "escape-arch", "newline-addr", "space-addr"],
)
def test_node_description_text_is_checked(manager: Manager, tmp_path: Path, description: dpb.NodeDescription) -> None:
    creds = _issue(manager, tmp_path / "worker", "describer", pki.ROLE_WORKER)
    stub = dispatcher_pb2_grpc.DispatcherStub(manager.channel(creds))
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Session(dpb.SessionRequest(description=description), timeout=5))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert all(n["hostname"] != "w" for n in manager.cli_json("node", "ls"))


def test_each_beat_on_the_heartbeat_stream_is_answered_and_a_stranger_session_ends_it(
    manager: Manager, tmp_path: Path
) -> None:
    """ADR 79: beats on one Heartbeats stream, each answered as a Heartbeat call is (the period
    to beat at); a beat naming a session that is not the caller's ends the stream NOT_FOUND, as
    the call would be refused."""
    creds = _issue(manager, tmp_path / "worker", "beater", pki.ROLE_WORKER)
    worker = ScriptedWorker(manager, creds, "beater")
    try:
        beats = [dpb.HeartbeatRequest(session_id=worker.session_id) for _ in range(3)]
        answers = list(worker.stub.Heartbeats(iter(beats), timeout=20))
        assert len(answers) == 3 and all(a.period > 0 for a in answers)
        nodes = {n["hostname"]: n for n in manager.cli_json("node", "ls")}
        assert nodes["beater"]["status"] == "ready"

        strangers = iter(
            [dpb.HeartbeatRequest(session_id=worker.session_id), dpb.HeartbeatRequest(session_id="x" * 25)]
        )
        answered = []
        with pytest.raises(grpc.RpcError) as err:
            for answer in worker.stub.Heartbeats(strangers, timeout=20):
                answered.append(answer)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert len(answered) == 1  # the beat before it was answered
    finally:
        worker.close()
