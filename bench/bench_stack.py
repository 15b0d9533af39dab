"""A 20-service stack (#14, ADR 49), through the API, end to end: `stack plan` of it on a cluster
without it, then its deploy until every task runs, on one manager and one exec agent (real
processes on loopback). The stack is built in code (the Compose loader is timed apart); each
service runs one `sleep` task. Also the plan of the deployed stack (no change), which is what
a CI job that checks for drift runs.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import figure

SERVICES = 20
PLAN_RUNS = 10


def _stack(marker: str) -> object:
    from warren.model import RestartPolicy, ServiceSpec
    from warren.stack.spec import StackObject, StackService, StackSpec

    services = tuple(
        StackService(
            ServiceSpec(
                name=f"bench_s{i:02d}",
                image="exec",
                command=("sh", "-c", "exec sleep 600", marker),
                constraints=("node.role==worker",),
                stop_grace_period=1.0,
                restart=RestartPolicy(delay=0.2),
            )
        )
        for i in range(SERVICES)
    )
    return StackSpec(name="bench", services=services, configs=(StackObject("bench_conf", b"x=1"),))


def run() -> dict[str, object]:
    from tests.fixtures.exec_cluster import exec_cluster
    from tests.waiting import wait_for
    from warren.api import stackconvert
    from warren.api.v1 import control_pb2 as cpb

    root = Path(tempfile.mkdtemp(prefix="warren-bench-stack-"))
    try:
        with exec_cluster(root, "bench-stack") as (manager, _agent, procs):
            control = manager.control()
            wait_for(
                lambda: any(
                    n.status == "ready" for n in control.ListNodes(cpb.ListNodesRequest()).nodes if n.role == "worker"
                ),
                timeout=60,
                message="the worker",
            )
            stack = stackconvert.stack_to_pb(_stack(procs.marker.decode()))  # type: ignore[arg-type]

            def deploy(dry_run: bool) -> tuple[float, object]:
                start = time.perf_counter()
                reply = control.DeployStack(cpb.DeployStackRequest(stack=stack, dry_run=dry_run), timeout=60)
                return time.perf_counter() - start, reply

            plans_new = [deploy(True)[0] for _ in range(PLAN_RUNS)]
            start = time.perf_counter()
            committed, _ = deploy(False)

            def running() -> bool:
                tasks = control.ListTasks(cpb.ListTasksRequest(), timeout=10).tasks
                return sum(1 for t in tasks if t.state == "running") == SERVICES

            wait_for(running, timeout=180, interval=0.05, message="every task of the stack running")
            converged = time.perf_counter() - start
            plans_same = []
            for _ in range(PLAN_RUNS):
                took, reply = deploy(True)
                assert not reply.changes  # type: ignore[attr-defined]
                plans_same.append(took)
            control.RemoveStack(cpb.RemoveStackRequest(name="bench"), timeout=30)
            wait_for(lambda: not procs.pids(), timeout=60, message="the stack's processes to stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def ms(values: list[float]) -> float:
        return round(statistics.median(values) * 1000, 1)

    return {
        "name": "stack",
        "note": f"through the API, end to end: a {SERVICES}-service stack (one exec task each) built in code, on one "
        "manager and one exec agent on loopback; plans are DeployStack(dry_run) calls, medians of "
        f"{PLAN_RUNS}",
        "services": SERVICES,
        "deploy_commit_s": round(committed, 3),
        "deploy_converged_s": round(converged, 3),
        "figures": [
            figure(f"Plan of a new {SERVICES}-service stack (median)", ms(plans_new), "ms"),
            figure(f"Deploy of {SERVICES} services: the call (one Raft entry)", round(committed * 1000, 1), "ms"),
            figure(f"Deploy of {SERVICES} services until every task runs", round(converged, 2), "s"),
            figure("Plan of the deployed stack, no change (median)", ms(plans_same), "ms"),
        ],
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
