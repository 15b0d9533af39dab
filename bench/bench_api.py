"""Control API latency and throughput against one real manager process, through real gRPC + mTLS.

Goals: write p99 <= 50 ms (CreateService, ScaleService); read p99 <= 10 ms (GetService,
ListServices with ~300 services); `warren service ls` wall time < 300 ms (median of 10).
Concurrent write throughput (8 client threads, ~5 s) is reported without a goal.
Cluster write throughput (issue #15, 3 managers and 64 clients) is bench_api_cluster's.

Each write is one synchronous Raft commit on a single-manager cluster. Services with replicas > 0
also make the orchestrator create tasks and the scheduler assign them to the manager's own node
while the benchmark keeps writing.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.bench_api_cluster import IMAGE, READ_PAGE, TIMEOUT, cluster_figures, cluster_writes
from bench.common import REPO, figure, latency_summary, running_manager

N_WRITES = 300
N_READS = 300
CLI_RUNS = 10
CONCURRENT_THREADS = 8
CONCURRENT_SECONDS = 5.0

WRITE_P99_GOAL_MS = 50.0
READ_P99_GOAL_MS = 10.0
CLI_GOAL_MS = 300.0


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def run() -> dict[str, object]:
    from warren.api.v1 import control_pb2 as cpb
    from warren.api.v1 import control_pb2_grpc
    from warren.api.v1 import types_pb2 as tpb

    def create(stub, name: str, replicas: int) -> None:
        stub.CreateService(
            cpb.CreateServiceRequest(spec=tpb.ServiceSpec(name=name, image=IMAGE, replicas=replicas)), timeout=TIMEOUT
        )

    results: dict[str, object] = {"name": "api"}
    figures: list[dict[str, object]] = []
    with running_manager("api") as manager:
        channel = manager.channel()
        try:
            stub = control_pb2_grpc.ControlStub(channel)

            # Warm-up: connection + TLS handshake, first-call code paths on both sides.
            for i in range(30):
                create(stub, f"warmup-{i}", i % 2)
                stub.GetService(cpb.GetServiceRequest(service=f"warmup-{i}"), timeout=TIMEOUT)
                stub.ScaleService(cpb.ScaleServiceRequest(service=f"warmup-{i}", replicas=0), timeout=TIMEOUT)
                stub.ListServices(cpb.ListServicesRequest(), timeout=TIMEOUT)
            for i in range(30):
                stub.RemoveService(cpb.RemoveServiceRequest(service=f"warmup-{i}"), timeout=TIMEOUT)

            # 1. CreateService: every third service has one replica, so tasks get created and scheduled.
            create_lat: dict[int, list[float]] = {0: [], 1: []}
            replicas_of: dict[str, int] = {}
            for i in range(N_WRITES):
                name, replicas = f"svc-{i:04d}", 1 if i % 3 == 0 else 0
                create_lat[replicas].append(_timed(create, stub, name, replicas))
                replicas_of[name] = replicas
            all_creates = create_lat[0] + create_lat[1]
            results["create_service"] = {
                "all": latency_summary(all_creates),
                "replicas_0": latency_summary(create_lat[0]),
                "replicas_1": latency_summary(create_lat[1]),
            }

            # 2. ScaleService: each service once, 0 -> 1 and 1 -> 2, so the scheduler places a task each time.
            scale_lat = []
            for name, replicas in replicas_of.items():
                req = cpb.ScaleServiceRequest(service=name, replicas=replicas + 1)
                scale_lat.append(_timed(stub.ScaleService, req))
            results["scale_service"] = latency_summary(scale_lat)

            # 3. Reads with N_WRITES services in the store.
            names = list(replicas_of)
            get_lat = [
                _timed(stub.GetService, cpb.GetServiceRequest(service=names[(i * 7) % len(names)]))
                for i in range(N_READS)
            ]
            list_req = cpb.ListServicesRequest()
            listed = len(stub.ListServices(list_req, timeout=TIMEOUT).services)
            list_lat = [_timed(stub.ListServices, list_req) for _ in range(N_READS)]
            results["get_service"] = latency_summary(get_lat)
            results["list_services"] = {**latency_summary(list_lat), "services": listed}

            # 4. CLI wall time: a fresh interpreter per run, as an operator would see it.
            results["cli"] = _cli_times(manager)

            # 5. Concurrent writes: 8 threads, one channel each, creating services for ~5 s.
            results["concurrent_create"] = _concurrent_creates(manager, create)
        finally:
            channel.close()

    # 6. Writes through the API of a 3-manager cluster, 64 clients (its own managers).
    results["cluster_writes"] = cluster_writes()

    c = results["create_service"]
    figures += [
        figure("CreateService p50 (all)", c["all"]["p50_ms"], "ms"),
        figure("CreateService p99 (all)", c["all"]["p99_ms"], "ms", WRITE_P99_GOAL_MS, "<="),
        figure("CreateService p99 (replicas=0)", c["replicas_0"]["p99_ms"], "ms", WRITE_P99_GOAL_MS, "<="),
        figure("CreateService p99 (replicas=1)", c["replicas_1"]["p99_ms"], "ms", WRITE_P99_GOAL_MS, "<="),
        figure("ScaleService p50", results["scale_service"]["p50_ms"], "ms"),
        figure("ScaleService p99", results["scale_service"]["p99_ms"], "ms", WRITE_P99_GOAL_MS, "<="),
        figure("GetService p50", results["get_service"]["p50_ms"], "ms"),
        figure("GetService p99", results["get_service"]["p99_ms"], "ms", READ_P99_GOAL_MS, "<="),
        figure(f"ListServices p50 ({listed} services)", results["list_services"]["p50_ms"], "ms"),
        figure(
            f"ListServices p99 ({listed} services)", results["list_services"]["p99_ms"], "ms", READ_P99_GOAL_MS, "<="
        ),
        figure(
            "`warren service ls` median wall time", results["cli"]["service_ls"]["median_ms"], "ms", CLI_GOAL_MS, "<"
        ),
        figure("`warren service ls -q` median (no table)", results["cli"]["service_ls_quiet"]["median_ms"], "ms"),
        figure("`warren --help` median (startup only)", results["cli"]["help"]["median_ms"], "ms"),
        figure(
            f"Concurrent CreateService ({CONCURRENT_THREADS} threads)",
            results["concurrent_create"]["commits_per_s"],
            "commits/s",
        ),
        figure("Concurrent CreateService p99", results["concurrent_create"]["latency"]["p99_ms"], "ms"),
    ]
    figures += cluster_figures(results["cluster_writes"])
    results["figures"] = figures
    return results


def _cli_times(manager) -> dict[str, object]:
    """Median wall time of `warren service ls`, plus two variants that split the cost: `-q` (same RPC,
    no rich table) and `--help` (interpreter start + argument parsing, no grpc import, no RPC)."""
    env = manager.env()
    # As an installed CLI runs: with a bytecode cache (this sandbox sets PYTHONDONTWRITEBYTECODE=1,
    # which would recompile warren's modules on every run). The cache lives in the temp dir.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(manager.root / "pycache")
    base = [sys.executable, "-m", "warren.cli.main"]

    def once(args: list[str]) -> float:
        start = time.perf_counter()
        proc = subprocess.run(base + args, capture_output=True, text=True, env=env, cwd=manager.root, timeout=60)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"`warren {' '.join(args)}` failed ({proc.returncode}): {proc.stderr}")
        return elapsed * 1000

    out: dict[str, object] = {"runs": CLI_RUNS, "bytecode_cache": True}
    for key, args in (
        ("service_ls", ["service", "ls"]),
        ("service_ls_quiet", ["service", "ls", "-q"]),
        ("help", ["--help"]),
    ):
        once(args)  # warm-up: page cache, bytecode cache
        runs = [once(args) for _ in range(CLI_RUNS)]
        out[key] = {
            "command": "python3 -m warren.cli.main " + " ".join(args),
            "median_ms": round(statistics.median(runs), 1),
            "min_ms": round(min(runs), 1),
            "max_ms": round(max(runs), 1),
            "all_ms": [round(r, 1) for r in runs],
        }
    return out


def _concurrent_creates(manager, create) -> dict[str, object]:
    from warren.api.v1 import control_pb2_grpc

    latencies: list[list[float]] = [[] for _ in range(CONCURRENT_THREADS)]
    errors: list[str] = []
    ready = threading.Barrier(CONCURRENT_THREADS + 1)
    go = threading.Event()
    deadline = [0.0]

    def worker(index: int) -> None:
        channel = manager.channel()
        try:
            stub = control_pb2_grpc.ControlStub(channel)
            create(stub, f"conc-warm-{index}", 0)  # connect before the clock starts
            ready.wait()
            go.wait()
            i = 0
            while time.perf_counter() < deadline[0]:
                start = time.perf_counter()
                try:
                    create(stub, f"conc-{index}-{i:05d}", 0)
                except Exception as exc:  # counted and reported, not fatal
                    errors.append(repr(exc)[:200])
                else:
                    latencies[index].append(time.perf_counter() - start)
                i += 1
        finally:
            channel.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(CONCURRENT_THREADS)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    deadline[0] = start + CONCURRENT_SECONDS
    go.set()
    for t in threads:
        t.join(timeout=CONCURRENT_SECONDS + 4 * TIMEOUT)
    elapsed = time.perf_counter() - start
    flat = [x for per in latencies for x in per]
    return {
        "threads": CONCURRENT_THREADS,
        "seconds": round(elapsed, 3),
        "commits": len(flat),
        "errors": len(errors),
        "first_errors": errors[:3],
        "commits_per_s": round(len(flat) / elapsed, 1),
        "latency": latency_summary(flat) if flat else {},
    }


LIST_PAGE_SERVICES = (1_000, 10_000)
LIST_PAGE_TASKS = 10  # tasks per service, as in S1: each listed service counts its replicas
LIST_PAGE_CALLS = 200


def list_pages(services: int) -> dict[str, float]:
    """In-process (the handler on the in-memory ports, no gRPC): the median time of a
    ListServices page of 100 and of a ListTasks page of 100 of the whole cluster, first and
    last, with `services` services of 10 running tasks."""
    import asyncio

    from msgspec.structs import replace

    from warren.api.v1 import control_pb2 as cpb
    from warren.manager import controlapi, paging
    from warren.manager.controlapi import ControlService
    from warren.manager.inmemory import InMemoryRaft, InMemoryState
    from warren.model import Service, ServiceSpec, Task, TaskState
    from warren.state import ClusterState, Put

    state = ClusterState()
    for i in range(services):
        spec = ServiceSpec(name=f"svc-{i:05d}", image=IMAGE, replicas=LIST_PAGE_TASKS)
        state.apply([Put("service", Service(id=f"s{i}", spec=spec))])
        task = Task(id="", service_id=f"s{i}", service_name=spec.name, slot=1, spec=spec, spec_version=1, node_id="n1")
        replicas = [replace(task, id=f"s{i}.{r}", slot=r + 1, state=TaskState.RUNNING) for r in range(LIST_PAGE_TASKS)]
        state.apply([Put("task", t) for t in replicas])
    store = InMemoryState(state)
    control = ControlService(store, InMemoryRaft(store, "127.0.0.1:1"), raft_secret="s")
    loop = asyncio.new_event_loop()
    # The last page's token is the key of the item before it, as the server makes it.
    last_service = sorted(s.spec.name for s in state.services.values())[-READ_PAGE - 1]
    last_task = sorted(state.tasks.values(), key=controlapi._task_order)[-READ_PAGE - 1]
    last_tokens = {"": paging.encode_token("services", (last_service,))}
    last_tokens["tasks_"] = paging.encode_token("tasks", controlapi._task_order(last_task))
    out: dict[str, float] = {}
    for label in ("first", "last", "tasks_first", "tasks_last"):
        kind = "tasks_" if label.startswith("tasks_") else ""
        call = control.ListTasks if kind else control.ListServices
        paged = (cpb.ListTasksRequest if kind else cpb.ListServicesRequest)(page_size=READ_PAGE)
        paged.page_token = last_tokens[kind] if label.endswith("last") else ""
        times = [_timed(loop.run_until_complete, call(paged, None)) for _ in range(LIST_PAGE_CALLS)]
        out[f"{label}_ms"] = round(statistics.median(times) * 1000, 3)
    loop.close()
    return out


def compare_list_pages(base: Path, rounds: int) -> dict[str, object]:
    """`list_pages` at each size, the code of `base` (old) and of this tree (new) alternated in
    one run: a child process per side and round runs this file against that tree's code."""
    runs: list[dict[str, object]] = []
    samples: dict[str, list[float]] = {}
    for services in LIST_PAGE_SERVICES:
        for _ in range(rounds):
            for side, tree in (("old", base.resolve()), ("new", REPO)):
                env = {**os.environ, "PYTHONPATH": str(tree)}
                args = [sys.executable, str(Path(__file__).resolve()), "--list-pages", str(services)]
                proc = subprocess.run(args, cwd=tree, env=env, capture_output=True, text=True, check=True)
                pages: dict[str, float] = json.loads(proc.stdout)
                for page, ms in pages.items():
                    samples.setdefault(f"{side}_{services}_{page}", []).append(ms)
                runs.append({"side": side, "services": services, **pages})
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    medians = {key: statistics.median(values) for key, values in samples.items()}
    return {"label": "in-process", "rounds": rounds, "medians": medians, "runs": runs, "loadavg": os.getloadavg()}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--list-pages"]:  # SERVICES: one side of compare_list_pages
        print(json.dumps(list_pages(int(sys.argv[2]))))
        sys.exit(0)
    if sys.argv[1:2] == ["--compare-list-pages"]:  # BASE_TREE [ROUNDS]
        print(json.dumps(compare_list_pages(Path(sys.argv[2]), int(sys.argv[3]) if sys.argv[3:] else 5), indent=2))
        sys.exit(0)
    print(json.dumps(run(), indent=2))
