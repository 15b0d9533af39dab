"""Optional Prometheus endpoint of the agent: tasks by local state, the session state, the
overlay (WireGuard peers with their handshake age and traffic, key epoch, VIPs), and each running
task's resources (`taskmetrics`, ADR 60).

Its own registry (the manager in the same process has its own). The gauges are refreshed by the
event loop once a second, so the HTTP thread never reads the loop's data structures.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from warren.agent.nodemetrics import NodeCollector
from warren.agent.taskmetrics import HeldTask, TaskCollector, TaskRows
from warren.agent.taskstats import TaskStatsReader
from warren.model import TaskState
from warren.promregistry import new_registry

if TYPE_CHECKING:
    from warren.agent.overlay import Overlay
    from warren.agent.session import Session
    from warren.agent.worker import Worker

REFRESH = 1.0


def node_registry(data_dir: Path | None) -> CollectorRegistry:
    """The agent's registry, with the node's disk and certificate figures if it has a data dir
    (read at scrape time). `?name[]=` finds them too (`new_registry`)."""
    registry = new_registry()
    if data_dir is not None:
        registry.register(NodeCollector(data_dir))
    return registry


async def serve(
    addr: str, worker: Worker, session: Session, overlay: Overlay | None = None, data_dir: Path | None = None
) -> None:
    """Serve /metrics on HOST:PORT and keep the gauges current until cancelled."""
    registry = node_registry(data_dir)
    mesh = _OverlayGauges(registry) if overlay is not None and overlay.enabled else None
    tasks = Gauge("warren_agent_tasks", "Tasks held by this agent, by local state", ["state"], registry=registry)
    connected = Gauge("warren_agent_connected", "1 while a session with a manager is open", registry=registry)
    pending = Gauge("warren_agent_pending_reports", "Task status reports not yet delivered", registry=registry)
    rows = TaskRows()
    runtime = worker.env.runtime
    registry.register(TaskCollector(lambda: rows.rows, TaskStatsReader().read, lambda rid: runtime.status(rid).pid))
    host, _, port = addr.rpartition(":")
    server, thread = start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
    try:
        while True:
            counts = worker.counts_by_state()
            for state in TaskState:
                tasks.labels(state.label).set(counts.get(state.label, 0))
            connected.set(1 if session.connected_to else 0)
            pending.set(len(worker.queue))
            rows.refresh(held_tasks(worker))
            if mesh is not None and overlay is not None:
                mesh.update(overlay, time.time())
            await asyncio.sleep(REFRESH)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)


def held_tasks(worker: Worker) -> list[HeldTask]:
    """The task controllers' view the per-task metrics are labelled from."""
    return [
        HeldTask(
            task_id=ctl.task.id,
            service_id=ctl.task.service_id,
            service=ctl.task.service_name,
            slot=ctl.task.slot,
            node=ctl.task.node_id,
            runtime_id=ctl.local.runtime_id,
            running=ctl.local.started and not ctl.local.state.terminal and bool(ctl.local.runtime_id),
            started_at=ctl.local.started_at,
            local_restarts=ctl.local.restarts,
            health=ctl.local.health,
        )
        for ctl in worker.controllers.values()
    ]


class _OverlayGauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.peers = Gauge("warren_overlay_peers", "WireGuard peers configured on this node", registry=registry)
        self.handshake_age = Gauge(
            "warren_overlay_peer_handshake_age_seconds",
            "Seconds since the last handshake with each peer node (-1: never)",
            ["peer"],
            registry=registry,
        )
        self.traffic = Gauge(
            "warren_overlay_peer_bytes", "Bytes exchanged with each peer node", ["peer", "direction"], registry=registry
        )
        self.key_epoch = Gauge(
            "warren_overlay_key_epoch", "Rotation epoch of this node's WireGuard key", registry=registry
        )
        self.services = Gauge("warren_overlay_services", "Service VIPs in this node's load balancer", registry=registry)
        self.backends = Gauge("warren_overlay_backends", "Task addresses behind those VIPs", registry=registry)
        self.failures = Gauge(
            "warren_overlay_converge_failures", "Converge passes that failed since the agent started", registry=registry
        )
        self._known: set[str] = set()

    def update(self, overlay: Overlay, now: float) -> None:
        stats = overlay.stats
        self.peers.set(len(stats.peers))
        seen = set()
        for peer in stats.peers:
            seen.add(peer.node_id)
            self.handshake_age.labels(peer.node_id).set(now - peer.last_handshake if peer.last_handshake else -1)
            self.traffic.labels(peer.node_id, "rx").set(peer.rx_bytes)
            self.traffic.labels(peer.node_id, "tx").set(peer.tx_bytes)
        for gone in self._known - seen:  # a node that left: no stale series
            self.handshake_age.remove(gone)
            self.traffic.remove(gone, "rx")
            self.traffic.remove(gone, "tx")
        self._known = seen
        self.key_epoch.set(stats.key_epoch)
        self.services.set(stats.services)
        self.backends.set(stats.backends)
        self.failures.set(stats.converge_failures)
