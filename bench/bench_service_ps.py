"""`warren service ps` of one big service, end to end (#15 S4): `python3 -m bench.bench_service_ps`.

The rig: one real manager (tests/integration/harness.Manager, without its own agent, so that no
task lands on it) and one `warren sim` process of NODES nodes with the simulated overlay (ADR 50),
one service of REPLICAS replicas, all running. What is timed is the real CLI in a fresh process,
as an operator runs it: interpreter start, imports, TLS, every page, formatting, with a warm
bytecode cache (a first run per command fills it and is not counted). Median of RUNS.

`--base DIR` (a checkout of another commit, e.g. `git worktree add --detach DIR main`) builds a
second rig from DIR's code, manager, simulator and CLI alike, and the two are timed alternately in
the same run, so that the machine's load weighs on both sides alike. `--hold` builds this tree's
rig and waits (until SIGINT/SIGTERM) with the manager's PID and the CLI's environment printed, for
py-spy. These are measurements, not assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO, cpu_seconds, figure, machine_info, manager_with_sim

NODES = 50  # the simulated overlay gives each node a /24: about 250 tasks a node
REPLICAS = 10_000
RUNS = 5
# Starts that fail (the simulator's --fail-rate): their tasks stay as history beside their slots'
# replacements, so `service ps` hides them and `service ps --all` lists them.
FAIL_RATE = 0.03
OVERLAY_RANGE = "10.128.0.0/12"
RPC_TIMEOUT = 60.0
CLI_GOAL_S = 1.0
SERVICE = "big"


def _tree_manager(root: Path, tree: Path) -> Any:
    """A harness Manager whose processes (manager, simulator, CLI) run the code in `tree`."""
    from tests.integration.harness import Manager

    @dataclass
    class TreeManager(Manager):
        def env(self) -> dict[str, str]:
            env = super().env()
            env["PYTHONPATH"] = str(tree)
            env.pop("PYTHONDONTWRITEBYTECODE", None)  # as an installed CLI runs: with a bytecode cache
            env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
            return env

    return TreeManager(root, schedule_on_manager=False, start_args=["--overlay-range", OVERLAY_RANGE])


@dataclass
class Rig:
    label: str
    tree: Path
    manager: Any
    sim: Any

    def cli(self, *args: str) -> tuple[Sample, subprocess.CompletedProcess[str]]:
        """Run the CLI once: its wall time, its own CPU time and the manager's meanwhile."""
        command = [sys.executable, "-m", "warren.cli.main", *args]
        manager_cpu = cpu_seconds(self.manager.process.pid)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(
            command, capture_output=True, text=True, env=self.manager.env(), cwd=self.manager.root, timeout=300
        )
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cli_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        return Sample(wall, cli_cpu, cpu_seconds(self.manager.process.pid) - manager_cpu), proc


@dataclass
class Sample:
    wall_s: float
    cli_cpu_s: float
    manager_cpu_s: float


@contextlib.contextmanager
def rig(label: str, tree: Path, nodes: int, replicas: int, fail_rate: float = FAIL_RATE) -> Iterator[Rig]:
    """One manager, `nodes` sim nodes and one service of `replicas` replicas, all running (some
    after failed starts, kept as history)."""
    from tests.waiting import wait_for
    from warren.api.v1 import control_pb2 as cpb
    from warren.api.v1 import types_pb2 as tpb

    with manager_with_sim(f"ps-{label}", lambda root: _tree_manager(root, tree), start_timeout=60) as manager_and_sim:
        manager = manager_and_sim.manager
        sim = manager_and_sim.start_sim(nodes, "--overlay", "sim", "--fail-rate", str(fail_rate), "--seed", "1")
        wait_for(lambda: _sim_count(sim, "connected") >= nodes, timeout=300, interval=0.5, message="sim sessions")
        spec = tpb.ServiceSpec(name=SERVICE, image="busybox", replicas=replicas)
        manager.control().CreateService(cpb.CreateServiceRequest(spec=spec), timeout=RPC_TIMEOUT)
        wait_for(
            lambda: _sim_count(sim, "running") >= replicas,
            timeout=max(600, replicas / 10),
            interval=1.0,
            message=f"{replicas} tasks running",
        )
        yield Rig(label, tree, manager, sim)


def _sim_count(sim: Any, key: str) -> int:
    """One of the simulator's counts; 0 while its control socket is too busy to answer."""
    from warren.node.sim import SimError

    try:
        return int(sim.status()[key])
    except SimError:
        return 0


def commands(rig: Rig) -> dict[str, list[str]]:
    """What is timed: `service ps` as a table, -q, JSON and with history, and `node ps` of one node."""
    from warren.api.v1 import control_pb2 as cpb

    nodes = rig.manager.control().ListNodes(cpb.ListNodesRequest(), timeout=RPC_TIMEOUT).nodes
    node = min(n.hostname for n in nodes if n.hostname.startswith("sim"))  # about REPLICAS / NODES tasks
    return {
        "service_ps": ["service", "ps", SERVICE],
        "service_ps_quiet": ["service", "ps", SERVICE, "-q"],
        "service_ps_json": ["service", "ps", SERVICE, "--format", "json"],
        "service_ps_all": ["service", "ps", SERVICE, "--all"],
        "node_ps": ["node", "ps", node],
        "node_ps_all_filtered": ["node", "ps", node, "--all", "--filter", "desired-state=running"],
    }


def time_alternated(rigs: list[Rig], runs: int) -> dict[str, dict[str, Any]]:
    """Each command `runs` times on each rig, the rigs taking turns; medians and all runs."""
    out: dict[str, dict[str, Any]] = {}
    plans = {r.label: commands(r) for r in rigs}  # the same commands (the node's name may differ)
    for name in plans[rigs[0].label]:
        samples: dict[str, list[Sample]] = {r.label: [] for r in rigs}
        lines: dict[str, int] = {}
        for r in rigs:  # fills each tree's bytecode cache; not counted
            _, proc = r.cli(*plans[r.label][name])
            if proc.returncode != 0:
                raise RuntimeError(f"{r.label}: warren {' '.join(plans[r.label][name])}: {proc.stderr.strip()[-500:]}")
        for _ in range(runs):
            for r in rigs:
                sample, proc = r.cli(*plans[r.label][name])
                if proc.returncode != 0:
                    raise RuntimeError(f"{r.label}: {proc.stderr.strip()[-500:]}")
                samples[r.label].append(sample)
                lines[r.label] = len(proc.stdout.splitlines())
        out[name] = {
            "argv": plans[rigs[0].label][name],
            **{
                r.label: {
                    "median_s": round(statistics.median(s.wall_s for s in samples[r.label]), 3),
                    "all_s": [round(s.wall_s, 3) for s in samples[r.label]],
                    "cli_cpu_median_s": round(statistics.median(s.cli_cpu_s for s in samples[r.label]), 3),
                    "manager_cpu_median_s": round(statistics.median(s.manager_cpu_s for s in samples[r.label]), 3),
                    "lines": lines[r.label],
                }
                for r in rigs
            },
        }
        print(f"   {name}: {json.dumps(out[name])}", flush=True)
    return out


def run(base: Path | None = None, nodes: int = NODES, replicas: int = REPLICAS, runs: int = RUNS) -> dict[str, Any]:
    trees = [("this", REPO)] + ([("base", base.resolve())] if base else [])
    result: dict[str, Any] = {
        "name": "service_ps",
        "label": "end to end",
        "params": {"nodes": nodes, "replicas": replicas, "runs": runs},
        "trees": {label: str(tree) for label, tree in trees},
        "machine": machine_info(),
        "loadavg_before": os.getloadavg(),
    }
    with contextlib.ExitStack() as stack:
        rigs = [stack.enter_context(rig(label, tree, nodes, replicas)) for label, tree in trees]
        result["loadavg_start"] = os.getloadavg()
        result["cli"] = time_alternated(rigs, runs)
        result["loadavg_end"] = os.getloadavg()
    result["figures"] = [
        figure(
            f"`warren {' '.join(entry['argv'])}` ({replicas:,} tasks, end to end)",
            entry["this"]["median_s"],
            "s",
            CLI_GOAL_S,
        )
        for name, entry in result["cli"].items()
    ]
    return result


def hold(nodes: int, replicas: int) -> None:
    with rig("hold", REPO, nodes, replicas) as r:
        env = r.manager.env()
        print(
            json.dumps(
                {
                    "manager_pid": r.manager.process.pid,
                    "WARREN_CONFIG": env["WARREN_CONFIG"],
                    "PYTHONPATH": env["PYTHONPATH"],
                    "cwd": str(r.manager.root),
                }
            ),
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt, SystemExit):
            while True:
                time.sleep(1)


IN_PROCESS_CALLS = 15


def list_tasks_in_process(replicas: int = REPLICAS) -> dict[str, float]:
    """In-process (the handler on the in-memory ports, no gRPC): the median CPU time of the
    ListTasks call `service ps` makes for one service of `replicas` running tasks (one page)."""
    import asyncio

    from msgspec.structs import replace

    from warren.api.v1 import control_pb2 as cpb
    from warren.manager.controlapi import ControlService
    from warren.manager.inmemory import InMemoryRaft, InMemoryState
    from warren.model import Service, ServiceSpec, Task, TaskState
    from warren.state import ClusterState, Put

    state = ClusterState()
    spec = ServiceSpec(name=SERVICE, image="busybox@sha256:" + "0" * 64, replicas=replicas)
    state.apply([Put("service", Service(id="s1", spec=spec))])
    task = Task(id="", service_id="s1", service_name=SERVICE, slot=1, spec=spec, spec_version=1, message="started")
    running = replace(task, state=TaskState.RUNNING, overlay_address="10.128.0.2")
    state.apply(
        [
            Put("task", replace(running, id=f"t{i:024d}", slot=i + 1, node_id=f"n{i % NODES:024d}", created_at=1.0 + i))
            for i in range(replicas)
        ]
    )
    store = InMemoryState(state)
    control = ControlService(store, InMemoryRaft(store, "127.0.0.1:1"), raft_secret="s")
    loop = asyncio.new_event_loop()
    request = cpb.ListTasksRequest(service=SERVICE, page_size=replicas)
    times = []
    for _ in range(IN_PROCESS_CALLS):  # CPU time: on a shared machine, wall time is mostly the others'
        t0 = time.process_time()
        reply = loop.run_until_complete(control.ListTasks(request, None))
        times.append(time.process_time() - t0)
    loop.close()
    return {"list_tasks_ms": round(statistics.median(times) * 1000, 1), "tasks": len(reply.tasks)}


def compare_in_process(base: Path, rounds: int) -> dict[str, Any]:
    """`list_tasks_in_process`, the code of `base` (old) and of this tree (new) alternated in one
    run: a child process per side and round runs this file against that tree's code."""
    samples: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(rounds):
        for side, tree in (("old", base.resolve()), ("new", REPO)):
            env = {**os.environ, "PYTHONPATH": str(tree)}
            args = [sys.executable, str(Path(__file__).resolve()), "--in-process-side"]
            proc = subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True, check=True)
            samples[side].append(json.loads(proc.stdout)["list_tasks_ms"])
            print(side, samples[side][-1], file=sys.stderr, flush=True)
    medians = {side: statistics.median(values) for side, values in samples.items()}
    return {"label": "in-process", "medians_ms": medians, "all_ms": samples, "loadavg": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="a checkout of the code to compare with, timed alternately")
    parser.add_argument("--nodes", type=int, default=NODES)
    parser.add_argument("--replicas", type=int, default=REPLICAS)
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--hold", action="store_true", help="build the rig and wait, for profiling")
    parser.add_argument("--in-process", action="store_true", help="only the manager's ListTasks, in-process")
    parser.add_argument("--in-process-side", action="store_true", help=argparse.SUPPRESS)  # one side of it
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: the rigs' processes are stopped
    if args.hold:
        hold(args.nodes, args.replicas)
        return
    if args.in_process_side:
        print(json.dumps(list_tasks_in_process(args.replicas)))
        return
    if args.in_process:
        if args.base is None:
            parser.error("--in-process compares with --base")
        print(json.dumps(compare_in_process(args.base, args.runs), indent=2))
        return
    result = run(args.base, args.nodes, args.replicas, args.runs)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
