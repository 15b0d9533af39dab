"""Leader churn with three managers and many nodes (#15, ADR 52, ADR 57).

Three real managers (tests/integration/harness.manager_trio) and one `warren sim --nodes N`
(the simulated overlay). Once every session is open, a window of WINDOW seconds with nothing but
heartbeats: the Raft terms seen (each new term is an election), the Raft entries committed (with
nothing to do, every entry is a node re-registering or a status change), the times a manager's
Raft thread did not run for longer than the shortest election timeout (their logs), and how many
sessions were open at the end. Also, over the window: the Raft thread's tick gaps from each
manager's `warren_raft_tick_gap_seconds` (how many exceeded 0.5 s and 1 s, and the largest bucket
reached), the leader's CPU and RSS; then KILL nodes are killed through the simulator and the time
until the managers list all of them down is measured (the timeout is three heartbeat periods,
15 s by default). On a shared 2-core machine: the figures depend on its load.

WARREN_BENCH_NODES sets N (300), WARREN_BENCH_KILL the nodes killed (10 % of N).
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
WINDOW = float(os.environ.get("WARREN_BENCH_CHURN_WINDOW", "60"))
OVERLAY_RANGE = "10.128.0.0/12"
STALL = "the Raft thread did not run for"
GAP_METRIC = "warren_raft_tick_gap_seconds_bucket"


def _tick_gaps(manager: Any) -> dict[str, float]:
    """The cumulative tick-gap histogram of one manager: bucket upper bound -> count."""
    from tests.integration.harness import metric_samples

    return {labels["le"]: value for labels, value in metric_samples(manager, GAP_METRIC)}


def _gaps_over(before: dict[str, float], after: dict[str, float], bound: str) -> int:
    """Tick gaps longer than `bound` seconds between two readings of the histogram."""
    total = after.get("+Inf", 0.0) - before.get("+Inf", 0.0)
    within = after.get(bound, 0.0) - before.get(bound, 0.0)
    return int(total - within)


def _largest_gap_bucket(before: dict[str, float], after: dict[str, float]) -> str:
    """The upper bound ("le") of the bucket the window's longest tick gap fell in."""
    total = after.get("+Inf", 0.0) - before.get("+Inf", 0.0)
    for bound in sorted(after, key=float):  # "+Inf" sorts last
        if after[bound] - before.get(bound, 0.0) >= total:
            return bound
    return "+Inf"


def _proc(pid: int) -> tuple[float, float]:
    """CPU seconds and RSS in MiB of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    return cpu, rss


def run_once(nodes: int, kill: int) -> dict[str, Any]:
    from tests.integration.harness import leader_of, manager_trio
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
            open_s: float | None = None
            while sim.status(states=False)["connected"] < nodes:
                if time.perf_counter() > deadline:  # measure the window anyway: churn is the question
                    break
                time.sleep(1.0)
            else:
                open_s = time.perf_counter() - started
            open_at_window = sim.status(states=False)["connected"]

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
            leader = leader_of(managers)
            gaps0 = [_tick_gaps(m) for m in managers]
            cpu0, _ = _proc(leader.process.pid)
            load0 = os.getloadavg()[0]
            end = time.perf_counter() + WINDOW
            while time.perf_counter() < end:  # a measurement window, sampled each second
                terms |= {i.raft_term for i in infos()}
                time.sleep(1.0)
            last = infos()
            gaps1 = [_tick_gaps(m) for m in managers]
            cpu1, rss = _proc(leader.process.pid)
            quiet = {
                "tick_gaps_over_0_5s": sum(_gaps_over(a, b, "0.5") for a, b in zip(gaps0, gaps1, strict=True)),
                "tick_gaps_over_1s": sum(_gaps_over(a, b, "1.0") for a, b in zip(gaps0, gaps1, strict=True)),
                "longest_tick_gap_bucket_le_s": max(
                    (_largest_gap_bucket(a, b) for a, b in zip(gaps0, gaps1, strict=True)), key=float
                ),
                "leader_cpu_share_in_window": round((cpu1 - cpu0) / WINDOW, 3),
                "leader_rss_mib": round(rss, 1),
                "load_average_window_start": round(load0, 2),
                "sessions_open_at_end": sim.status(states=False)["connected"],  # of the window, before the kill
            }
            killed_down = _kill_and_wait(first, sim, kill, admin=first.data_dir / "admin")
            return {
                **quiet,
                **killed_down,
                "nodes": nodes,
                "all_sessions_open_s": round(open_s, 1) if open_s is not None else None,
                "sessions_open_at_window_start": open_at_window,
                "window_s": WINDOW,
                "elections_in_window": max(terms) - min(terms),
                "raft_entries_in_window": max(i.commit_index for i in last) - commit0,
                "raft_thread_stalls_over_election_timeout": stalls() - stalls0,
                "load_average": os.getloadavg()[0],
            }
    finally:
        if sim is not None:
            sim.stop()
        shutil.rmtree(root, ignore_errors=True)


def _kill_and_wait(manager: Any, sim: Any, kill: int, admin: Path) -> dict[str, Any]:
    """Kill `kill` sim nodes; the seconds until the managers list every one of them down."""
    from warren.api.v1 import control_pb2 as cpb
    from warren.api.v1 import control_pb2_grpc

    if kill <= 0:
        return {}
    killed_at = time.perf_counter()
    names = set(sim.kill(kill))
    deadline = killed_at + 120
    while True:
        try:
            with manager.channel(admin) as channel:
                stub = control_pb2_grpc.ControlStub(channel)
                down, token = set(), ""
                while True:  # every page
                    reply = stub.ListNodes(cpb.ListNodesRequest(page_token=token), timeout=30)
                    down |= {n.hostname for n in reply.nodes if n.hostname in names and n.status == "down"}
                    token = reply.next_page_token
                    if not token:
                        break
            if down == names:
                return {"killed": len(names), "killed_all_down_s": round(time.perf_counter() - killed_at, 1)}
        except grpc.RpcError:  # between leaders: ask again
            pass
        if time.perf_counter() > deadline:
            return {"killed": len(names), "killed_all_down_s": None, "killed_down_after_120s": len(down)}
        time.sleep(0.5)


def run() -> dict[str, object]:
    nodes = int(os.environ.get("WARREN_BENCH_NODES", NODES))
    kill = int(os.environ.get("WARREN_BENCH_KILL", nodes // 10))
    return {"name": "churn", "cases": [run_once(nodes, kill)]}


if __name__ == "__main__":
    try:
        print(json.dumps(run(), indent=2))
    except RuntimeError as exc:
        print(f"bench_churn: {exc}", file=sys.stderr)
        sys.exit(1)
