"""Manager memory holding 10K tasks: resident set size of one real manager process.

Goal: VmRSS <= 150 MB with 10,000 tasks. The benchmark starts a manager, creates 100 services x
100 replicas through the API (no reservations, so all of them fit on the manager's own node),
waits until ListTasks shows all 10,000 assigned to a node, and reads /proc/<pid>/status before
and after. The time from the first CreateService to convergence is reported too.
"""

from __future__ import annotations

import json
import sys
import time

from bench.common import child_pids, figure, rss_kib, running_manager

SERVICES = 100
REPLICAS = 100
TARGET = SERVICES * REPLICAS
IMAGE = "busybox:latest"
CONVERGE_TIMEOUT = 180.0
RSS_GOAL_MIB = round(150e6 / 2**20, 1)  # the goal is 150 MB (decimal) = 143.1 MiB; RSS is reported in MiB
TIMEOUT = 30.0


def run(services: int = SERVICES, replicas: int = REPLICAS) -> dict[str, object]:
    """`services` x `replicas` tasks (100 x 100 in `make bench`; `python3 -m bench.bench_memory
    1000 100` measures 100,000)."""
    from warren.api.v1 import control_pb2 as cpb
    from warren.api.v1 import control_pb2_grpc
    from warren.api.v1 import types_pb2 as tpb

    target = services * replicas
    results: dict[str, object] = {"name": "memory", "services": services, "replicas_per_service": replicas}
    with running_manager("memory") as manager:
        pid = manager.process.pid
        channel = manager.channel()
        try:
            stub = control_pb2_grpc.ControlStub(channel)
            stub.ListServices(cpb.ListServicesRequest(), timeout=TIMEOUT)  # connected, all code paths loaded
            time.sleep(1.0)
            before = rss_kib(pid)

            start = time.perf_counter()
            for s in range(services):
                spec = tpb.ServiceSpec(name=f"mem-{s:03d}", image=IMAGE, replicas=replicas)
                stub.CreateService(cpb.CreateServiceRequest(spec=spec), timeout=TIMEOUT)
            created = time.perf_counter() - start

            # Poll per service: one ListTasks of all 10K tasks would exceed gRPC's 4 MB default limit.
            assigned, polls, peak_during = 0, 0, 0
            deadline = start + CONVERGE_TIMEOUT * max(1, target // TARGET)
            while True:
                assigned = _assigned(stub, cpb, services)
                polls += 1
                peak_during = max(peak_during, rss_kib(pid)["VmRSS"])
                if assigned >= target or time.perf_counter() > deadline:
                    break
                time.sleep(0.25)
            converged = time.perf_counter() - start
            if assigned < target:
                raise RuntimeError(f"only {assigned}/{target} tasks assigned after {CONVERGE_TIMEOUT}s")

            after = rss_kib(pid)
            time.sleep(3.0)  # settle: the orchestrator's follow-up work, allocator
            settled = rss_kib(pid)
            info = stub.GetClusterInfo(cpb.GetClusterInfoRequest(), timeout=TIMEOUT)
            children = child_pids(pid)
        finally:
            channel.close()

    mb = lambda kib: round(kib / 1024, 1)  # noqa: E731
    results.update(
        {
            "pid_children": len(children),
            "tasks_in_store": info.tasks,
            "tasks_assigned": assigned,
            "create_seconds": round(created, 3),
            "converge_seconds": round(converged, 3),
            "converge_after_last_create_seconds": round(converged - created, 3),
            "polls": polls,
            "rss_before_mib": mb(before["VmRSS"]),
            "rss_after_mib": mb(after["VmRSS"]),
            "rss_settled_mib": mb(settled["VmRSS"]),
            "rss_anon_settled_mib": mb(settled.get("RssAnon", 0)),
            "rss_peak_mib": mb(settled["VmHWM"]),
            "rss_per_task_kib": round((settled["VmRSS"] - before["VmRSS"]) / target, 2),
        }
    )
    results["figures"] = [
        figure("Manager RSS, idle", results["rss_before_mib"], "MiB"),
        figure(f"Manager RSS with {target:,} tasks", results["rss_settled_mib"], "MiB", RSS_GOAL_MIB, "<="),
        figure("Manager peak RSS (VmHWM)", results["rss_peak_mib"], "MiB"),
        figure(f"Time to {target:,} tasks assigned", results["converge_seconds"], "s"),
    ]
    return results


def _assigned(stub, cpb, services: int) -> int:
    total = 0
    for s in range(services):
        tasks = stub.ListTasks(cpb.ListTasksRequest(service=f"mem-{s:03d}"), timeout=TIMEOUT).tasks
        total += sum(1 for t in tasks if t.node_id and t.state != "pending" and t.state != "new")
    return total


if __name__ == "__main__":
    print(json.dumps(run(*(int(a) for a in sys.argv[1:3])), indent=2))
