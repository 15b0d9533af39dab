"""Prometheus metrics of a manager. State gauges are computed at scrape time from the store, so
no code path has to remember to keep a counter in step with the state."""

from __future__ import annotations

import json
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from grpc_health.v1 import health_pb2
from prometheus_client import Counter, Gauge, Histogram, ProcessCollector, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from warren.api.v1 import ca_pb2, control_pb2, dispatcher_pb2, managers_pb2
from warren.certinfo import PkiError, validity
from warren.manager.capacity import StoreCapacity
from warren.manager.discovery import SD_PATH
from warren.model import Node, NodeStatus, Service, Task, TaskState
from warren.promregistry import new_registry
from warren.state import replica_counts

REGISTRY = new_registry()  # `?name[]=` finds the collectors' families too
# process_resident_memory_bytes, process_cpu_seconds_total, ...: a manager's own cost, per role,
# without access to its host (#15 reads them through Prometheus at scale).
ProcessCollector(registry=REGISTRY)

API_REQUESTS = Counter(
    "warren_api_requests_total",
    "gRPC requests served, by method and status code",
    ["method", "code"],
    registry=REGISTRY,
)
API_LATENCY = Histogram(
    "warren_api_request_duration_seconds",
    "gRPC request latency, by method",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
# A status batch's time on the leader (ADR 79): most come on a session's report stream, whose
# own request duration is the session's length; "call" counts agents that fell back to calls.
STATUS_BATCHES = Histogram(
    "warren_status_batch_duration_seconds",
    "Time to take one batch of task status reports, from arrival to its commit, by transport",
    ["transport"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
# What the first message of each new session did with each service's endpoint (ADR 81): "kept"
# if the agent held it as it is (after a leader change, nearly all), "sent" otherwise.
SESSION_ENDPOINTS = Counter(
    "warren_session_endpoints_total",
    "Services' endpoints in the complete sets of new sessions, by whether the agent kept or was sent them",
    ["how"],
    registry=REGISTRY,
)
SCHEDULING_PASS = Histogram(
    "warren_scheduler_pass_duration_seconds",
    "Time to compute one reconcile/scheduling pass",
    # Up to 30 s: at 10,000 tasks on a loaded machine passes took over 2.5 s (#15), past the
    # Raft election timeout, and a quantile past the last bucket only says "more than that".
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
# How late the Raft thread runs (ADR 52): the time between two of its ticks. Its poller waits at
# most 50 ms (ADR 82; a message or a proposal ends the wait sooner), and a gap also holds the
# tick's own work (applying entries, writing the journal); the rest is waiting for a core or the
# GIL. Gaps near the election timeout elect a leader for no failure.
RAFT_TICK_GAP = Histogram(
    "warren_raft_tick_gap_seconds",
    "Time between two ticks of the Raft thread",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5),
    registry=REGISTRY,
)
# The Raft thread's own work, which holds up its ticks (heartbeats, replication) as much as the
# CPU or the GIL does: applying committed entries (a slice per tick, which stops after the entry
# that passes 0.1 s: one large entry takes longer) and writing grouped appends to the journal
# with their fsyncs. etcd reports the same two (backend commit, WAL fsync) for the same reason.
RAFT_APPLY = Histogram(
    "warren_raft_apply_seconds",
    "Time the Raft thread spent applying committed entries in one tick",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
    registry=REGISTRY,
)
JOURNAL_WRITE = Histogram(
    "warren_raft_journal_write_seconds",
    "Time to write one group of appended Raft entries to the journal, fsyncs included",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
    registry=REGISTRY,
)
# Where a proposal's time goes (#15): waiting for a free entry slot on this manager ("queued",
# one sample per proposal), from its entry's proposal until the Raft thread applied it here
# ("replicated", one per entry: its proposals share it), and from then until the event loop
# answered it ("answered", one per entry), which is the loop's own lag.
RAFT_PROPOSAL = Histogram(
    "warren_raft_proposal_seconds",
    "Time proposals made on this manager spent in each stage (queued: per proposal; replicated, answered: per entry)",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)
# This manager's own deafness (ADR 69): its event loop's stalls, which move node heartbeat
# deadlines, and the overdue nodes the leader's down check does not mark down in a mass silence.
MANAGER_STALLS = Histogram(
    "warren_manager_stall_seconds",
    "Times this manager's event loop did not run (heartbeats were heard late), by length",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
    registry=REGISTRY,
)
NODES_PRESUMED_UNREACHABLE = Gauge(
    "warren_nodes_presumed_unreachable",
    "Overdue nodes not marked down because most nodes went silent at once (leader only)",
    registry=REGISTRY,
)
SCHEDULING_CHANGES = Counter(
    "warren_scheduler_changes_total",
    "Task creations, updates and deletions proposed by scheduling passes",
    ["kind"],
    registry=REGISTRY,
)


def declare_series() -> None:
    """Create the labelled series this manager reports, at zero, before any is observed: each
    method it serves (Warren's services and gRPC's health) with status OK, and every value of
    the bounded labels.

    Prometheus's advice for labelled metrics: a series born between two scrapes has no earlier
    sample, so increase() and rate() over a window that holds its birth miss what it counted.
    """
    for module in (ca_pb2, control_pb2, dispatcher_pb2, managers_pb2, health_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                _request_series(f"/{service.full_name}/{method.name}", "OK")
    for stage in ("queued", "replicated", "answered"):
        RAFT_PROPOSAL.labels(stage)
    for transport in ("stream", "call"):
        STATUS_BATCHES.labels(transport)
    for how in ("kept", "sent"):
        SESSION_ENDPOINTS.labels(how)
    for kind in ("created", "updated", "deleted"):
        SCHEDULING_CHANGES.labels(kind)


# Each method's and status's series, looked up once: `labels()` takes a lock and checks its values
# at every call. Only the guard's methods come here, so the keys are bounded.
_REQUEST_SERIES: dict[tuple[str, str], tuple[Any, Any]] = {}


def observe_request(method: str, code: str, seconds: float) -> None:
    series = _REQUEST_SERIES.get((method, code)) or _request_series(method, code)
    series[0].inc()
    series[1].observe(seconds)


def _request_series(method: str, code: str) -> tuple[Any, Any]:
    series = _REQUEST_SERIES[method, code] = (API_REQUESTS.labels(method, code), API_LATENCY.labels(method))
    return series


class StateCollector(Collector):
    """Nodes, services, tasks and Raft figures, read when Prometheus scrapes."""

    def __init__(
        self,
        read_state: Callable,
        raft_status: Callable,
        store_capacity: StoreCapacity | None = None,
        cert_path: Path | None = None,
    ) -> None:
        self._read_state = read_state
        self._raft_status = raft_status
        self._store_capacity = store_capacity  # a capacity.StoreCapacity
        self._cert_path = cert_path  # this manager's own certificate (certs/cert.pem)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        # Writes wait on this lock: take references only, and count once it is released (the
        # objects are frozen). At 100,000 tasks, counting under it held it for 0.14 s a scrape.
        with self._read_state() as state:
            node_list = list(state.nodes.values())
            service_list = list(state.services.values())
            task_list = list(state.tasks.values())
            ca_pem = state.cluster.ca_cert_pem if state.cluster is not None else ""
        nodes = Tally(n.status.value for n in node_list)
        tasks = Tally(t.state for t in task_list)
        services = len(service_list)
        g = GaugeMetricFamily("warren_nodes", "Nodes by status", labels=["status"])
        for status in NodeStatus:
            g.add_metric([status.value], nodes.get(status.value, 0))
        yield g
        yield GaugeMetricFamily("warren_services", "Services", value=services)
        g = GaugeMetricFamily("warren_tasks", "Tasks by observed state", labels=["state"])
        for task_state in TaskState:
            g.add_metric([task_state.label], tasks.get(task_state, 0))
        yield g
        raft = self._raft_status()
        g = GaugeMetricFamily("warren_raft_role", "1 for this manager's current Raft role", labels=["role"])
        for role in ("leader", "follower", "candidate"):
            g.add_metric([role], 1 if raft.state == role else 0)
        yield g
        yield GaugeMetricFamily("warren_raft_term", "Current Raft term", value=raft.term)
        yield GaugeMetricFamily("warren_raft_commit_index", "Raft commit index", value=raft.commit_index)
        yield GaugeMetricFamily(
            "warren_raft_applied_index", "Last Raft index applied to the store", value=raft.applied_index
        )
        yield GaugeMetricFamily(
            "warren_raft_log_entries", "Entries in the Raft log since its last compaction", value=raft.log_entries
        )
        yield GaugeMetricFamily(
            "warren_raft_log_resident_bytes",
            "Bytes of the Raft log's commands held in memory (the newest applied ones, and every unapplied one)",
            value=raft.log_resident_bytes,
        )
        g = GaugeMetricFamily(
            "warren_raft_peer_connected", "1 while this manager has a Raft connection to the member", labels=["peer"]
        )
        for peer, connected in sorted(raft.peers.items()):
            g.add_metric([peer], 1 if connected else 0)
        yield g
        if self._store_capacity is not None:
            yield from _store_gauges(self._store_capacity)
        # Per node and per service, for the alerts and the dashboard (#16): bounded by the
        # cluster's size, not by its history.
        yield from _node_gauges(node_list)
        yield from _service_gauges(service_list, task_list)
        yield _certificate_gauge({"ca": ca_pem, "node": _read_text(self._cert_path)})


def _node_gauges(nodes: list[Node]) -> Iterator[GaugeMetricFamily]:
    g = GaugeMetricFamily(
        "warren_node_ready",
        "1 while the node is ready (heartbeating), 0 while down or unknown",
        labels=["node", "hostname", "role", "availability"],
    )
    for node in nodes:
        ready = 1 if node.status == NodeStatus.READY else 0
        g.add_metric([node.id, node.hostname, node.role.value, node.availability.value], ready)
    yield g


def _service_gauges(services: list[Service], tasks: list[Task]) -> Iterator[GaugeMetricFamily]:
    desired = GaugeMetricFamily(
        "warren_service_desired_tasks", "Tasks the service wants running", labels=["service", "mode"]
    )
    running = GaugeMetricFamily(
        "warren_service_running_tasks", "Tasks of the service running (and meant to)", labels=["service"]
    )
    rollout = GaugeMetricFamily(
        "warren_service_rollout_state",
        'The state of the service\'s last rollout (ADR 33): 1 on its current state, "none" before any update',
        labels=["service", "state"],
    )
    counts = replica_counts(services, tasks)
    for service in services:
        name = service.spec.name
        want, have = counts[service.id]
        desired.add_metric([name, service.spec.mode.value], want)
        running.add_metric([name], have)
        status = service.update_status
        rollout.add_metric([name, status.state.value if status is not None else "none"], 1)
    yield desired
    yield running
    yield rollout


def _read_text(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text()
    except OSError:
        return ""


def _certificate_gauge(certs: dict[str, str]) -> GaugeMetricFamily:
    """notAfter of each PEM certificate given by kind; an absent or unreadable one is left out."""
    g = GaugeMetricFamily(
        "warren_certificate_not_after_seconds",
        "Unix time at which the certificate expires: the cluster CA's, and this node's own",
        labels=["kind"],
    )
    for kind, pem in certs.items():
        try:
            not_after = validity(pem)[1] if pem else None
        except PkiError:
            continue
        if not_after is not None:
            g.add_metric([kind], not_after.timestamp())
    return g


def _store_gauges(capacity: StoreCapacity) -> Iterator[GaugeMetricFamily]:
    """The LMDB map's use (ADR 22): writes are refused before used reaches the map size."""
    usage = capacity.usage()
    yield GaugeMetricFamily(
        "warren_state_store_map_size_bytes", "Size of the state store's LMDB map", value=usage.map_size
    )
    yield GaugeMetricFamily(
        "warren_state_store_used_bytes",
        "Bytes of the LMDB map in use by the Raft journal and the state",
        value=usage.used_bytes,
    )
    yield GaugeMetricFamily(
        "warren_state_store_file_bytes", "High-water mark of the state store's data file", value=usage.file_bytes
    )
    yield GaugeMetricFamily(
        "warren_state_store_disk_free_bytes",
        "Free bytes on the filesystem holding the state store",
        value=usage.disk_free_bytes,
    )
    yield GaugeMetricFamily(
        "warren_state_store_writes_refused",
        "1 while this manager refuses writes because its map or disk is nearly full",
        value=1 if capacity.refuses_writes(usage) else 0,
    )
    yield GaugeMetricFamily(
        "warren_state_store_apply_waiting",
        "1 while a committed Raft entry waits for space to be applied",
        value=1 if capacity.stalled is not None else 0,
    )


class Endpoint:
    """A running /metrics endpoint; `close` frees its port and its collector."""

    def __init__(self, server: Any, collector: StateCollector) -> None:
        self._server = server
        self._collector = collector

    def close(self) -> None:
        try:
            self._server.shutdown()
            self._server.server_close()
        finally:  # a collector left registered would refuse the next start in this process
            REGISTRY.unregister(self._collector)


def serve(
    addr: str, collector: StateCollector, sd_groups: Callable[[], list[dict[str, object]]] | None = None
) -> Endpoint:
    """Start the /metrics HTTP endpoint on `addr` (host:port) in a daemon thread; with
    `sd_groups`, Prometheus service discovery (ADR 60) is served at SD_PATH beside it."""
    declare_series()
    host, _, port = addr.rpartition(":")
    server = make_server(
        host.strip("[]") or "0.0.0.0", int(port), _app(sd_groups), ThreadingWSGIServer, handler_class=_Quiet
    )
    try:
        # Once the port is ours: a failed start leaves no collector behind. Registering collects
        # once, for the names (`new_registry`): if that fails, the port is let go.
        REGISTRY.register(collector)
    except BaseException:
        server.server_close()
        raise
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return Endpoint(server, collector)


def _app(sd_groups: Callable[[], list[dict[str, object]]] | None) -> Callable[..., Iterable[bytes]]:
    metrics_app = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if sd_groups is not None and environ.get("PATH_INFO") == SD_PATH:
            body = json.dumps(sd_groups()).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return metrics_app(environ, start_response)

    return app


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """One line per scrape would drown the manager's log."""
