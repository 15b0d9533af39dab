"""The dispatcher on a real Store (LMDB) with the in-memory Raft, and sessions of numbered
nodes read into queues: shared by the dispatcher tests and the benchmarks."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

from warren.api.v1 import dispatcher_pb2 as dpb
from warren.manager.dispatcher import DispatcherService
from warren.manager.dispatchwire import Assignments
from warren.manager.events import EventHub
from warren.manager.hearing import Heartbeats
from warren.manager.inmemory import InMemoryRaft
from warren.manager.server import caller
from warren.manager.store import Store, open_environment
from warren.model import ClusterInfo, Node
from warren.pki import Identity
from warren.state import ClusterState, Put


def description(index: int, hostname: str = "") -> dpb.NodeDescription:
    key = base64.b64encode(hashlib.sha256(f"node{index}".encode()).digest()).decode()
    return dpb.NodeDescription(
        hostname=hostname or f"n{index}",
        addr=f"127.0.0.1:{20000 + index}",
        wg_public_key=key,
        wg_endpoint=f"127.0.0.1:{30000 + index}",
        overlay=True,
    )


class Cluster:
    def __init__(self, tmp_path: Path) -> None:
        self.store = Store(open_environment(tmp_path / "db"))
        self.hub = EventHub(asyncio.get_running_loop())
        self.store.watch(self.hub.publish)
        self.raft = InMemoryRaft(self.store)
        self.dispatcher = DispatcherService(self.store, self.raft, self.hub, Heartbeats())
        info = ClusterInfo(
            id="c", created_at=1.0, ca_cert_pem="", ca_key_pem="", worker_token_secret="", manager_token_secret=""
        )
        self.store.commit(1, [Put("cluster", info)])
        self.sessions: dict[str, asyncio.Queue[dpb.AssignmentsMessage]] = {}
        self.sent: dict[str, list[Assignments]] = {}  # each session's messages, as the server sends them
        self._tasks: list[asyncio.Task[None]] = []

    def open(self, index: int, desc: dpb.NodeDescription | None = None) -> asyncio.Queue[dpb.AssignmentsMessage]:
        """A session of node `index` (its own identity), read into a queue by its own task."""
        node_id = f"node{index:03}"
        received: asyncio.Queue[dpb.AssignmentsMessage] = asyncio.Queue()

        async def read() -> None:
            caller.set(Identity(node_id, "worker", "c1", dt.datetime(2100, 1, 1, tzinfo=dt.UTC), 1))
            stream: AsyncIterator[dpb.AssignmentsMessage] = self.dispatcher.Session(
                dpb.SessionRequest(description=desc or description(index), specs_by_reference=True), None
            )
            async for message in stream:
                self.sent.setdefault(node_id, []).append(message)
                received.put_nowait(message.decoded())  # as the agent reads it (ADR 57)

        self._tasks.append(asyncio.create_task(read()))
        self.sessions[node_id] = received
        return received

    async def close(self) -> None:
        # Again while any is left: Python 3.11's wait_for may swallow a cancellation that
        # arrives as the session's wait for events completes.
        pending = set(self._tasks)
        for _ in range(50):
            for task in pending:
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=0.2)
            if not pending:
                break
        assert not pending
        self._tasks.clear()

    def state(self) -> ClusterState:
        with self.store.read() as state:
            return state

    def commit(self, *nodes: Node) -> None:
        self.store.commit(self.store.applied_index + 1, [Put("node", n) for n in nodes])
