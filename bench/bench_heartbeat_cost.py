"""What a shorter heartbeat period costs the leader (#15 S3, ADR 68), end to end.

One real manager and one `warren sim --nodes N` process (simulated overlay, no tasks). For each
period in WARREN_BENCH_HB_PERIODS (default 5s,2s,1s), set with `cluster update
--heartbeat-period`, the manager's CPU seconds (/proc) over WINDOW seconds once the agents beat
at the new pace. The CPU per heartbeat is the slope between the slowest and the fastest period
(what the heartbeats add, the rest of the manager's idle work cancelling out); the leader's share
of a core at 1,000 nodes is extrapolated from it. Measurements, not assertions.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bench.common import cpu_seconds, figure, manager_with_sim, wait_for

NODES = int(os.environ.get("WARREN_BENCH_HB_NODES", "200"))
PERIODS = os.environ.get("WARREN_BENCH_HB_PERIODS", "5s,2s,1s").split(",")
WINDOW = float(os.environ.get("WARREN_BENCH_HB_WINDOW", "30"))
OVERLAY_RANGE = "10.128.0.0/12"
AT_SCALE = 1000  # nodes the figure is extrapolated to


def _seconds(text: str) -> float:
    return float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))


def run() -> dict[str, Any]:
    from tests.integration.harness import Manager

    def new_manager(root: Path) -> Manager:
        return Manager(root, start_args=["--overlay-range", OVERLAY_RANGE], schedule_on_manager=False)

    cases: list[dict[str, Any]] = []
    with manager_with_sim("hb", new_manager) as rig:
        manager = rig.manager
        assert manager.process is not None
        sim = rig.start_sim(NODES)
        wait_for(lambda: sim.status(states=False)["connected"] >= NODES, 900, "every session", 0.5)
        previous = 5.0
        for period in PERIODS:
            updated = manager.cli("cluster", "update", "--heartbeat-period", period)
            if updated.returncode != 0:
                raise RuntimeError(updated.stderr.strip())
            time.sleep(2 * previous + 1)  # agents take the new period at their next beat
            previous = _seconds(period)
            cpu0, sim0, t0 = cpu_seconds(manager.process.pid), sim.status()["cpu_seconds"], time.monotonic()
            time.sleep(WINDOW)
            wall = time.monotonic() - t0
            share = (cpu_seconds(manager.process.pid) - cpu0) / wall
            cases.append(
                {
                    "period_s": previous,
                    "heartbeats_per_s": round(NODES / previous, 1),
                    "manager_cpu_share": round(share, 4),
                    "sim_cpu_share": round((sim.status()["cpu_seconds"] - sim0) / wall, 4),
                    "load_avg": os.getloadavg()[0],
                }
            )
            print(json.dumps(cases[-1]), flush=True)
    slow, fast = cases[0], cases[-1]
    per_beat = (fast["manager_cpu_share"] - slow["manager_cpu_share"]) / (
        fast["heartbeats_per_s"] - slow["heartbeats_per_s"]
    )
    figures = [figure("leader CPU per heartbeat (end to end)", round(per_beat * 1000, 3), "ms")]
    for case in cases:
        at_scale = AT_SCALE / case["period_s"] * per_beat
        figures.append(figure(f"heartbeats at {AT_SCALE} nodes, period {case['period_s']:g}s", at_scale, "cores"))
    return {"name": "heartbeat-cost", "nodes": NODES, "window_s": WINDOW, "cases": cases, "figures": figures}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
