"""Optional Prometheus endpoint of the agent: tasks by local state and the session state.

Its own registry (the manager in the same process has its own). The gauges are refreshed by the
event loop once a second, so the HTTP thread never reads the loop's data structures.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from warren.model import TaskState

if TYPE_CHECKING:
    from warren.agent.session import Session
    from warren.agent.worker import Worker

REFRESH = 1.0


async def serve(addr: str, worker: Worker, session: Session) -> None:
    """Serve /metrics on HOST:PORT and keep the gauges current until cancelled."""
    registry = CollectorRegistry()
    tasks = Gauge("warren_agent_tasks", "Tasks held by this agent, by local state", ["state"], registry=registry)
    connected = Gauge("warren_agent_connected", "1 while a session with a manager is open", registry=registry)
    pending = Gauge("warren_agent_pending_reports", "Task status reports not yet delivered", registry=registry)
    host, _, port = addr.rpartition(":")
    server, thread = start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
    try:
        while True:
            counts = worker.counts_by_state()
            for state in TaskState:
                tasks.labels(state.label).set(counts.get(state.label, 0))
            connected.set(1 if session.connected_to else 0)
            pending.set(len(worker.queue))
            await asyncio.sleep(REFRESH)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)
