"""Leader churn with three managers and many nodes (#15, ADR 52).

Three real managers (tests/integration/harness.manager_trio) and one `warren sim --nodes N`
(the simulated overlay). Once every session is open, a window of WINDOW seconds with nothing but
heartbeats: the Raft terms seen (each new term is an election), the Raft entries committed (with
nothing to do, every entry is a node re-registering or a status change), the times a manager's
Raft thread did not run for longer than the shortest election timeout (their logs), and how many
sessions were open at the end. On a shared 2-core machine: the figures depend on its load.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

NODES = 300
WINDOW = 60.0
OVERLAY_RANGE = "10.128.0.0/12"
STALL = "the Raft thread did not run for"


def run_once(nodes: int) -> dict[str, Any]:
    from tests.integration.harness import manager_trio
    from tests.integration.simrig import SimProcess
    from warren.api.v1 import control_pb2 as cpb
    from warren.api.v1 import control_pb2_grpc

    root = Path(tempfile.mkdtemp(prefix=f"warren-bench-churn{nodes}-"))
    sim: SimProcess | None = None
    try:
        init = ["--overlay-range", OVERLAY_RANGE]
        with manager_trio(root, init_args=init, schedule_on_manager=False) as managers:
            first = managers[0]
            sim = SimProcess(first, root, nodes)
            started = time.perf_counter()
            deadline = started + float(os.environ.get("WARREN_BENCH_CHURN_TIMEOUT", "600"))
            while sim.status()["connected"] < nodes:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"only {sim.status()['connected']} of {nodes} sessions open")
                time.sleep(1.0)
            open_s = time.perf_counter() - started

            def infos() -> list[Any]:
                seen = []
                admin = first.data_dir / "admin"  # the joined managers hold no admin certificate
                for m in managers:
                    try:
                        with m.channel(admin) as channel:
                            stub = control_pb2_grpc.ControlStub(channel)
                            seen.append(stub.GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=5))
                    except grpc.RpcError:  # a manager busy or between leaders: skip it
                        continue
                return seen

            def stalls() -> int:
                return sum((m.root / "manager.log").read_text(errors="replace").count(STALL) for m in managers)

            first_infos = infos()
            terms = {i.raft_term for i in first_infos}
            commit0 = max(i.commit_index for i in first_infos)
            stalls0 = stalls()
            end = time.perf_counter() + WINDOW
            while time.perf_counter() < end:  # a measurement window, sampled each second
                terms |= {i.raft_term for i in infos()}
                time.sleep(1.0)
            last = infos()
            return {
                "nodes": nodes,
                "all_sessions_open_s": round(open_s, 1),
                "window_s": WINDOW,
                "elections_in_window": max(terms) - min(terms),
                "raft_entries_in_window": max(i.commit_index for i in last) - commit0,
                "raft_thread_stalls_over_election_timeout": stalls() - stalls0,
                "sessions_open_at_end": sim.status()["connected"],
                "load_average": os.getloadavg()[0],
            }
    finally:
        if sim is not None:
            sim.stop()
        shutil.rmtree(root, ignore_errors=True)


def run() -> dict[str, object]:
    nodes = int(os.environ.get("WARREN_BENCH_NODES", NODES))
    return {"name": "churn", "cases": [run_once(nodes)]}


if __name__ == "__main__":
    try:
        print(json.dumps(run(), indent=2))
    except RuntimeError as exc:
        print(f"bench_churn: {exc}", file=sys.stderr)
        sys.exit(1)
