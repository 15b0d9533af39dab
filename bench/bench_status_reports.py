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
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import figure

NODES = 20
REPLICAS = 400
IDLE_WINDOW = 10.0
TIMEOUT = 300.0


def commit_index(manager: Any) -> int:
    url = f"http://{manager.host}:{manager.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("warren_raft_commit_index "):
                return int(float(line.rsplit(" ", 1)[1]))
    raise RuntimeError("no warren_raft_commit_index in /metrics")


def _wait(predicate: Any, what: str) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > TIMEOUT:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return time.perf_counter() - start


def run() -> dict[str, object]:
    from tests.integration.harness import Manager
    from tests.integration.simrig import SimProcess

    root = Path(tempfile.mkdtemp(prefix="warren-bench-reports-"))
    (root / "m1").mkdir()
    manager = Manager(root / "m1", schedule_on_manager=False)
    sim: SimProcess | None = None
    try:
        manager.start()
        sim = SimProcess(manager, root, NODES, "--start-delay", "20ms")
        _wait(lambda: sim.status()["connected"] >= NODES, "every session")  # type: ignore[union-attr]
        before = commit_index(manager)
        create = manager.cli("service", "create", "load", "--image", "busybox", "--replicas", str(REPLICAS), "-d")
        if create.returncode != 0:
            raise RuntimeError(create.stderr)
        _wait(lambda: sim.status()["running"] >= REPLICAS, "every task running")  # type: ignore[union-attr]
        time.sleep(1.0)  # let the last passes commit: a measurement window, not a condition
        started = commit_index(manager)
        time.sleep(IDLE_WINDOW)  # a measurement window
        idle = commit_index(manager)
        sim.stop()
        sim = SimProcess(manager, root, NODES, "--start-delay", "20ms")  # same data dir: same nodes
        _wait(lambda: sim.status()["running"] >= REPLICAS, "every task running again")  # type: ignore[union-attr]
        time.sleep(2.0)  # a measurement window
        reconnected = commit_index(manager)
    finally:
        if sim is not None:
            sim.stop()
        manager.stop()
        shutil.rmtree(root, ignore_errors=True)
    per_start = (started - before) / REPLICAS
    figures = [
        figure(f"Raft entries per task start, {REPLICAS} tasks / {NODES} sim nodes", round(per_start, 3), "entries"),
        figure("Raft entries/s, all running, heartbeats only", round((idle - started) / IDLE_WINDOW, 2), "/s"),
        figure(f"Raft entries, {NODES} sim agents reconnecting", reconnected - idle, "entries"),
    ]
    return {"name": "status_reports", "what": "end to end", "figures": figures}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
