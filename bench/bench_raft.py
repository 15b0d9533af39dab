"""Committed writes per second (issue #4), and what an idle manager costs (ADR 82): small
commands through the replicated state machine (PySyncObj + LMDB, fsync per entry), on loopback.

Member processes form a Raft cluster; the one that becomes leader runs the load in its own
event loop and reports. Each write is an UpdateNode setting one label on the writer's own
node: it is encoded, replicated, applied, persisted and acknowledged only once committed by a
quorum and applied on the leader.
- `sequential`: one writer, one write at a time (a Raft round and an fsync per write);
- `concurrent`: 512 writers; concurrent proposals travel as one Batch entry (group commit);
- `idle`: the leader's CPU while nothing is written, as a share of one core.
Four cases, in one run: 3 managers and 1 manager, each also with the tick of before ADR 82
(the poller waking every 5 ms, and a lone manager's commit waiting for the next tick), the
baseline of the ratios. Goal: concurrent >= 10,000 writes/s with 3 managers.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import figure
from tests.fixtures.ports import free_port

GOAL_WRITES_PER_S = 10_000
SECONDS = 5.0
WRITERS = 512
IDLE_SECONDS = 10.0
OLD_TICK_PERIOD = 0.005  # PySyncObj's poller timeout before ADR 82


async def _load(raft, seconds: float, writers: int) -> tuple[int, float]:
    from warren import commands

    done = 0
    deadline = time.perf_counter() + seconds

    async def writer(w: int) -> None:
        nonlocal done
        i = 0
        while time.perf_counter() < deadline:
            result = await raft.propose_async(
                commands.UpdateNode(f"bench-{w}", time.time(), labels_add={"i": str(i)}), timeout=10
            )
            assert result.ok, result.message
            done += 1
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    return done, time.perf_counter() - started


def member(data: str, self_addr: str, peers: list[str], old_tick: bool) -> None:
    """One member; the leader runs the load and prints the result as one JSON line."""
    import logging

    from warren import commands
    from warren.manager import raft as raft_module
    from warren.manager.raft import RaftNode

    if old_tick:  # the baseline: as Warren ran before ADR 82
        raft_module.TICK_PERIOD = OLD_TICK_PERIOD
        RaftNode._commit_alone_now = lambda self: None  # type: ignore[method-assign]
    from warren.manager.store import Store, open_environment
    from warren.model import Node

    logging.basicConfig(level=logging.WARNING)
    store = Store(open_environment(Path(data) / "db", metasync=False))  # as the manager opens it (ADR 58)
    raft = RaftNode(self_addr, peers, Path(data), "bench-secret", store)
    while not raft.status().leader:
        time.sleep(0.01)
    if not raft.is_leader:
        while True:
            time.sleep(1)

    async def main() -> dict[str, object]:
        nodes = [Node(id=f"bench-{w}", hostname=f"bench-{w}") for w in range(WRITERS)]
        await asyncio.gather(*(raft.propose_async(commands.RegisterNode(n)) for n in nodes))
        sequential, seq_s = await _load(raft, SECONDS, 1)
        concurrent, conc_s = await _load(raft, SECONDS, WRITERS)
        return {
            "sequential_writes_per_s": sequential / seq_s,
            "concurrent_writes_per_s": concurrent / conc_s,
            "raft_entries": store.applied_index,
            "writes": sequential + concurrent,
        }

    result = asyncio.run(main())
    cpu_before = time.process_time()
    time.sleep(IDLE_SECONDS)
    result["idle_cpu_percent"] = (time.process_time() - cpu_before) / IDLE_SECONDS * 100

    print(json.dumps(result), flush=True)
    raft.destroy_synchronous()
    store.env.close()


def _cluster(managers: int, old_tick: bool = False) -> dict[str, object]:
    """Start `managers` member processes and return what their leader reported."""
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(managers)]
    with tempfile.TemporaryDirectory(prefix="warren-bench-raft-") as tmp:
        processes = []
        try:
            for i, addr in enumerate(addrs):
                data = Path(tmp) / f"m{i}"
                data.mkdir()
                peers = [a for a in addrs if a != addr]
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "bench.bench_raft", str(data), str(int(old_tick)), addr, *peers],
                        stdout=subprocess.PIPE,
                        text=True,
                        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                    )
                )
            return _first_result(processes, timeout=60 + 3 * SECONDS + IDLE_SECONDS)
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                process.wait()


def run() -> dict[str, object]:
    trio = _cluster(3)
    trio_old = _cluster(3, old_tick=True)
    lone = _cluster(1)
    lone_old = _cluster(1, old_tick=True)
    concurrent = float(trio["concurrent_writes_per_s"])
    lone_sequential = float(lone["sequential_writes_per_s"])
    return {
        "benchmark": "raft_writes",
        "seconds_each": SECONDS,
        "writers": WRITERS,
        "idle_seconds": IDLE_SECONDS,
        "managers_3": trio,
        "managers_3_old_tick": trio_old,
        "managers_1": lone,
        "managers_1_old_tick": lone_old,
        "figures": [
            figure("3-manager committed writes/s, 512 concurrent (batched)", concurrent, "/s", GOAL_WRITES_PER_S, ">="),
            figure("3-manager committed writes/s, one at a time", float(trio["sequential_writes_per_s"]), "/s"),
            figure("3-manager idle leader CPU", float(trio["idle_cpu_percent"]), "% of a core"),
            figure(
                "3-manager writes one at a time, ratio to the tick before ADR 82",
                float(trio["sequential_writes_per_s"]) / float(trio_old["sequential_writes_per_s"]),
                "x",
            ),
            figure(
                "3-manager idle leader CPU, ratio to the tick before ADR 82",
                float(trio["idle_cpu_percent"]) / float(trio_old["idle_cpu_percent"]),
                "x",
            ),
            figure("1-manager committed writes/s, one at a time", lone_sequential, "/s"),
            figure(
                "1-manager writes one at a time, ratio to the tick before ADR 82",
                lone_sequential / float(lone_old["sequential_writes_per_s"]),
                "x",
            ),
            figure(
                "1-manager idle CPU, ratio to the tick before ADR 82",
                float(lone["idle_cpu_percent"]) / float(lone_old["idle_cpu_percent"]),
                "x",
            ),
        ],
    }


def _first_result(processes: list[subprocess.Popen], timeout: float) -> dict[str, object]:
    import selectors

    selector = selectors.DefaultSelector()
    for process in processes:
        selector.register(process.stdout, selectors.EVENT_READ, process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            line = key.fileobj.readline()
            if line.strip():
                return json.loads(line)
        if all(p.poll() is not None for p in processes):
            break
    raise RuntimeError("no member reported a result (did the cluster elect a leader?)")


if __name__ == "__main__":
    member(sys.argv[1], sys.argv[3], sys.argv[4:], old_tick=sys.argv[2] == "1")
