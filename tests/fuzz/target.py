"""The fuzzer's target: a real manager process, callers of every role, and the checks made
after each request (status code, message, liveness, unchanged state, no traceback)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.fuzz import oracle
from tests.integration.harness import Manager
from tests.integration.test_security_and_dispatcher import _issue
from tests.waiting import wait_for
from warren import pki, tls
from warren.api.v1 import ca_pb2, control_pb2, control_pb2_grpc, dispatcher_pb2, dispatcher_pb2_grpc, managers_pb2
from warren.api.v1 import control_pb2 as cpb
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import types_pb2 as pb

OK = grpc.StatusCode.OK
# What a refusal may say. UNKNOWN and INTERNAL are bugs; UNAVAILABLE and DEADLINE_EXCEEDED on a
# healthy single-manager cluster mean the manager stopped serving.
PROPER_CODES = frozenset(
    {
        OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.ABORTED,
    }
)
MAX_DETAILS = 1024  # characters in a status message: errors echo input truncated
CALL_TIMEOUT = 15.0  # generous: up to 7 other engineers' tests share two cores
STREAM_WAIT = 1.5  # a streaming call still open this long without a refusal is accepted
OBSERVER_LIMIT = 256 << 20  # the fuzzer's own reads must see state that breaks the CLI's
WORKER_HOST = "fuzz-a"
SESSION_HOST = "fuzz-b"
TARGET_SPEC = pb.ServiceSpec(
    name="fuzz-target", image="busybox", replicas=2, constraints=[f"node.hostname=={WORKER_HOST}"]
)
REPAIRABLE_LABELS = 5000  # removing more is quadratic today (issue #10, item 3): leave them


@dataclass(frozen=True)
class Method:
    service: str
    name: str
    request: Descriptor
    streaming: bool
    caller: str  # "admin" | "worker" (live session) | "session" (opens sessions) | "manager" | "join"

    @property
    def path(self) -> str:
        return f"/warren.api.v1.{self.service}/{self.name}"

    def __str__(self) -> str:
        return f"{self.service}.{self.name}"


def all_methods() -> list[Method]:
    """Every method of every service a caller can reach, read from the descriptors so that a
    new method is fuzzed without anyone remembering to add it."""
    callers = {
        "Control": "admin",
        "Dispatcher": "worker",
        "Managers": "manager",
        "NodeCertificates": "worker",
        "NodeCA": "join",
    }
    methods = []
    for module in (control_pb2, dispatcher_pb2, managers_pb2, ca_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                caller = "session" if (service.name, m.name) == ("Dispatcher", "Session") else callers[service.name]
                methods.append(Method(service.name, m.name, m.input_type, m.server_streaming, caller))
    return methods


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    still_open: bool = False  # a stream that was serving when we left it

    @property
    def refused(self) -> bool:
        return self.code != OK


@dataclass
class Snapshot:
    """What the state looks like through the API: the applied index, and the parts of the state
    a request could change that the background work (scheduling, heartbeats) never does."""

    applied_index: int
    view: dict[str, object]
    violations: frozenset[str]


class LiveWorker:
    """A worker with an open session that receives the tasks of the `fuzz-target` service, so
    that status reports, heartbeats and log calls can name a real session and real tasks."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = dispatcher_pb2_grpc.DispatcherStub(channel)
        self.session_id = ""
        self.task_ids: list[str] = []
        self._stream: grpc.Future | None = None
        self._lock = threading.Lock()
        self.open()

    def open(self) -> None:
        description = dpb.NodeDescription(
            hostname=WORKER_HOST, resources=pb.Resources(nano_cpus=4_000_000_000, memory_bytes=8 << 30)
        )
        self._stream = self._stub.Session(dpb.SessionRequest(description=description))
        first = next(self._stream)
        self.session_id = first.session_id
        self._remember(first)
        threading.Thread(target=self._read, args=(self._stream,), daemon=True).start()

    def _remember(self, message: dpb.AssignmentsMessage) -> None:
        with self._lock:
            known = [t for t in self.task_ids if t not in set(message.removed)]
            self.task_ids = known + [t.id for t in message.updated if t.id not in known]

    def _read(self, stream: grpc.Future) -> None:
        try:
            for message in stream:
                self._remember(message)
        except grpc.RpcError:
            pass

    def task_id(self, index: int) -> str:
        with self._lock:
            return self.task_ids[index % len(self.task_ids)] if self.task_ids else "no-task"

    def close(self) -> None:
        if self._stream is not None:
            self._stream.cancel()


class Target:
    """A manager and a channel per caller role. Not a dataclass: a failing example prints its
    arguments, and this repr keeps them short."""

    def __init__(self, manager: Manager, root: Path) -> None:
        self.manager = manager
        self.root = root
        self.channels: dict[str, grpc.Channel] = {}
        self.worker: LiveWorker | None = None
        self.ids: dict[str, str] = {}  # what the hints refer to: node and service ids
        self.csr_pem = ""

    def __repr__(self) -> str:
        return f"Target(manager at {self.manager.addr})"

    @property
    def manager_raft_addr(self) -> str:
        return f"127.0.0.1:{self.manager.raft_port}"

    # -- setup -----------------------------------------------------------------------------------
    def start(self) -> None:
        m = self.manager
        self.channels["admin"] = m.channel()
        self.channels["observer"] = grpc.secure_channel(
            m.addr,
            tls.channel_credentials(*tls.load_credentials(m.data_dir / "admin")),
            options=[*tls.channel_options(), ("grpc.max_receive_message_length", OBSERVER_LIMIT)],
        )
        for caller, node_id, role in (
            ("worker", "fuzzworker-a", pki.ROLE_WORKER),
            ("session", "fuzzworker-b", pki.ROLE_WORKER),
            ("victim", "fuzzworker-v", pki.ROLE_WORKER),
            ("manager", "fuzzmanager-m", pki.ROLE_MANAGER),
        ):
            self.channels[caller] = m.channel(_issue(m, self.root / caller, node_id, role))
            self.ids[caller] = node_id
        self.channels["join"] = grpc.insecure_channel(m.join_addr)
        self.ids["manager_node"] = m.node_id
        self._register("victim")  # a node that RemoveNode may really remove
        self.worker = LiveWorker(self.channels["worker"])
        control = control_pb2_grpc.ControlStub(self.channels["admin"])
        self.ids["service"] = control.CreateService(cpb.CreateServiceRequest(spec=TARGET_SPEC), timeout=CALL_TIMEOUT).id
        wait_for(lambda: len(self.worker.task_ids) >= 2, timeout=30, message="tasks pushed to the live worker")
        self.csr_pem = pki.make_csr(pki.generate_key()).decode()

    def _register(self, caller: str) -> None:
        """Open a session with a clean description and leave (a node registers on its session)."""
        hostname = {"session": SESSION_HOST, "victim": "fuzz-v"}[caller]
        session = dispatcher_pb2_grpc.DispatcherStub(self.channels[caller]).Session(
            dpb.SessionRequest(description=dpb.NodeDescription(hostname=hostname)), timeout=CALL_TIMEOUT
        )
        next(session)
        session.cancel()

    def repair(self, found: Iterable[oracle.Violation]) -> None:
        """Undo what an accepted bad request left in the state, so that replaying the request
        (hypothesis shrinks and reports by replaying) fails the same way again."""
        control = control_pb2_grpc.ControlStub(self.channels["observer"])
        for kind, item in sorted({(v.kind, v.id) for v in found}):
            if kind == "service" and item == self.ids["service"]:
                request = cpb.UpdateServiceRequest(service=item, spec=TARGET_SPEC)
                control.UpdateService(request, timeout=CALL_TIMEOUT)
            elif kind == "service":
                control.RemoveService(cpb.RemoveServiceRequest(service=item), timeout=CALL_TIMEOUT)
            else:
                node = control.GetNode(cpb.GetNodeRequest(node=item), timeout=CALL_TIMEOUT)
                if 0 < len(node.labels) <= REPAIRABLE_LABELS:
                    request = cpb.UpdateNodeRequest(node=item, labels_rm=list(node.labels))
                    control.UpdateNode(request, timeout=CALL_TIMEOUT)
                if item == self.ids["worker"] and self.worker is not None:
                    self.worker.close()
                    self.worker.open()
                elif item in (self.ids["session"], self.ids["victim"]):
                    self._register("session" if item == self.ids["session"] else "victim")

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
        for channel in self.channels.values():
            channel.close()

    # -- calls -----------------------------------------------------------------------------------
    def call(self, method: Method, payload: bytes) -> Outcome:
        """One request as raw bytes (a typed request is serialized by the caller), so that the
        same path sends malformed messages."""
        channel = self.channels[method.caller]
        if method.caller == "worker" and self.worker is not None:
            self._keep_session()
        try:
            if not method.streaming:
                channel.unary_unary(method.path)(payload, timeout=CALL_TIMEOUT)
                return Outcome(OK, "")
            stream = channel.unary_stream(method.path)(payload, timeout=STREAM_WAIT)
            try:
                next(stream)
            except StopIteration:
                return Outcome(OK, "")
            finally:
                stream.cancel()
            return Outcome(OK, "", still_open=True)
        except grpc.RpcError as exc:
            if method.streaming and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return Outcome(OK, "", still_open=True)
            return Outcome(exc.code(), exc.details() or "")

    def _keep_session(self) -> None:
        """Reopen the live worker's session if the manager ended it (a fuzzed call may legitimately
        do so, e.g. a drain or a promotion)."""
        heartbeat = dpb.HeartbeatRequest(session_id=self.worker.session_id)
        try:
            dispatcher_pb2_grpc.DispatcherStub(self.channels["worker"]).Heartbeat(heartbeat, timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                self.worker.close()
                self.worker.open()

    # -- observation -----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        control = control_pb2_grpc.ControlStub(self.channels["observer"])
        info = control.GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=CALL_TIMEOUT)
        nodes = control.ListNodes(cpb.ListNodesRequest(), timeout=CALL_TIMEOUT).nodes
        services = control.ListServices(cpb.ListServicesRequest(), timeout=CALL_TIMEOUT).services
        view: dict[str, object] = {
            "cluster": (info.id, info.wg_key_rotation_period, info.heartbeat_period),
            "nodes": sorted(
                (n.id, n.hostname, n.role, n.availability, n.desired_role, sorted(n.labels.items())) for n in nodes
            ),
            "services": sorted((s.id, s.version, s.spec.SerializeToString(deterministic=True)) for s in services),
        }
        return Snapshot(info.applied_index, view, frozenset(oracle.violations(nodes, services)))

    def full_view(self) -> dict[str, object]:
        """Everything the API shows of the state, tasks and join tokens included: what a refusal
        that committed a Raft entry must have left as it was (compared once the cluster is quiet,
        since scheduling changes tasks)."""
        control = control_pb2_grpc.ControlStub(self.channels["observer"])
        tasks = control.ListTasks(cpb.ListTasksRequest(include_history=True), timeout=CALL_TIMEOUT).tasks
        tokens = [
            control.GetJoinToken(cpb.GetJoinTokenRequest(role=role), timeout=CALL_TIMEOUT).token
            for role in ("worker", "manager")
        ]
        return {
            **self.snapshot().view,
            "tasks": sorted(t.SerializeToString(deterministic=True) for t in tasks),
            "tokens": tokens,
        }

    def settled_index(self, hold: float = 0.3, timeout: float = 15.0) -> int:
        """The applied index once it has held still for `hold` seconds: the orchestrator's work
        after an earlier request has landed."""
        deadline = time.monotonic() + timeout
        index = self.snapshot().applied_index
        while time.monotonic() < deadline:
            time.sleep(hold)
            now = self.snapshot().applied_index
            if now == index:
                return index
            index = now
        return index

    def assert_serving(self) -> None:
        """The manager answers the calls an operator makes first, with the CLI's message limits."""
        admin = self.channels["admin"]
        health = health_pb2_grpc.HealthStub(admin).Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
        assert health.status == health_pb2.HealthCheckResponse.SERVING, health
        control = control_pb2_grpc.ControlStub(admin)
        control.GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=CALL_TIMEOUT)
        control.ListServices(cpb.ListServicesRequest(), timeout=CALL_TIMEOUT)
        control.ListNodes(cpb.ListNodesRequest(), timeout=CALL_TIMEOUT)
        control.ListTasks(cpb.ListTasksRequest(), timeout=CALL_TIMEOUT)

    def log_size(self) -> int:
        path = self.manager.root / "manager.log"
        return path.stat().st_size if path.exists() else 0

    def log_since(self, offset: int) -> str:
        with open(self.manager.root / "manager.log", "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")


TRACEBACK = re.compile(r"^Traceback \(most recent call last\):$", re.MULTILINE)


def first_traceback(text: str, limit: int = 3000) -> str:
    match = TRACEBACK.search(text)
    return text[match.start() : match.start() + limit] if match else ""


_RUN = re.compile(r"(.)\1{15,}")


def describe(payload: object, limit: int = 600) -> str:
    """A request as a reproducer in a failure message: one line, runs of one character written
    as a count, cut at `limit` characters."""
    if isinstance(payload, Message):
        text = text_format.MessageToString(payload, as_one_line=True) or "(an empty message)"
    else:
        text = repr(payload)
    text = _RUN.sub(lambda run: f"<{run.group(1)!r} x {len(run.group(0))}>", text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class Shown:
    """A drawn request whose repr (what hypothesis prints of a failing example) stays short."""

    def __init__(self, request: Message) -> None:
        self.request = request

    def __repr__(self) -> str:
        return describe(self.request, 400)
