"""Committed writes per second with 3 managers (issue #4): small commands through the
replicated state machine (PySyncObj + LMDB, fsync per entry), on loopback.

Three member processes form a Raft cluster; the one that becomes leader runs the load in its
own event loop and reports. Each write is an UpdateNode setting one label on the writer's own
node: it is encoded, replicated, applied, persisted and acknowledged only once committed by a
quorum and applied on the leader.
- `sequential`: one writer, one write at a time (a Raft round and an fsync per write);
- `concurrent`: 512 writers; concurrent proposals travel as one Batch entry (group commit).
Goal: concurrent >= 10,000 writes/s.
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


def member(data: str, self_addr: str, peers: list[str]) -> None:
    """One member; the leader runs the load and prints the result as one JSON line."""
    import logging

    from warren import commands
    from warren.manager.raft import RaftNode
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

    print(json.dumps(asyncio.run(main())), flush=True)
    raft.destroy_synchronous()
    store.env.close()


def run() -> dict[str, object]:
    ports = [free_port() for _ in range(3)]
    addrs = [f"127.0.0.1:{p}" for p in ports]
    with tempfile.TemporaryDirectory(prefix="warren-bench-raft-") as tmp:
        processes = []
        try:
            for i, addr in enumerate(addrs):
                data = Path(tmp) / f"m{i}"
                data.mkdir()
                peers = [a for a in addrs if a != addr]
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "bench.bench_raft", str(data), addr, *peers],
                        stdout=subprocess.PIPE,
                        text=True,
                        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                    )
                )
            result = _first_result(processes, timeout=60 + 3 * SECONDS)
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                process.wait()
    concurrent = float(result["concurrent_writes_per_s"])
    return {
        "benchmark": "raft_writes",
        "managers": 3,
        "seconds_each": SECONDS,
        "writers": WRITERS,
        **result,
        "figures": [
            figure("3-manager committed writes/s, 512 concurrent (batched)", concurrent, "/s", GOAL_WRITES_PER_S, ">="),
            figure("3-manager committed writes/s, one at a time", float(result["sequential_writes_per_s"]), "/s"),
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
    member(sys.argv[1], sys.argv[2], sys.argv[3:])
