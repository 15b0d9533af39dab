"""`warren sim`: many simulated worker nodes in one process, speaking the real protocol (ADR 50).

Each node (warren.node.simnode) joins with the real token through the CA's Join rpc (its own key
and certificate, in DATA_DIR/nodes/HOSTNAME, reused when the simulator starts again), then runs the agent's own
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
import contextlib
import json
import logging
import os
import random
import resource
import signal
import sys
from pathlib import Path
from typing import Any

from warren import gcpolicy, gilpolicy, heap, logsetup, proctitle
from warren.agent import join as agent_join
from warren.agent.indexonly import SharedEndpoints
from warren.aio import wait_within
from warren.node.simnode import SimNode, SimOptions, hostname, join_one

log = logging.getLogger("warren.sim")

SOCKET_FILE = "sim.sock"
JOIN_CONCURRENCY = 8  # joins in flight at once: each costs the managers a key signature and a commit
LAG_TICK = 0.1  # seconds between the event loop lateness samples `--status` reports
THAW_CHECK = 1.0  # seconds between looks at how many nodes hold a session (ADR 77)
THAW_SETTLE = 15.0  # seconds without a session lost or regained before a thaw


class SimError(Exception):
    """The simulator cannot start or a control command failed; str() is one line."""


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
                    node_dir, node_id = await loop.run_in_executor(None, join_one, self.options, index)
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
