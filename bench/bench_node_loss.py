"""The timeline of a node loss (#15 S3, ADR 68), end to end: where the time between a kill and
the lost tasks running elsewhere goes.

Real managers (one, or three with WARREN_BENCH_LOSS_MANAGERS=3), one `warren sim` process,
SERVICES services of REPLICAS replicas created through the gRPC API, all running; then KILL
nodes killed through the simulator's control socket. The managers' own events (ADR 45, each
stamped with its command's time) give, for every slot lost with its node: when the node was
marked down, when the task was orphaned, and when its final replacement was created (placed on
a node), starting and running; `lost_again` counts replacements placed on another killed node
and lost with it. Seconds after the kill (min / p50 / max over the lost slots), and each slot's
running time after its own node was found down (the goal: within 2 s). Measurements, not
assertions. WARREN_BENCH_LOSS_PROFILE=SECONDS runs py-spy on the simulator and the manager
from the kill; WARREN_BENCH_LOSS_KEEP=1 keeps the logs, profiles and events.

    python3 -m bench.bench_node_loss        # WARREN_BENCH_LOSS_RUNS=N repeats, one line each
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import wait_for

NODES = int(os.environ.get("WARREN_BENCH_LOSS_NODES", "20"))
SERVICES = int(os.environ.get("WARREN_BENCH_LOSS_SERVICES", "200"))
REPLICAS = int(os.environ.get("WARREN_BENCH_LOSS_REPLICAS", "10"))
KILL = int(os.environ.get("WARREN_BENCH_LOSS_KILL", "2"))
MANAGERS = int(os.environ.get("WARREN_BENCH_LOSS_MANAGERS", "1"))
PERIOD = os.environ.get("WARREN_BENCH_LOSS_PERIOD", "")  # "" = the cluster default
START_DELAY = os.environ.get("WARREN_BENCH_LOSS_START_DELAY", "20ms")
# "off": tasks get no overlay address, so the endpoints every node is sent stay small; at 100
# nodes the simulator otherwise spends its time parsing whole endpoint lists (ADR 68).
OVERLAY = os.environ.get("WARREN_BENCH_LOSS_OVERLAY", "sim")
TIMEOUT = 600.0
OVERLAY_RANGE = "10.128.0.0/12"
STAGES = ("orphaned", "created", "starting", "running")


@contextlib.contextmanager
def _managers(root: Path, init: list[str]) -> Iterator[list[Any]]:
    from tests.integration.harness import Manager, manager_trio

    if MANAGERS == 3:
        with manager_trio(root, init_args=init, schedule_on_manager=False) as trio:
            yield trio
        return
    (root / "m1").mkdir()
    manager = Manager(root / "m1", start_args=init, schedule_on_manager=False)
    try:
        manager.start()
        yield [manager]
    finally:
        manager.stop()


def _stub(manager: Any) -> Any:
    return manager.control((manager.founder or manager).data_dir / "admin")


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": round(min(values), 2), "p50": round(statistics.median(values), 2), "max": round(max(values), 2)}


def timeline(events: list[Any], dead: set[str], killed_at: float) -> dict[str, Any]:
    """Per lost task (a task on a killed node orphaned), the time of each stage after the kill."""
    down = [e.time - killed_at for e in events if e.type == "node" and e.action == "down" and e.actor_id in dead]
    lost: dict[tuple[str, str], float] = {}
    lost_again = 0  # a replacement placed on another killed node, lost with it in turn
    for e in events:
        if e.type == "task" and e.action == "orphaned" and e.attributes.get("node_id") in dead:
            key = (e.attributes["service_id"], e.attributes["slot"])
            lost_again += key in lost
            lost.setdefault(key, e.time)
    lost_ids = {e.actor_id for e in events if e.type == "task" and e.action == "orphaned"}
    stages: dict[str, dict[tuple[str, str], float]] = {s: {} for s in STAGES[1:]}
    first_event: set[str] = set()
    for e in events:
        if e.type != "task" or e.attributes.get("node_id") in dead:
            continue
        key = (e.attributes.get("service_id", ""), e.attributes.get("slot", ""))
        if key not in lost or e.time < lost[key] or e.actor_id in lost_ids:
            continue
        if e.actor_id not in first_event:  # the replacement's first event is its creation
            first_event.add(e.actor_id)
            stages["created"].setdefault(key, e.time)
        if e.action in stages:
            stages[e.action].setdefault(key, e.time)
    out: dict[str, Any] = {"node_down": sorted(round(d, 2) for d in down), "lost_tasks": len(lost)}
    out["lost_again"] = lost_again
    out["leader_changes"] = sum(1 for e in events if e.type == "cluster" and e.action == "leader")
    out["orphaned"] = _spread([t - killed_at for t in lost.values()])
    for stage, times in stages.items():
        out[stage] = _spread([t - killed_at for t in times.values()])
        out[f"{stage}_count"] = len(times)
    # The goal per task: running elsewhere within 2 s of its own node found down (its orphaning).
    out["running_after_own_node_down"] = _spread([t - lost[k] for k, t in stages["running"].items()])
    return out


def one_run() -> dict[str, Any]:
    from tests.integration.simrig import SimProcess
    from warren.api.v1 import control_pb2 as cpb
    from warren.api.v1 import types_pb2 as tpb

    root = Path(tempfile.mkdtemp(prefix="warren-bench-loss-"))
    init = ["--overlay-range", OVERLAY_RANGE, *(["--heartbeat-period", PERIOD] if PERIOD else [])]
    sim = None
    total = SERVICES * REPLICAS
    try:
        with _managers(root, init) as managers:
            first = managers[0]
            stub = _stub(first)
            sim = SimProcess(first, root, NODES, "--start-delay", START_DELAY, "--overlay", OVERLAY)
            wait_for(lambda: sim.status(states=False)["connected"] >= NODES, TIMEOUT, "every session", 0.5)
            for s in range(SERVICES):
                spec = tpb.ServiceSpec(name=f"loss-{s:04d}", image="busybox", replicas=REPLICAS)
                stub.CreateService(cpb.CreateServiceRequest(spec=spec), timeout=60)
            wait_for(lambda: sim.status(states=False)["running"] >= total, TIMEOUT, "every task running", 0.5)
            info = stub.GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=10)
            by_name = {n.hostname: n.id for n in stub.ListNodes(cpb.ListNodesRequest(), timeout=30).nodes}

            spies = []
            if os.environ.get("WARREN_BENCH_LOSS_PROFILE"):  # py-spy on the simulator and the first manager
                for label, pid in (("sim", sim.process.pid), ("m1", first.process.pid)):
                    seconds = os.environ["WARREN_BENCH_LOSS_PROFILE"]
                    command = ["py-spy", "record", "-p", str(pid), "-d", seconds, "-r", "50", "--format", "raw"]
                    out = ["-o", str(root / f"{label}.spy")]
                    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
                    spies.append(subprocess.Popen([*command, *out], **quiet))  # type: ignore[call-overload]
                time.sleep(1)
            killed_at = time.time()
            names = sim.kill(KILL)
            kill_s = time.time() - killed_at
            dead = {by_name[n] for n in names}

            def all_down() -> bool:
                nodes = stub.ListNodes(cpb.ListNodesRequest(), timeout=30).nodes
                return all(n.status == "down" for n in nodes if n.id in dead)

            wait_for(all_down, TIMEOUT, "the killed nodes down")
            down_s = time.time() - killed_at
            wait_for(lambda: sim.status(states=False)["running"] >= total, TIMEOUT, "the lost tasks running elsewhere")
            elsewhere_s = time.time() - killed_at
            for spy in spies:
                spy.wait()
            request = cpb.StreamEventsRequest(since=killed_at - 1, until=time.time() + 1)
            events = list(stub.StreamEvents(request, timeout=60))
            if os.environ.get("WARREN_BENCH_LOSS_KEEP"):
                with open(root / "events.jsonl", "w") as out:
                    for e in events:
                        row = {"t": round(e.time - killed_at, 3), "type": e.type, "action": e.action, "id": e.actor_id}
                        print(json.dumps({**row, **dict(e.attributes)}), file=out)
            return {
                "managers": MANAGERS,
                "overlay": OVERLAY,
                "nodes": NODES,
                "tasks": total,
                "killed": KILL,
                "heartbeat_period_s": info.heartbeat_period,
                "down_timeout_s": 3 * info.heartbeat_period,
                "kill_call_s": round(kill_s, 2),
                "all_down_polled_s": round(down_s, 2),
                "all_running_polled_s": round(elsewhere_s, 2),
                "past_down_s": round(elsewhere_s - down_s, 2),
                "load_avg": os.getloadavg()[0],
                "timeline": timeline(events, dead, killed_at),
            }
    except BaseException:
        if sim is not None:
            print("--- last lines of the simulator's log ---", *sim.log().splitlines()[-20:], sep="\n", file=sys.stderr)
        raise
    finally:
        if sim is not None:
            sim.stop()
        if os.environ.get("WARREN_BENCH_LOSS_KEEP"):
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    for _ in range(int(os.environ.get("WARREN_BENCH_LOSS_RUNS", "1"))):
        print(json.dumps(one_run()), flush=True)
