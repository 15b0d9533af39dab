"""What a deaf manager costs (#15, ADR 69): one process stopped for a while, then resumed.

One real manager (tests/integration/harness.Manager, no tasks on it, 1 s heartbeat: a node is
down after 3 s) and one `warren sim --nodes N` running REPLICAS tasks. Then SIGSTOP for STOPPED_S
seconds, either the manager (it hears nothing: its own stall) or the simulator (every node goes
silent at once), and SIGCONT. Counted, end to end, over the WATCH_S seconds after the resume:
the nodes seen down, and the tasks orphaned and started again. Before ADR 69 both cases marked
nodes down and restarted their tasks; the goal is none.

Run it in another worktree for the other side (its harness points PYTHONPATH at itself).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

NODES = int(os.environ.get("WARREN_BENCH_STALL_NODES", "20"))
REPLICAS = 5 * NODES
STOPPED_S = float(os.environ.get("WARREN_BENCH_STALL_SECONDS", "6"))
WATCH_S = 8.0


def run_once(stopped: str) -> dict[str, Any]:
    from tests.integration.harness import Manager
    from tests.integration.simrig import SimProcess
    from tests.waiting import wait_for
    from warren.api.v1 import control_pb2 as cpb

    root = Path(tempfile.mkdtemp(prefix="warren-bench-stall-"))
    (root / "m1").mkdir()
    manager = Manager(root / "m1", start_args=["--heartbeat-period", "1s"], schedule_on_manager=False)
    sim: SimProcess | None = None
    victim: Any = None
    try:
        manager.start()
        sim = SimProcess(manager, root, NODES, "--start-delay", "10ms")

        def nodes() -> dict[str, str]:
            reply = manager.control().ListNodes(cpb.ListNodesRequest(), timeout=10)
            return {n.hostname: n.status for n in reply.nodes if n.hostname.startswith("sim-")}

        def tasks() -> list[Any]:
            request = cpb.ListTasksRequest(service="web", include_history=True)
            return list(manager.control().ListTasks(request, timeout=10).tasks)

        def running() -> int:
            return sum(t.state == "running" for t in tasks())

        wait_for(lambda: list(nodes().values()) == ["ready"] * NODES, timeout=120, interval=0.3)
        created = manager.cli("service", "create", "web", "--image", "busybox", "--replicas", str(REPLICAS), "-d")
        assert created.returncode == 0, created.stderr
        wait_for(lambda: running() == REPLICAS, timeout=120, interval=0.3)
        before = {t.id for t in tasks()}
        load = os.getloadavg()[0]
        victim = manager.process if stopped == "manager" else sim.process
        victim.send_signal(signal.SIGSTOP)
        time.sleep(STOPPED_S)  # the fault itself
        victim.send_signal(signal.SIGCONT)
        seen_down: set[str] = set()
        end = time.monotonic() + WATCH_S
        while time.monotonic() < end:
            seen_down |= {h for h, status in nodes().items() if status == "down"}
            time.sleep(0.2)
        wait_for(lambda: running() == REPLICAS, timeout=120, interval=0.3)
        after = tasks()
        return {
            "stopped": stopped,
            "stopped_s": STOPPED_S,
            "nodes": NODES,
            "replicas": REPLICAS,
            "nodes_seen_down": len(seen_down),
            "tasks_started_again": len({t.id for t in after} - before),
            "tasks_orphaned": sum(t.state == "orphaned" for t in after),
            "load_average_at_stop": round(load, 2),
        }
    finally:
        if victim is not None and victim.poll() is None:
            victim.send_signal(signal.SIGCONT)
        if sim is not None:
            sim.stop()
        manager.stop()
        shutil.rmtree(root, ignore_errors=True)


def run() -> dict[str, object]:
    return {"name": "stall", "cases": [run_once("manager"), run_once("sim")]}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
