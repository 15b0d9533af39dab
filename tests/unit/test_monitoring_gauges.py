"""The per-node, per-service and certificate gauges the alert rules and the dashboard read (#16,
ADR 61): what they report for a known state, read through the collectors as Prometheus would."""

from __future__ import annotations

import contextlib
import datetime as dt
import wsgiref.util
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from warren import pki
from warren.agent import metrics as agent_metrics
from warren.agent.nodemetrics import NodeCollector
from warren.manager import metrics
from warren.manager.metrics import StateCollector
from warren.manager.ports import RaftStatus
from warren.model import (
    Availability,
    ClusterInfo,
    Node,
    NodeRole,
    NodeStatus,
    RolloutState,
    Service,
    ServiceMode,
    ServiceSpec,
    Task,
    TaskState,
    UpdateStatus,
)
from warren.state import ClusterState, Put

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(collector: object) -> Samples:
    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    samples: Samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _raft() -> RaftStatus:
    return RaftStatus("leader", "", 3, 10, 10, True, {}, log_entries=7, log_resident_bytes=700)


def _state() -> ClusterState:
    state = ClusterState()
    web = ServiceSpec(name="web", image="busybox", replicas=3)
    agent = ServiceSpec(name="agent", image="busybox", mode=ServiceMode.GLOBAL)
    rolled = UpdateStatus(state=RolloutState.ROLLBACK_COMPLETED, started_at=1.0, from_version=2, to_version=1)
    state.apply(
        [
            Put("node", Node(id="n1", hostname="h1", status=NodeStatus.READY)),
            Put("node", Node(id="n2", hostname="h2", role=NodeRole.MANAGER, availability=Availability.DRAIN)),
            Put("service", Service(id="s1", spec=web, update_status=rolled)),
            Put("service", Service(id="s2", spec=agent)),
            Put("task", Task("t1", "s1", "web", 1, web, 1, state=TaskState.RUNNING, node_id="n1")),
            Put("task", Task("t2", "s1", "web", 2, web, 1, state=TaskState.FAILED, node_id="n1")),
            Put("task", Task("t3", "s2", "agent", 0, agent, 1, state=TaskState.STARTING, node_id="n1")),
            Put("task", Task("t4", "s2", "agent", 0, agent, 1, TaskState.SHUTDOWN, TaskState.RUNNING, "n2")),
        ]
    )
    return state


def _collector(state: ClusterState, cert_path: Path | None = None) -> StateCollector:
    @contextlib.contextmanager
    def read() -> Iterator[ClusterState]:
        yield state

    return StateCollector(read, _raft, cert_path=cert_path)


def test_each_node_reports_whether_it_is_ready_with_its_role_and_availability() -> None:
    samples = _scrape(_collector(_state()))
    labels = (("availability", "active"), ("hostname", "h1"), ("node", "n1"), ("role", "worker"))
    assert samples[("warren_node_ready", labels)] == 1
    labels = (("availability", "drain"), ("hostname", "h2"), ("node", "n2"), ("role", "manager"))
    assert samples[("warren_node_ready", labels)] == 0  # status unknown is not ready


def test_each_service_reports_desired_and_running_tasks_as_service_ls_counts_them() -> None:
    samples = _scrape(_collector(_state()))
    assert samples[("warren_service_desired_tasks", (("mode", "replicated"), ("service", "web")))] == 3
    assert samples[("warren_service_running_tasks", (("service", "web"),))] == 1
    # global: one live task wanted (t3); t4 is shut down, and starting is not running
    assert samples[("warren_service_desired_tasks", (("mode", "global"), ("service", "agent")))] == 1
    assert samples[("warren_service_running_tasks", (("service", "agent"),))] == 0


def test_each_service_reports_one_rollout_state_and_none_before_its_first_update() -> None:
    samples = _scrape(_collector(_state()))
    states = {dict(labels)["service"]: dict(labels)["state"] for (name, labels) in samples if "rollout" in name}
    assert states == {"web": "rollback_completed", "agent": "none"}


def test_the_manager_reports_when_the_ca_and_its_own_certificate_expire(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.create("c")
    state = _state()
    state.apply([Put("cluster", _cluster(ca.cert_pem))])
    cert, _key = ca.issue_keypair("n1", pki.ROLE_MANAGER, validity_days=10)
    (tmp_path / "cert.pem").write_bytes(cert)
    samples = _scrape(_collector(state, tmp_path / "cert.pem"))
    now = dt.datetime.now(dt.UTC).timestamp()
    own = samples[("warren_certificate_not_after_seconds", (("kind", "node"),))]
    assert abs(own - (now + 10 * 86400)) < 120
    assert samples[("warren_certificate_not_after_seconds", (("kind", "ca"),))] > now + 3000 * 86400


def test_a_missing_certificate_gives_no_sample_rather_than_a_wrong_one(tmp_path: Path) -> None:
    samples = _scrape(_collector(_state(), tmp_path / "absent.pem"))
    assert not [key for key in samples if key[0] == "warren_certificate_not_after_seconds"]


def test_the_agent_reports_its_data_dir_space_and_its_certificate(tmp_path: Path) -> None:
    collector = NodeCollector(tmp_path)
    samples = _scrape(collector)
    assert 0 < samples[("warren_agent_data_dir_free_bytes", ())] <= samples[("warren_agent_data_dir_size_bytes", ())]
    assert ("warren_certificate_not_after_seconds", (("kind", "node"),)) not in samples  # not joined yet
    ca = pki.CertificateAuthority.create("c")
    cert, _key = ca.issue_keypair("n1", pki.ROLE_WORKER, validity_days=5)
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "cert.pem").write_bytes(cert)
    not_after = _scrape(collector)[("warren_certificate_not_after_seconds", (("kind", "node"),))]
    assert abs(not_after - (dt.datetime.now(dt.UTC).timestamp() + 5 * 86400)) < 120


def _cluster(ca_pem: bytes) -> ClusterInfo:
    return ClusterInfo(
        id="c",
        created_at=0.0,
        ca_cert_pem=ca_pem.decode(),
        ca_key_pem="",
        worker_token_secret="",
        manager_token_secret="",
    )


def test_the_state_lock_is_held_only_to_take_references() -> None:
    """Writes wait on the store's lock: the collector takes references to the (frozen) objects
    under it and counts after releasing it. At 100,000 tasks, counting under the lock held it for
    0.14 s a scrape before the per-service gauges, 0.4 s with them; references take about 1 ms."""
    locked = False
    read_while_locked: list[str] = []

    class Watched:
        """A task that records each field read while the lock is held."""

        def __init__(self, task: Task) -> None:
            self._task = task

        def __getattr__(self, name: str) -> object:
            if locked:
                read_while_locked.append(name)
            return getattr(self._task, name)

    state = _state()
    state.tasks = {task_id: Watched(task) for task_id, task in state.tasks.items()}  # type: ignore[misc]

    @contextlib.contextmanager
    def read() -> Iterator[ClusterState]:
        nonlocal locked
        locked = True
        try:
            yield state
        finally:
            locked = False

    samples = _scrape(StateCollector(read, _raft))
    assert read_while_locked == []
    assert samples[("warren_service_running_tasks", (("service", "web"),))] == 1  # counted, after the lock
    assert samples[("warren_tasks", (("state", "running"),))] == 2  # t4 too: running, though to be shut down


def test_the_raft_log_reports_its_entries_and_the_bytes_it_holds_in_memory() -> None:
    samples = _scrape(_collector(_state()))
    assert samples[("warren_raft_log_entries", ())] == 7
    assert samples[("warren_raft_log_resident_bytes", ())] == 700


def test_a_scrape_restricted_to_one_name_finds_the_collectors_families(tmp_path: Path) -> None:
    """`/metrics?name[]=NAME` (the scale benchmark reads the leader's running tasks so, #15):
    the families read at scrape time are found by name, on the manager's registry and on an
    agent's, as the registered metrics are."""
    state = _state()
    collector = _collector(state)
    metrics.REGISTRY.register(collector)
    try:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": "name[]=warren_tasks"}
        wsgiref.util.setup_testing_defaults(environ)
        page = b"".join(metrics._app(None)(environ, lambda status, headers: None)).decode()
    finally:
        metrics.REGISTRY.unregister(collector)
    families = list(text_string_to_metric_families(page))
    assert [f.name for f in families] == ["warren_tasks"]
    running = [s.value for s in families[0].samples if s.labels == {"state": "running"}]
    assert running == [sum(1 for t in state.tasks.values() if t.state == TaskState.RUNNING)]

    agent = agent_metrics.node_registry(tmp_path)
    restricted = generate_latest(agent.restricted_registry(["warren_agent_data_dir_free_bytes"])).decode()
    assert [f.name for f in text_string_to_metric_families(restricted)] == ["warren_agent_data_dir_free_bytes"]
