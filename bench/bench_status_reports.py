"""Raft entries per task start (ADR 53): one manager, `warren sim --nodes 20` (the real agent
protocol, simulated runtime, ADR 50) and a service of 400 replicas. End to end, through the
whole pipeline. Figures read from the manager's /metrics (warren_raft_commit_index):

- entries per task start: from the create until every task runs;
- entries in a reconnect wave: every simulated agent resends its tasks' states when the sim is
  restarted (a report of "running" for a task already running);
- entries per second once everything runs (heartbeats only).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.common import figure, manager_with_sim, wait_for

NODES = 20
REPLICAS = 400
IDLE_WINDOW = 10.0
TIMEOUT = 300.0


def run() -> dict[str, object]:
    from tests.integration.harness import Manager, commit_index

    def new_manager(root: Path) -> Manager:
        return Manager(root, schedule_on_manager=False)

    with manager_with_sim("reports", new_manager) as rig:
        manager = rig.manager
        sim = rig.start_sim(NODES, "--start-delay", "20ms")
        wait_for(lambda: sim.status()["connected"] >= NODES, TIMEOUT, "every session")
        before = commit_index(manager)
        create = manager.cli("service", "create", "load", "--image", "busybox", "--replicas", str(REPLICAS), "-d")
        if create.returncode != 0:
            raise RuntimeError(create.stderr)
        wait_for(lambda: sim.status()["running"] >= REPLICAS, TIMEOUT, "every task running")
        time.sleep(1.0)  # let the last passes commit: a measurement window, not a condition
        started = commit_index(manager)
        time.sleep(IDLE_WINDOW)  # a measurement window
        idle = commit_index(manager)
        restarted = rig.start_sim(NODES, "--start-delay", "20ms")  # same data dir: same nodes
        wait_for(lambda: restarted.status()["running"] >= REPLICAS, TIMEOUT, "every task running again")
        time.sleep(2.0)  # a measurement window
        reconnected = commit_index(manager)
    per_start = (started - before) / REPLICAS
    figures = [
        figure(f"Raft entries per task start, {REPLICAS} tasks / {NODES} sim nodes", round(per_start, 3), "entries"),
        figure("Raft entries/s, all running, heartbeats only", round((idle - started) / IDLE_WINDOW, 2), "/s"),
        figure(f"Raft entries, {NODES} sim agents reconnecting", reconnected - idle, "entries"),
    ]
    return {"name": "status_reports", "what": "end to end", "figures": figures}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
