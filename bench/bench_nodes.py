"""Nodes at scale on one manager (#15, ADR 52): S3's failure figures and the manager's CPU per node.

One real manager (tests/integration/harness.Manager, no tasks on it) and one `warren sim --nodes N`
process with the simulated overlay. Measured, end to end on a shared 2-core machine:
- the time until every session is open, and the manager's CPU seconds per joined node (its
  getrusage through /proc, over the joins);
- a service of TASKS_PER_NODE x N replicas running, then 10 % of the nodes killed through the
  simulator's control socket: the time until the manager marks every killed node down, and the
  time until every task runs on a live node again (one per slot), each from the kill.
One run per heartbeat period in WARREN_BENCH_NODES_PERIOD (default 5s,1s). The nodes beat at the
setting or at nodes / 50 s, whichever is longer (ADR 73): 1s means 2 s at 100 nodes, down after 6 s.
S3's goal: the tasks run elsewhere within the down timeout plus 2 s.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds, figure, manager_with_sim, wait_for
from warren.reconciler import liveness

NODES = 100
TASKS_PER_NODE = 5
KILL_SHARE = 0.1
OVERLAY_RANGE = "10.128.0.0/12"
TIMEOUT = float(os.environ.get("WARREN_BENCH_NODES_TIMEOUT", "600"))


def one_run(nodes: int, period: str) -> dict[str, Any]:
    from tests.integration.harness import Manager
    from warren.api.v1 import control_pb2 as cpb

    def new_manager(root: Path) -> Manager:
        start_args = ["--heartbeat-period", period, "--overlay-range", OVERLAY_RANGE]
        return Manager(root, start_args=start_args, schedule_on_manager=False)

    with manager_with_sim(f"nodes{nodes}", new_manager) as rig:
        manager = rig.manager
        control = manager.control()

        def listed() -> dict[str, Any]:
            reply = control.ListNodes(cpb.ListNodesRequest(), timeout=30)
            return {n.hostname: n for n in reply.nodes if n.hostname.startswith("sim-")}

        def tasks() -> list[Any]:
            return list(control.ListTasks(cpb.ListTasksRequest(service="load"), timeout=30).tasks)

        assert manager.process is not None
        cpu0 = cpu_seconds(manager.process.pid)
        sim = rig.start_sim(nodes, "--start-delay", "20ms")
        joined_s = wait_for(lambda: sim.status(states=False)["connected"] >= nodes, TIMEOUT, "every session", 0.5)
        wait_for(lambda: sum(n.status == "ready" for n in listed().values()) == nodes, TIMEOUT, "every node ready", 0.5)
        join_cpu = cpu_seconds(manager.process.pid) - cpu0

        replicas = TASKS_PER_NODE * nodes
        create = manager.cli("service", "create", "load", "--image", "busybox", "--replicas", str(replicas), "-d")
        if create.returncode != 0:
            raise RuntimeError(f"service create failed: {create.stderr.strip()}")

        def running() -> list[Any]:
            run = [t for t in tasks() if t.state == "running"]
            return run if len(run) == len({t.slot for t in run}) == replicas else []

        run_s = wait_for(lambda: bool(running()), TIMEOUT, "every task running", 0.5)

        killed_count = max(1, int(nodes * KILL_SHARE))
        killed_at = time.perf_counter()
        names = sim.kill(killed_count)
        by_name = listed()
        dead = {by_name[n].id for n in names}
        wait_for(lambda: all(listed()[n].status == "down" for n in names), TIMEOUT, "killed nodes down")
        down_s = time.perf_counter() - killed_at

        def moved() -> bool:
            run = running()
            return bool(run) and all(t.node_id not in dead for t in run)

        wait_for(moved, TIMEOUT, "tasks running elsewhere")
        moved_s = time.perf_counter() - killed_at
        info = control.GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=10)
        # The period the nodes beat at and the down check counts with: the setting, or longer
        # past MAX_HEARTBEATS_PER_SECOND (ADR 73): 2 s for 100 nodes set to 1 s.
        beat = liveness.heartbeat_period(info.heartbeat_period, info.nodes)
        return {
            "nodes": nodes,
            "heartbeat_period_set_s": info.heartbeat_period,
            "heartbeat_period_s": beat,
            "node_down_timeout_s": 3 * beat,
            "all_sessions_open_s": round(joined_s, 2),
            "manager_cpu_s_per_joined_node_ms": round(1000 * join_cpu / nodes, 2),
            "tasks": replicas,
            "tasks_running_s": round(run_s, 2),
            "killed": killed_count,
            "killed_down_s": round(down_s, 2),
            "tasks_elsewhere_s": round(moved_s, 2),
            "tasks_elsewhere_after_timeout_s": round(moved_s - 3 * beat, 2),
        }


def run() -> dict[str, object]:
    nodes = int(os.environ.get("WARREN_BENCH_NODES", NODES))
    periods = os.environ.get("WARREN_BENCH_NODES_PERIOD", "5s,1s").split(",")
    cases = [one_run(nodes, p) for p in periods]
    figures = []
    for case in cases:
        what = f"{case['nodes']} sim nodes, heartbeat {case['heartbeat_period_s']:g}s"
        if case["heartbeat_period_s"] != case["heartbeat_period_set_s"]:
            what += f" (set to {case['heartbeat_period_set_s']:g}s)"
        figures.append(figure(f"10% killed: all marked down ({what})", case["killed_down_s"], "s"))
        figures.append(figure(f"10% killed: their tasks running elsewhere ({what})", case["tasks_elsewhere_s"], "s"))
        late = case["tasks_elsewhere_after_timeout_s"]
        figures.append(figure(f"10% killed: tasks elsewhere, past the down timeout ({what})", late, "s", goal=2.0))
    return {"name": "nodes", "cases": cases, "figures": figures}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
