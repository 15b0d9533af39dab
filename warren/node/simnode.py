"""One simulated node of `warren sim` (ADR 50): its identity, its join, and its agent.

A node joins with the real token (its own key and certificate in DATA_DIR/nodes/HOSTNAME, reused
when the simulator starts again), then runs the agent's own Session, Worker and task controllers
over its own mTLS channel, on a SimRuntime. The simulator (warren.node.sim) runs many of them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import logging
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from warren import datadir, logsetup, tls
from warren.agent import join as agent_join
from warren.agent.cache import MemoryCache
from warren.agent.controller_env import ControllerEnv
from warren.agent.daemon import load_node_file, save_managers
from warren.agent.indexonly import IndexOnlyAssignmentSet, SharedEndpoints, TrackingAssignmentSet
from warren.agent.session import ManagerList, NodeRemoved, Session
from warren.agent.status import StatusQueue
from warren.agent.worker import Worker
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import types_pb2 as pb
from warren.backoff import Backoff
from warren.network.keys import NodeKey
from warren.network.lb import Endpoint
from warren.runtime.sim import SimRuntime

log = logging.getLogger("warren.sim")

NODES_DIR = "nodes"
JOIN_ATTEMPTS = 5  # a busy or unreachable manager is asked this often before the simulator gives up
WAIT_SLICE = 3600.0  # a simulated wait is cancellable: no need to return in short slices
WG_PORT_BASE = 20000  # simulated WireGuard endpoints 127.0.0.1:20000+i (nothing listens there)


@dataclass(frozen=True)
class SimOptions:
    data_dir: Path
    join_addr: str
    token: str
    nodes: int
    start_delay: float = 0.0
    fail_rate: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    overlay: bool = True  # describe a simulated WireGuard key and endpoint (the managers plan it)
    hostname_prefix: str = "sim"
    nano_cpus: int = 4_000_000_000
    memory_bytes: int = 8 << 30
    signal_kills: int = 1  # nodes SIGUSR1 kills
    seed: int | None = None


def hostname(prefix: str, index: int) -> str:
    return f"{prefix}-{index:04d}"


def simulated_wg_key(node_id: str, epoch: int) -> str:
    """A stable WireGuard public key for a simulated node (base64 of 32 bytes, never used)."""
    return base64.b64encode(hashlib.sha256(f"{node_id}/{epoch}".encode()).digest()).decode()


@dataclass(frozen=True)
class HeldCredentials(tls.CredentialFiles):
    """A node's certs/ read again only when one of its files changed (a renewal rewrites them):
    reading them and checking the key against the certificate at every session open was 9-14 %
    of the simulator's CPU while 1,000 nodes' sessions churned (ADR 71)."""

    held: dict[str, tuple[tuple[int, ...], tls.Credentials]] = field(default_factory=dict)

    def load(self, directory: str | os.PathLike[str]) -> tls.Credentials:
        # Plain strings: pathlib's joins were 6 % of the simulator's CPU while 1,000 nodes
        # reconnected after a leader change (#15).
        base = os.fspath(directory)
        try:
            stamp = tuple(
                value
                for name in (tls.CA_FILE, tls.CERT_FILE, tls.KEY_FILE)
                for stat in [os.stat(os.path.join(base, name))]
                for value in (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            )
        except OSError:
            return super().load(directory)  # the usual error, naming the file
        found = self.held.get(base)
        if found is None or found[0] != stamp:
            found = self.held[base] = (stamp, super().load(directory))
        return found[1]


class SimNode:
    """One simulated node: the agent's Session and Worker on a SimRuntime."""

    def __init__(
        self,
        options: SimOptions,
        index: int,
        data_dir: Path,
        node_id: str,
        draw: Callable[[], float],
        endpoints: SharedEndpoints,
    ):
        self.index = index
        self.hostname = hostname(options.hostname_prefix, index)
        self.data_dir = data_dir
        self.node_id = node_id
        self.options = options
        self.runtime = SimRuntime(options.start_delay, options.fail_rate, draw=draw)
        self.queue = StatusQueue()
        env = ControllerEnv(
            runtime=self.runtime,
            log_dir=data_dir / "logs",  # never written: the simulated runtime has no output
            call=self.runtime.call,
            wait_call=self.runtime.wait_call,
            wait_slice=WAIT_SLICE,
            node_hostname=self.hostname,
        )
        self.worker = Worker(env, MemoryCache(), self.queue)
        self.key_epoch = 0
        self._wanted_epoch = 0  # the key epoch the managers want (a rotation, ADR 18)
        self.services_index = 0
        self._description: tuple[int, dpb.NodeDescription] | None = None  # (key epoch, it)
        node = load_node_file(data_dir)
        self.session = Session(
            data_dir / datadir.CERTS_DIR,
            ManagerList(node.get("managers", [])),
            self.describe,
            self.worker,
            self.queue,
            on_managers=lambda addrs: save_managers(data_dir, addrs),
            on_services=self._services,
            pending_key=self._pending_key,
            services_applied=lambda: self.services_index,
            on_key_epoch=self._want_key_epoch,
            # No load balancer and no overlay here: the endpoints' index and the mesh's version
            # are all a simulated node needs of them (ADR 71); the managers still compute, encode
            # and send every entry, and this node still receives them. The first node reads them
            # as a real node does, for the others' digests when they open a session (ADR 81).
            assignment_set=functools.partial(
                TrackingAssignmentSet if index == 0 else IndexOnlyAssignmentSet, shared=endpoints
            ),
            credentials=HeldCredentials(),
        )
        self.stop = asyncio.Event()
        self.job: asyncio.Task[None] | None = None
        self.killed = False

    def describe(self) -> dpb.NodeDescription:
        """What each session request says (built once per key epoch: sessions reopen often)."""
        if self._description is None or self._description[0] != self.key_epoch:
            self._description = (self.key_epoch, self._describe())
        return self._description[1]

    def _describe(self) -> dpb.NodeDescription:
        overlay = self.options.overlay
        return dpb.NodeDescription(
            hostname=self.hostname,
            resources=pb.Resources(nano_cpus=self.options.nano_cpus, memory_bytes=self.options.memory_bytes),
            addr="127.0.0.1",
            os="linux",
            arch=platform.machine(),
            labels=self.options.labels,
            wg_public_key=simulated_wg_key(self.node_id, self.key_epoch) if overlay else "",
            wg_key_epoch=self.key_epoch if overlay else 0,
            wg_endpoint=f"127.0.0.1:{WG_PORT_BASE + self.index % 40000}" if overlay else "",
            overlay=overlay,
        )

    # The simulated overlay: applied as soon as received, a key rotation published at once.
    def _services(self, services: tuple[Endpoint, ...], vip_range: str, index: int) -> None:
        self.services_index = max(self.services_index, index)

    def _want_key_epoch(self, epoch: int) -> None:
        self._wanted_epoch = epoch

    def _pending_key(self) -> NodeKey | None:
        wanted = self._wanted_epoch
        if not self.options.overlay or wanted <= self.key_epoch:
            return None
        self.key_epoch = wanted  # what the next session describes, too
        return NodeKey(wanted, Path(), simulated_wg_key(self.node_id, wanted))

    # -- life ------------------------------------------------------------------------------------
    def start(self) -> None:
        self.job = asyncio.create_task(self._run(), name=f"sim-{self.hostname}")

    async def _run(self) -> None:
        logsetup.bind(node=self.node_id)  # this node's lines, among the process's many nodes
        await self.worker.start()
        try:
            await self.session.run(self.stop)
        except NodeRemoved as exc:
            log.warning("%s: %s", self.hostname, exc)
            await self.worker.remove_all(timeout=10.0)
        finally:
            await self.worker.close()

    def vanish(self) -> None:
        """Die now: no heartbeat or report leaves this node after this call (its session is
        cancelled); `kill` then waits for its tasks to wind down."""
        self.killed = True
        if self.job is not None:
            self.job.cancel()

    async def kill(self) -> None:
        """Vanish: the session's stream and channel close at once, nothing is said."""
        self.vanish()
        if self.job is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.job

    async def shut(self) -> None:
        """Stop the session the way an agent stopping does."""
        self.stop.set()
        if self.job is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.job

    @property
    def connected(self) -> bool:
        return self.session.connected_to is not None and not self.killed


def join_one(options: SimOptions, index: int) -> tuple[Path, str]:
    """Join node `index` unless its directory already holds an identity; (its dir, its id).
    A busy or unreachable manager (many joins at once time out) is asked again, JOIN_ATTEMPTS
    times in all; any other failure raises JoinError at once."""
    name = hostname(options.hostname_prefix, index)
    node_dir = options.data_dir / NODES_DIR / name
    identity = agent_join.stored_identity(node_dir)
    if identity is not None:
        return node_dir, identity.node_id
    backoff = Backoff(0.2, 5.0, jitter=0.1, draw=random.random)
    for _ in range(JOIN_ATTEMPTS - 1):
        try:
            return node_dir, agent_join.join(options.token, options.join_addr, node_dir, name).node_id
        except agent_join.JoinError as exc:
            if exc.kind not in ("busy", "unreachable"):
                raise
            time.sleep(backoff.next())
    return node_dir, agent_join.join(options.token, options.join_addr, node_dir, name).node_id
