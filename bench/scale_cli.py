"""S4, the CLI at scale (issue #15): each command's wall time, once the leader is quiet.

`service ls`, `node ls`, `cluster info`, and `service ps` of a 10-replica service and of one
of BIG_REPLICAS replicas, the median of CLI_RUNS runs each (`quiet_leader`: the run's tail done).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any

from bench.common import cpu_seconds, wait_for
from bench.scale_cluster import IMAGE, RPC_TIMEOUT, Cluster

CLI_RUNS = 3


# S4 is timed once the leader is quiet: under this share of a core over two windows in a row,
# waiting at most QUIET_WAIT_S.
QUIET_SHARE = 0.3


QUIET_WINDOW_S = 2.0


QUIET_WAIT_S = 120.0


def _create_retrying(cluster: Cluster, manager: Any, request: Any, attempts: int = 5) -> list[str]:
    """CreateService, again after an UNAVAILABLE answer (a connection refused or cut while it
    was made), at most `attempts` times; returns the UNAVAILABLE details seen (the result keeps them)."""
    import grpc

    seen: list[str] = []
    while True:
        try:
            cluster.stub(manager).CreateService(request, timeout=RPC_TIMEOUT)
            return seen
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or len(seen) + 1 >= attempts:
                raise
            seen.append(str(exc.details())[:200])
            time.sleep(1.0)


def quiet_leader(cluster: Cluster, limit: float = QUIET_WAIT_S) -> dict[str, Any]:
    """Wait until the leader is quiet: under QUIET_SHARE of a core over two windows in a row of
    QUIET_WINDOW_S (the tail of a run, its passes and endpoint pushes, done). Returns how long
    that took and the leader's share in each window; `quiet` false if it never was (within
    `limit`), and the CLI is then timed on a busy leader."""
    shares: list[float] = []
    started = time.monotonic()
    while time.monotonic() - started < limit:
        leader = cluster.leader()
        if leader is None:
            time.sleep(QUIET_WINDOW_S)
            continue
        before = cpu_seconds(leader.process.pid)
        time.sleep(QUIET_WINDOW_S)
        shares.append(round((cpu_seconds(leader.process.pid) - before) / QUIET_WINDOW_S, 2))
        if len(shares) >= 2 and max(shares[-2:]) < QUIET_SHARE:
            return {"quiet": True, "after_s": round(time.monotonic() - started, 1), "leader_cpu_shares": shares}
    return {"quiet": False, "after_s": round(time.monotonic() - started, 1), "leader_cpu_shares": shares}


def s4(cluster: Cluster, sim: Any, params: dict[str, int], tasks_now: int, with_big: bool) -> dict[str, Any]:
    """The CLI at the run's size, timed once the leader is quiet (the issue's S4 is about the
    size, not a load; the wait and the leader's CPU meanwhile are part of the result)."""
    from warren.api.v1 import control_pb2 as cpb
    from warren.api.v1 import types_pb2 as tpb

    settle = quiet_leader(cluster)
    manager = cluster.leader() or cluster.alive()[0]

    def timed(*args: str) -> dict[str, Any]:
        env = manager.env()
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as an installed CLI runs: with a bytecode cache
        env["PYTHONPYCACHEPREFIX"] = str(manager.root / "pycache")
        command = [sys.executable, "-m", "warren.cli.main", *args]
        walls, lines = [], 0
        for _ in range(CLI_RUNS + 1):  # the first run fills the bytecode cache
            t0 = time.perf_counter()
            proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=manager.root, timeout=300)
            walls.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                return {"error": proc.stderr.strip()[-500:], "returncode": proc.returncode}
            lines = len(proc.stdout.splitlines())
        return {
            "median_s": round(statistics.median(walls[1:]), 3),
            "all_s": [round(w, 3) for w in walls[1:]],
            "lines": lines,
        }

    out: dict[str, Any] = {
        "settle": settle,
        "service_ls": timed("service", "ls"),
        "node_ls": timed("node", "ls"),
        "cluster_info": timed("cluster", "info"),
        "service_ps_small": timed("service", "ps", "svc-00000"),
    }
    if not with_big:  # an unsettled cluster: no more load on it
        return out
    big = params["big_replicas"]
    spec = tpb.ServiceSpec(name="big", image=IMAGE, replicas=big)
    out["big_create_unavailable"] = _create_retrying(cluster, manager, cpb.CreateServiceRequest(spec=spec))
    try:
        out["big_running_s"] = round(
            wait_for(
                lambda: sim.status(states=False)["running"] >= tasks_now + big,
                max(300, big / 10),
                f"{big} more tasks",
                interval=0.5,
            ),
            2,
        )
    except RuntimeError as exc:
        out["big_running_error"] = str(exc)
    out["big_replicas"] = big
    out["big_settle"] = quiet_leader(cluster)
    out["service_ps_big"] = timed("service", "ps", "big")
    return out
