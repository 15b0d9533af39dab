"""`warren sim`: many simulated worker nodes in one process, speaking the real protocol (ADR 50).

Each node joins with the real token through the CA's Join rpc (its own key and certificate, in
DATA_DIR/nodes/HOSTNAME, reused when the simulator starts again), then runs the agent's own
Session, Worker and task controllers over its own mTLS channel: it registers, heartbeats,
receives assignments and reports task states. Only the runtime is simulated
(warren.runtime.sim), with a memory cache in place of LMDB and no thread per call. With the
simulated overlay, each node describes a WireGuard key and endpoint, so the managers allocate
it a subnet and its tasks addresses as for a real node, but nothing is configured locally.

Killing a node (`kill`, the control socket, SIGUSR1) cancels its session and controllers at
once: its stream and channel close without a goodbye, as when a real agent dies.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import random
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warren import datadir, gcpolicy, gilpolicy, heap, logsetup, proctitle, tls
from warren.agent import join as agent_join
from warren.agent.cache import MemoryCache
from warren.agent.controller_env import ControllerEnv
from warren.agent.daemon import load_node_file, save_managers
from warren.agent.indexonly import IndexOnlyAssignmentSet, SharedEndpoints, TrackingAssignmentSet
from warren.agent.session import ManagerList, NodeRemoved, Session
from warren.agent.status import StatusQueue
from warren.agent.worker import Worker
from warren.aio import wait_within
from warren.api.v1 import dispatcher_pb2 as dpb
from warren.api.v1 import types_pb2 as pb
from warren.backoff import Backoff
from warren.network.keys import NodeKey
from warren.network.lb import Endpoint
from warren.runtime.sim import SimRuntime

log = logging.getLogger("warren.sim")

NODES_DIR = "nodes"
SOCKET_FILE = "sim.sock"
JOIN_ATTEMPTS = 5  # a busy or unreachable manager is asked this often before the simulator gives up
JOIN_CONCURRENCY = 8  # joins in flight at once: each costs the managers a key signature and a commit
WAIT_SLICE = 3600.0  # a simulated wait is cancellable: no need to return in short slices
LAG_TICK = 0.1  # seconds between the event loop lateness samples `--status` reports
THAW_CHECK = 1.0  # seconds between looks at how many nodes hold a session (ADR 77)
THAW_SETTLE = 15.0  # seconds without a session lost or regained before a thaw
WG_PORT_BASE = 20000  # simulated WireGuard endpoints 127.0.0.1:20000+i (nothing listens there)


class SimError(Exception):
    """The simulator cannot start or a control command failed; str() is one line."""


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


def _join_one(options: SimOptions, index: int) -> tuple[Path, str]:
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


class Simulator:
    """All simulated nodes of this process, and the commands that kill them."""

    def __init__(self, options: SimOptions) -> None:
        self.options = options
        self.nodes: list[SimNode] = []
        self.rng = random.Random(options.seed)
        self.joined = 0
        self.started_at = 0.0
        self.loop_lag = 0.0  # the event loop's worst lateness since the last status (seconds)
        self.endpoints = SharedEndpoints()  # the sets the first node held, by index (ADR 81)

    async def start(self) -> None:
        """Join (JOIN_CONCURRENCY at a time) and start each node as soon as it has joined. Raises
        SimError if a join fails: the token or address is wrong, and every node would fail."""
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(JOIN_CONCURRENCY)

        async def one(index: int) -> None:
            async with gate:
                try:
                    node_dir, node_id = await loop.run_in_executor(None, _join_one, self.options, index)
                except agent_join.JoinError as exc:
                    raise SimError(f"{hostname(self.options.hostname_prefix, index)}: {exc.message}") from None
            node = SimNode(self.options, index, node_dir, node_id, self.rng.random, self.endpoints)
            self.nodes.append(node)
            node.start()
            self.joined += 1

        jobs = [asyncio.create_task(one(i)) for i in range(self.options.nodes)]
        try:
            await asyncio.gather(*jobs)
        finally:
            for job in jobs:
                job.cancel()

    async def watch_loop(self, tick: float = LAG_TICK) -> None:
        """Record how late the event loop wakes: every node's heartbeats and reports wait in that
        loop, so a starved simulator (not the managers) shows here first."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(tick)
            self.loop_lag = max(self.loop_lag, loop.time() - before - tick)

    async def thaw_loop(self, every: float = THAW_CHECK, settle: float = THAW_SETTLE) -> None:
        """Thaw the frozen objects (ADR 77) once fewer nodes hold a session than before: a lost
        session's objects, frozen while it lived, are then freed by the next full collection
        instead of never. Not while the nodes reconnect: the thaw waits until the number of
        sessions held has not changed for `settle` seconds. The full collection after a thaw
        walks the whole heap (7.7 s at S2's size), and one right after a leader change stopped
        every node while all of them were reconnecting."""
        held = 0
        owed = False
        steady = 0.0
        while True:
            await asyncio.sleep(every)
            now = sum(1 for node in self.nodes if node.connected)
            owed = owed or now < held
            steady = steady + every if now == held else 0.0
            if owed and steady >= settle:
                gcpolicy.thaw()
                owed = False
            held = now

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes if not n.killed]

    async def kill(self, count: int) -> list[SimNode]:
        """Kill `count` random live nodes (fewer if fewer live); the ones killed. The first node
        goes last: the others' digests come from the endpoint sets it holds (ADR 81)."""
        live = self.live()
        first = [node for node in live if node.index == 0]
        others = [node for node in live if node.index != 0]
        chosen = self.rng.sample(others, min(count, len(others)))
        chosen += first[: max(0, count - len(others))]  # every other node is dead: the first too
        # All die at the same instant, as when a rack loses power: killing them one after the
        # other let the later ones heartbeat on while the earlier wound down (seconds on a busy
        # loop), so the managers saw them die at different times and placed the first ones'
        # tasks on nodes already chosen to die (#15 S3).
        for node in chosen:
            node.vanish()
        await asyncio.gather(*(node.kill() for node in chosen))
        for node in chosen:
            print(f"killed {node.hostname} {node.node_id}", flush=True)
        return chosen

    async def shut(self) -> None:
        await asyncio.gather(*(n.shut() for n in self.live()))

    def status(self, states: bool = True) -> dict[str, Any]:
        """Counts, and this process's own cost (what ADR 50 reports per node). The tasks by
        state only if `states`: that reads every task (at 100,000 tasks, ~90 ms of a saturated
        simulator, polled every 2 s by the scale bench); every other count is kept or per node."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        lag, self.loop_lag = self.loop_lag, 0.0
        live = self.live()
        by_state: dict[str, int] = {}
        for node in live if states else ():
            for state, count in node.worker.counts_by_state().items():
                by_state[state] = by_state.get(state, 0) + count
        return {
            "nodes": len(self.nodes),
            "live": len(live),
            "connected": sum(1 for n in self.nodes if n.connected),
            # Live nodes at an endpoints index whose set the tracker no longer keeps, or never held:
            # a new session of theirs would ask for every endpoint again (ADR 81).
            "endpoints_untracked": sum(1 for n in live if n.session.assignments.endpoints_index not in self.endpoints),
            "killed": [n.hostname for n in self.nodes if n.killed],
            "task_count": sum(len(n.worker.controllers) for n in live),
            **({"tasks": by_state} if states else {}),
            "running": sum(n.runtime.running() for n in live),
            "starts": sum(n.runtime.starts for n in self.nodes),
            "failed_starts": sum(n.runtime.failures for n in self.nodes),
            "rss_bytes": heap.rss_bytes(),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
            "gc_seconds": [round(spent, 3) for spent in gcpolicy.seconds_spent()],  # by generation
            "python_blocks": sys.getallocatedblocks(),  # Python's own objects, against the RSS
            "loop_lag_max_s": round(lag, 3),
        }

    # -- the control socket ------------------------------------------------------------------------
    async def serve_control(self, path: Path) -> asyncio.AbstractServer:
        """One JSON line in, one JSON line out: {"kill": K} or {"status": true} (with
        "states": false, no tasks by state)."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server = await asyncio.start_unix_server(self._control, path=str(path))
        os.chmod(path, 0o600)
        return server

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await wait_within(reader.readline(), 10.0)
            reply = await self._command(line)
        except (ValueError, TimeoutError) as exc:
            reply = {"error": str(exc) or "timed out"}
        writer.write(json.dumps(reply).encode() + b"\n")
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    async def _command(self, line: bytes) -> dict[str, Any]:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise ValueError("expected a JSON object")
        if "kill" in request:
            count = request["kill"]
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise ValueError("kill takes a positive count")
            killed = await self.kill(count)
            return {"killed": [{"hostname": n.hostname, "node_id": n.node_id} for n in killed]}
        if request.get("status"):
            states = request.get("states", True)
            if not isinstance(states, bool):
                raise ValueError("states takes true or false")
            return self.status(states=states)
        raise ValueError("unknown command: use kill or status")


def control(data_dir: Path, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one command to the simulator running on `data_dir`; its answer. Raises SimError."""
    import socket

    path = data_dir / SOCKET_FILE
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise SimError(f"no simulator answers on {path}: {exc.strerror or exc}") from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise SimError(f"the simulator on {path} gave an unreadable answer") from None
    if not isinstance(reply, dict):
        raise SimError(f"the simulator on {path} gave an unreadable answer")
    if "error" in reply:
        raise SimError(f"the simulator refused: {reply['error']}")
    return reply


async def serve(options: SimOptions, stop: asyncio.Event) -> None:
    """Run the simulator until `stop`; SIGUSR1 kills `signal_kills` random nodes."""
    options.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log.debug("garbage collector thresholds: %s", gcpolicy.settle())  # as a manager's (ADR 67)
    gcpolicy.freeze_survivors()  # unlike a manager's (ADR 77), and thawed by `thaw_loop`
    sim = Simulator(options)
    loop = asyncio.get_running_loop()
    server = await sim.serve_control(options.data_dir / SOCKET_FILE)
    kills: set[asyncio.Task[Any]] = set()

    def on_usr1() -> None:
        job = asyncio.ensure_future(sim.kill(options.signal_kills))
        kills.add(job)
        job.add_done_callback(kills.discard)

    loop.add_signal_handler(signal.SIGUSR1, on_usr1)
    starting = asyncio.create_task(sim.start())
    stopping = asyncio.create_task(stop.wait())
    watching = asyncio.create_task(sim.watch_loop())
    thawing = asyncio.create_task(sim.thaw_loop())
    trimming = asyncio.create_task(heap.trim_heap())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a join failure ends the simulator
            print(f"{sim.joined} simulated node(s) joined", flush=True)
            await stopping
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        starting.cancel()
        stopping.cancel()
        watching.cancel()
        thawing.cancel()
        trimming.cancel()
        server.close()
        with contextlib.suppress(FileNotFoundError):
            (options.data_dir / SOCKET_FILE).unlink()
        await sim.shut()


def run(options: SimOptions, verbose: bool = False) -> int:
    """The foreground simulator: until SIGTERM/SIGINT; the exit code."""
    try:  # warnings only, unless --verbose or --log-level says otherwise
        given = logsetup.from_env()
        level = given.level if os.environ.get(logsetup.LEVEL_ENV) else "info" if verbose else "warning"
        config = logsetup.LogConfig(given.format, level)
    except logsetup.LogConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logsetup.configure(config)
    proctitle.set_title(proctitle.sim_title(options.nodes))
    gilpolicy.settle()  # as a manager's (ADR 84)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(options, stop)

    try:
        asyncio.run(main())
    except SimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
