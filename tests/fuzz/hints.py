"""Plausible values for the request fields, so that fuzzed requests reach past the first check:
the services, nodes, session and tasks the target really has, and valid specs."""

from __future__ import annotations

import re

from hypothesis import strategies as st

from tests.fuzz.target import SESSION_HOST, WORKER_HOST, Target
from tests.fuzz.values import Hints
from warren.validate import MAX_REPLICAS

TASK_STATES = ["accepted", "preparing", "starting", "running", "complete", "failed", "rejected", "shutdown"]
LIST_STATES = ["new", "pending", "assigned", *TASK_STATES]
WG_KEY = "x" * 42 + "A="  # 32 bytes in base64
_PORT_LIKE = re.compile(r":\s*\d")


def _not_many_replicas(value: int) -> bool:
    return value <= 3 or value > MAX_REPLICAS


def _dynamic(value: object) -> st.SearchStrategy[str]:
    """A value read when drawn (the live session id changes when the session is reopened)."""
    return st.builds(value)  # type: ignore[arg-type]


def build(target: Target) -> Hints:
    ids = target.ids
    worker = target.worker
    assert worker is not None
    services = st.sampled_from(["fuzz-target", ids["service"], ids["service"][:6], "fz1", "missing"])
    # Refs that a fuzzed call may act on. RemoveNode never names the live workers (it would end
    # every later dispatcher call), only the manager (refused) and a node that is there to go.
    nodes = st.sampled_from([WORKER_HOST, ids["worker"], ids["manager_node"], ids["session"], ids["victim"], "gone"])
    removable = st.sampled_from([ids["manager_node"], ids["victim"], "fuzz-v", "gone"])
    task_id = st.integers(0, 7).map(worker.task_id)
    plausible = {
        # Control
        "GetJoinTokenRequest.role": st.sampled_from(["worker", "manager"]),
        "ListNodesRequest.role": st.sampled_from(["", "manager", "worker"]),
        "ListNodesRequest.status": st.sampled_from(["", "ready", "down", "unknown"]),
        "node": nodes,
        "RemoveNodeRequest.node": removable,
        "availability": st.sampled_from(["", "active", "pause", "drain"]),
        "UpdateNodeRequest.role": st.sampled_from(["", "", "manager", "worker"]),
        "labels_add": st.sampled_from(["zone", "disk", "fuzz.key"]),
        "labels_rm": st.sampled_from(["zone", "disk", "absent"]),
        "service": services,
        "ListTasksRequest.service": st.sampled_from(["", "fuzz-target", "missing"]),
        "ListTasksRequest.node": st.sampled_from(["", WORKER_HOST, "gone"]),
        "ListTasksRequest.states": st.sampled_from(LIST_STATES),
        "ScaleServiceRequest.replicas": st.integers(0, 3),
        "UpdateServiceRequest.version": st.integers(0, 3),
        "wg_key_rotation_period": st.sampled_from([0.0, 3600.0]),
        "ServiceLogsRequest.follow": st.just(False),
        "ServiceLogsRequest.tail": st.integers(-1, 5),
        "ServiceLogsRequest.since": st.just(0.0),
        "RegistryAuth.host": st.sampled_from(["registry.local:5000", "docker.io", "bad host", ""]),
        "RegistryAuth.username": st.sampled_from(["alice", "", "a:b"]),
        "RegistryAuth.password": st.sampled_from(["s3cret", ""]),
        "RegistryLogoutRequest.host": st.sampled_from(["registry.local:5000", "missing.example", "bad/host"]),
        # ServiceSpec and its parts
        "ServiceSpec.name": st.sampled_from(["fuzz-target", "fz1", "fz2", "fz3"]),
        "ServiceSpec.image": st.sampled_from(["busybox", "registry.local:5000/app:1.0"]),
        "ServiceSpec.command": st.sampled_from(["sleep", "3600"]),
        "ServiceSpec.args": st.sampled_from(["-c", "echo hi"]),
        "ServiceSpec.env": st.sampled_from(["PATH", "MODE"]),
        "ServiceSpec.mode": st.sampled_from(["replicated", "global"]),
        "ServiceSpec.replicas": st.integers(0, 2),
        "ServiceSpec.constraints": st.sampled_from(["node.role==worker", f"node.hostname!={SESSION_HOST}"]),
        "ServiceSpec.labels": st.sampled_from(["tier", "team"]),
        "ServiceSpec.stop_grace_period": st.floats(0, 30),
        "ServiceSpec.stop_signal": st.sampled_from(["", "SIGTERM", "TERM", "15", "quit"]),
        "Resources.nano_cpus": st.sampled_from([0, 0, 500_000_000]),
        "Resources.memory_bytes": st.sampled_from([0, 0, 64 << 20]),
        "RestartPolicy.condition": st.sampled_from(["", "none", "on-failure", "any"]),
        "RestartPolicy.delay": st.floats(0, 5),
        "RestartPolicy.max_attempts": st.integers(0, 3),
        "RestartPolicy.window": st.floats(0, 60),
        "HealthCheck.kind": st.sampled_from(["cmd", "http", "tcp"]),
        "HealthCheck.command": st.just("true"),
        "HealthCheck.target": st.sampled_from(["127.0.0.1:80", "http://127.0.0.1:80/health"]),
        "HealthCheck.interval": st.floats(1, 10),
        "HealthCheck.timeout": st.floats(1, 5),
        "HealthCheck.retries": st.integers(1, 3),
        "HealthCheck.start_period": st.floats(0, 5),
        "PortConfig.target": st.integers(1, 65535),
        "PortConfig.published": st.sampled_from([0, 0, 18080, 18081]),
        "PortConfig.protocol": st.sampled_from(["tcp", "udp"]),
        "PortConfig.mode": st.sampled_from(["ingress", "host"]),
        "Mount.type": st.sampled_from(["volume", "bind", "tmpfs"]),
        "Mount.source": st.sampled_from(["", "fz-vol", "/tmp"]),
        "Mount.target": st.sampled_from(["/data", "/tmp"]),
        # Volumes (ADR 40)
        "CreateVolumeRequest.name": st.sampled_from(["fz-vol", "fz-vol2"]),
        "CreateVolumeRequest.driver": st.sampled_from(["", "local"]),
        "volume": st.sampled_from(["fz-vol", "fz-vol2", "missing"]),
        # Networks (#14, ADR 47)
        "CreateNetworkRequest.name": st.sampled_from(["fz-net", "fz-net2", "default", "bad name"]),
        "CreateNetworkRequest.subnet": st.sampled_from(["", "172.31.0.0/24", "10.200.0.0/24", "junk"]),
        "network": st.sampled_from(["fz-net", "fz-net2", "default", "missing"]),
        "NetworkAttachment.network": st.sampled_from(["fz-net", "default", "missing"]),
        # Dispatcher
        "session_id": _dynamic(lambda: worker.session_id),
        "task_id": task_id,
        "TaskStatus.state": st.sampled_from(TASK_STATES),
        "TaskStatus.health": st.sampled_from(["", "healthy", "unhealthy", "starting"]),
        "timestamp": st.floats(1.7e9, 1.8e9),
        "NodeDescription.hostname": st.just(SESSION_HOST),
        "NodeDescription.addr": st.sampled_from(["", "127.0.0.1:1"]),
        "NodeDescription.labels": st.sampled_from(["zone", "disk"]),
        "NodeDescription.wg_public_key": st.sampled_from(["", WG_KEY]),
        "NodeDescription.wg_endpoint": st.sampled_from(["", "127.0.0.1:51820"]),
        "NodeDescription.overlay": st.just(False),
        "pending_wg_key": st.sampled_from(["", WG_KEY]),
        "pending_wg_key_epoch": st.integers(0, 3),
        "subscription_id": st.sampled_from(["", "sub"]),
        "LogMessage.data": st.binary(max_size=16),
        "LogMessage.stream": st.sampled_from(["", "stdout", "stderr"]),
        # Managers, NodeCertificates, NodeCA
        "raft_addr": st.just(target.manager_raft_addr),
        "api_addr": st.sampled_from(["127.0.0.1:1", "[::1]:2"]),
        "join_addr": st.sampled_from(["", "127.0.0.1:3"]),
        "AddManagerRequest.hostname": st.just("fuzz-m"),
        "csr_pem": st.just(target.csr_pem),
        "RenewRequest.role": st.sampled_from(["", "manager", "worker"]),
        "JoinRequest.hostname": st.just("fuzz-j"),
        "proof": st.sampled_from(["", "00" * 32]),
    }
    return Hints(
        plausible=plausible,
        # An AddManager whose Raft address is new and well formed really adds a member that will
        # never answer, and the test cluster loses quorum: hostile addresses stay malformed.
        hostile_filters={
            "AddManagerRequest.raft_addr": lambda value: not _PORT_LIKE.search(value),
            # A valid but large replica count is a load test, not bad input: the scheduling of
            # thousands of tasks would keep the cluster busy for the rest of the run.
            "ScaleServiceRequest.replicas": _not_many_replicas,
            "ServiceSpec.replicas": _not_many_replicas,
        },
    )
