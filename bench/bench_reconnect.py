"""A leader's cost to take back every node's session after a leader change (ADR 81). In-process:
a real Store (LMDB) and DispatcherService with the in-memory Raft, at S2's shape (100 services of
1,000 backends) by default, and SESSIONS node sessions that hold the endpoints of a first
session. Then every session ends and reopens, as after a leader change, alternately with the
digests of what each node holds (its COMPLETE keeps those endpoints) and without (each gets the
whole list): the process CPU until every node holds its new COMPLETE, and the bytes of one.

Both figures include the new leader's one recomputation of every endpoint (its endpoint log
follows the commits only while sessions are open, so a follower has none to start from), as a
real leader change does. The nodes are read as `warren sim` reads them (index-only, with the endpoint
sets one real assignment set recorded as they joined, ADR 71 and 81): what is timed is the leader's work, with
the encoding gRPC would do of each message, and the simulated nodes' parse of it (no network, no
TLS)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import figure
from bench.endpoint_sessions import as_sent, running_services

SERVICES = 100
BACKENDS = 1000  # per service
SESSIONS = 300
ROUNDS = 3  # of each kind, alternated


async def _scenario(services: int, per_service: int, sessions: int, rounds: int, root: Path) -> dict[str, object]:
    from tests.unit.dispatcher_cluster import Cluster, description
    from warren import gcpolicy
    from warren.agent.indexonly import IndexOnlyAssignmentSet, SharedEndpoints, TrackingAssignmentSet
    from warren.api.v1 import dispatcher_pb2 as dpb
    from warren.manager.server import caller
    from warren.pki import Identity

    gcpolicy.settle()  # as a serving manager collects (ADR 67)
    cluster = Cluster(root)
    running_services(cluster, services, per_service)
    shared = SharedEndpoints()
    sets = [TrackingAssignmentSet(shared=shared)] + [IndexOnlyAssignmentSet(shared=shared) for _ in range(sessions - 1)]
    completes = [0] * sessions
    sizes: dict[bool, int] = {}

    async def session(index: int, digests: bool) -> None:
        caller.set(Identity(f"node{index:04}", "worker", "c1", dt.datetime(2100, 1, 1, tzinfo=dt.UTC), 1))
        held = sets[index]
        request = dpb.SessionRequest(
            description=description(index),
            specs_by_reference=True,
            endpoint_deltas=True,
            endpoint_patches=True,
            endpoint_runs=True,
            mesh_deltas=True,
            endpoint_digests=held.endpoint_digests() if digests else [],
        )
        held.reset()
        async for message in cluster.dispatcher.Session(request, None):
            data = as_sent(message)  # the leader's serialization, as gRPC's
            held.apply(held.decode(data))
            completes[index] += 1
            sizes[digests] = len(data)

    async def reopen_all(digests: bool, readers: list[asyncio.Task[None]]) -> float:
        """End every session, open them again; the CPU until each has its COMPLETE."""
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        before = list(completes)
        start = time.process_time()
        readers[:] = [asyncio.create_task(session(i, digests)) for i in range(sessions)]
        deadline = time.monotonic() + 600
        while any(c <= b for c, b in zip(completes, before, strict=True)):
            ended = [t for t in readers if t.done()]
            if ended or time.monotonic() > deadline:
                raise RuntimeError(f"a session ended or none came: {ended[0].exception() if ended else 'timeout'}")
            await asyncio.sleep(0.005)
        return time.process_time() - start

    readers: list[asyncio.Task[None]] = []
    await reopen_all(False, readers)  # the nodes join and get the whole list once
    # The tracker recorded the set the nodes hold; from now on it reads as the others do, so
    # that no round times one node's full parse of a whole list (the leader's work is timed).
    sets[0] = IndexOnlyAssignmentSet(shared=shared, endpoints_index=sets[0].endpoints_index)
    cpu: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for digests in (True, False):
            cpu[digests].append(await reopen_all(digests, readers))
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    cluster.store.env.close()

    def median_ms(values: list[float]) -> float:
        return round(sorted(values)[len(values) // 2] * 1000, 1)

    kept, whole = median_ms(cpu[True]), median_ms(cpu[False])
    return {
        "services": services,
        "backends": services * per_service,
        "sessions": sessions,
        "cpu_ms_with_digests": kept,
        "cpu_ms_without": whole,
        "cpu_ms_with_digests_all": [round(c * 1000, 1) for c in cpu[True]],
        "cpu_ms_without_all": [round(c * 1000, 1) for c in cpu[False]],
        "cpu_ratio": round(kept / whole, 3),
        "complete_bytes_with_digests": sizes[True],
        "complete_bytes_without": sizes[False],
        "load_average": os.getloadavg()[0],
    }


def run(
    services: int = SERVICES, per_service: int = BACKENDS, sessions: int = SESSIONS, rounds: int = ROUNDS
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="warren-bench-reconnect-") as root:
        case = asyncio.run(_scenario(services, per_service, sessions, rounds, Path(root)))
    shape = f"{case['sessions']} sessions, {services} services x {per_service:,} backends"
    return {
        "name": "reconnect",
        "detail": case,
        "figures": [
            figure(f"Leader CPU to reopen {shape}, with digests (in-process)", case["cpu_ms_with_digests"], "ms"),
            figure(f"Leader CPU to reopen {shape}, without (in-process)", case["cpu_ms_without"], "ms"),
            figure("CPU ratio, with digests / without (in-process)", case["cpu_ratio"], "x"),
            figure("COMPLETE bytes with digests (in-process)", case["complete_bytes_with_digests"], "B"),
            figure("COMPLETE bytes without (in-process)", case["complete_bytes_without"], "B"),
        ],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=SERVICES)
    parser.add_argument("--backends", type=int, default=BACKENDS, help="per service")
    parser.add_argument("--sessions", type=int, default=SESSIONS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    print(json.dumps(run(args.services, args.backends, args.sessions, args.rounds), indent=2))
