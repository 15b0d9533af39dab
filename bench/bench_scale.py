"""Issue #15's load runs, end to end: `python3 -m bench.bench_scale --set s1|s2|small` (`make bench-scale`).

Three real managers (tests/integration/harness.manager_trio), one `warren sim` process (ADR 50)
with the simulated overlay, and a real Prometheus (bench/promserver.py) scraping the managers
every 5 s. Results go to bench/results/scale-<set>.json. What is timed is the whole pipeline
on a shared 2-core machine: managers, simulator, load generator and Prometheus share the CPUs.

- S1 (S2 at its size): services created through the gRPC API by CLIENTS concurrent clients
  (grpc.aio in its own process, spread over the three managers; followers forward writes), while
  two readers time GetService and ListServices. Timed: first create -> every task running (the
  simulator's count), placements/s (tasks on a node) and starts/s, client-side API p50/p99, the
  managers' RSS and CPU, Raft entries/s and bytes on disk. Prometheus gives the server-side
  figures: API latency histograms, the scheduling pass time, RSS and CPU by role.
- S3: kill KILL_PCT % of the sim nodes: time until the managers mark them down, until their tasks
  run elsewhere; then SIGKILL the leader: time until the next write is acknowledged, and check
  that every slot has exactly one running task (none lost, none duplicated).
- S4: CLI wall times (median of 3): `service ls`, `node ls`, `cluster info`, `service ps` of a
  10-replica service and of one service of BIG_REPLICAS replicas, each group once the leader is
  quiet (`quiet_leader`: the run's tail done); the wait and the leader's CPU meanwhile are kept.

These are measurements, not assertions: goals are reported as met or not met. S1's client is
bench/scale_load.py, S3 bench/scale_failure.py, S4 bench/scale_cli.py, and the headline figures
with their goals bench/scale_figures.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import REPO, cpu_seconds, machine_info, rss_kib, wait_for
from bench.scale_cli import s4
from bench.scale_cluster import IMAGE, RPC_TIMEOUT, Cluster
from bench.scale_failure import s3
from bench.scale_figures import figures

SETS: dict[str, dict[str, int]] = {
    # the seed's load test (#15 S1)
    "s1": {"nodes": 100, "services": 1000, "replicas": 10, "big_replicas": 10000},
    # #15 S2: 1,000 nodes, 100,000 tasks
    "s2": {"nodes": 1000, "services": 100, "replicas": 1000, "big_replicas": 10000},
    # a couple of minutes on a loaded 2-core machine
    "small": {"nodes": 20, "services": 200, "replicas": 10, "big_replicas": 2000},
}
CLIENTS = 32
# deploy/prometheus scrapes every 15 s. Every 5 s still gives the run's windows a dozen points or
# more; every 1 s, formatting 1,000 services' series took 12 % of the S1 leader's CPU.
SCRAPE_INTERVAL = "5s"
OVERLAY_RANGE = "10.128.0.0/12"  # 4,096 nodes: the simulated overlay gives each node a /24
CONTROL = "/warren.api.v1.Control/"
WRITES = "CreateService"
READS = "GetService|ListServices"


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Sampler(threading.Thread):
    """Peak RSS of each manager and the simulator's counts, every 0.5 s (2 s past 20,000 tasks),
    with the times at which the simulator first held `placed` tasks and first ran `running` of
    them, and at which the leader's state first held `running` of them: a report counts once the
    managers committed it (ADR 79: the leader's state once lagged the nodes by over a minute).
    It asks for no tasks by state: those read every simulated task; the leader's count comes
    from its /metrics (`warren_tasks`, counted from its state)."""

    def __init__(self, managers: list[Any], sim: Any, target: int, leader_count: Callable[[], int]) -> None:
        super().__init__(daemon=True)
        self.managers, self.sim, self.target = managers, sim, target
        self.leader_count = leader_count
        self.every = 0.5 if target <= 20_000 else 2.0
        self.peak_rss_kib: dict[str, int] = {}
        self.placed_at: float | None = None
        self.running_at: float | None = None
        self.leader_running_at: float | None = None
        self.leader_running = 0
        self.last: dict[str, Any] = {}
        self.min_connected: int | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for i, m in enumerate(self.managers):
                if m.process is not None and m.process.poll() is None:
                    key = f"m{i + 1}"
                    rss = rss_kib(m.process.pid)["VmRSS"]
                    self.peak_rss_kib[key] = max(self.peak_rss_kib.get(key, 0), rss)
            status = self.sim.status(states=False)
            now = time.time()
            self.last = status
            if status["task_count"] > 0:  # sessions once the run has started
                self.min_connected = min(status["connected"], self.min_connected or status["connected"])
            if self.placed_at is None and status["task_count"] >= self.target:
                self.placed_at = now
            if self.running_at is None and status["running"] >= self.target:
                self.running_at = now
            if self.leader_running_at is None and status["running"] > 0:
                with contextlib.suppress(OSError):  # a busy leader: ask again next time
                    self.leader_running = self.leader_count()
                    if self.leader_running >= self.target:
                        self.leader_running_at = time.time()
            if self.running_at is not None and self.leader_running_at is not None:
                return
            self.done.wait(self.every)


def _warm_up(cluster: Cluster, prom: Any) -> None:
    """One write through each manager, and a scrape of every manager after them, before the
    clock starts: the run's figures then count no cold first call, and its window's first
    samples (the last scrape before the run) hold the warm-up already."""
    from warren.api.v1 import control_pb2 as cpb
    from warren.api.v1 import types_pb2 as tpb

    for i, m in enumerate(cluster.managers):
        spec = tpb.ServiceSpec(name=f"warmup-{i}", image=IMAGE, replicas=0)
        cluster.stub(m).CreateService(cpb.CreateServiceRequest(spec=spec), timeout=RPC_TIMEOUT)
    written = time.time()
    wait_for(lambda: _scraped_after(prom, written), 60, "Prometheus scraping the warm-up writes", interval=0.5)


def _scraped_after(prom: Any, when: float) -> bool:
    """Whether Prometheus has scraped every manager since `when` (Unix time)."""
    stamps = [r["value"] for r in prom.query("timestamp(up)")]
    return bool(stamps) and min(stamps) >= when


class _Pinned:
    """Prometheus's answers at one instant `at`, so that every figure of a run has one window;
    and counts over the run, from each series' last sample before `before` to its last at `at`."""

    def __init__(self, prom: Any, at: float, before: float) -> None:
        self._prom, self._at, self._before = prom, at, before

    def counted(self, expr: str, label: str = "instance") -> dict[str, float]:
        """How much the counters of `expr` grew over the run, by `label`. Not increase(): with
        a few scrapes in the window it extrapolates to the window's ends, tripling the count."""
        then = {r["metric"].get(label, "?"): r["value"] for r in self._prom.query(expr, self._before)}
        now = {r["metric"].get(label, "?"): r["value"] for r in self._prom.query(expr, self._at)}
        return {key: value - then.get(key, 0.0) for key, value in now.items()}

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self._prom.query(expr, self._at))

    def scalar(self, expr: str) -> float | None:
        value = self._prom.scalar(expr, self._at)
        return None if value is None else float(value)

    def by_instance(self, expr: str) -> dict[str, float]:
        return dict(self._prom.by_instance(expr, self._at))


def _role_of(cluster: Cluster, leader: Any) -> dict[str, str]:
    return {f"m{i + 1}": ("leader" if m is leader else "follower") for i, m in enumerate(cluster.managers)}


def s1(
    cluster: Cluster, sim: Any, prom: Any, params: dict[str, int], clients: int, run_timeout: float
) -> dict[str, Any]:
    """The run; if the tasks are not all running within `run_timeout` of the last create, the
    figures so far, with all_running false (the caller then skips what needs a settled cluster)."""
    tasks = params["services"] * params["replicas"]
    managers = cluster.managers
    wait_for(lambda: cluster.leader() is not None, 120, "a leader", interval=0.5)
    leader = cluster.leader()
    _warm_up(cluster, prom)
    cpu_before = [cpu_seconds(m.process.pid) for m in managers]
    raft_before = prom.by_instance("warren_raft_commit_index")
    term_before = prom.scalar("max(warren_raft_term)")
    # Each manager's last scrape before the run: the windows below reach back to it, so that every
    # increase() has a sample from before the first create (S1 lasts less than two scrapes).
    scraped_before = min(r["value"] for r in prom.query("timestamp(up)"))

    def leader_running() -> int:
        # Its /metrics, served off its event loop: listing every service there (through a new
        # TLS channel each time) made the readers measured beside it wait 10-40 ms twice a second.
        from tests.integration.harness import metric_samples

        running = metric_samples(leader, "warren_tasks")
        return int(sum(value for labels, value in running if labels.get("state") == "running"))

    sampler = Sampler(managers, sim, tasks, leader_running)
    args = [sys.executable, "-m", "bench.scale_load", str(clients), str(params["services"])]
    args += [str(params["replicas"]), str(managers[0].data_dir / "admin"), *(m.addr for m in managers)]
    started = time.time()
    load = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    sampler.start()
    out, err = load.communicate(timeout=3600)
    if load.returncode != 0:
        sampler.done.set()
        raise RuntimeError(f"the load generator failed ({load.returncode}): {err[-2000:]}")
    client = json.loads(out)
    sampler.join(timeout=run_timeout)
    sampler.done.set()
    # The end of the pipeline: every task running on the nodes, and known so by the leader.
    finished = sampler.running_at is not None and sampler.leader_running_at is not None
    ended = max(sampler.running_at or 0.0, sampler.leader_running_at or 0.0) if finished else time.time()
    cpu = [round(cpu_seconds(m.process.pid) - b, 1) for m, b in zip(managers, cpu_before, strict=True)]
    first, last = client["first_create_at"], client["last_create_returned_at"]
    total_s = ended - first
    wait_for(lambda: _scraped_after(prom, ended + 1), 60, "Prometheus scraping the end of the run", interval=0.5)
    # Every figure at one instant, over one window: from each manager's last scrape before the
    # run to its first after it (quantiles). Counts are the counters' growth between those two
    # scrapes; a second's worth is a count over `total_s`.
    at = time.time()
    window = f"{math.ceil(at - min(first, scraped_before)) + 1}s"
    prom = _Pinned(prom, at, before=first)
    raft_after = prom.by_instance("warren_raft_commit_index")
    term_after = prom.scalar("max(warren_raft_term)")
    roles = _role_of(cluster, leader)

    def quantile_ms(q: float, metric: str, selector: str = "") -> float | None:
        """The q-quantile of a histogram over the run, in ms; None without samples."""
        value = prom.scalar(f"histogram_quantile({q}, sum by (le) (increase({metric}_bucket{{{selector}}}[{window}])))")
        return None if value is None else round(value * 1000, 2)

    def quantile(q: float, methods: str) -> float | None:
        return quantile_ms(q, "warren_api_request_duration_seconds", f'method=~"{CONTROL}({methods})"')

    def pass_quantile(q: float) -> float | None:
        return quantile_ms(q, "warren_scheduler_pass_duration_seconds")

    def stage_quantile(q: float, stage: str, instance: str) -> float | None:
        return quantile_ms(q, "warren_raft_proposal_seconds", f'stage="{stage}",instance=~"{instance}"')

    def status_quantile(q: float, instance: str) -> float | None:
        return quantile_ms(q, "warren_status_batch_duration_seconds", f'instance="{instance}"')

    leader_key = next(k for k, r in roles.items() if r == "leader")
    followers = "|".join(k for k, r in roles.items() if r != "leader")
    raft_entries = raft_after.get(leader_key, 0) - raft_before.get(leader_key, 0)
    prom_rss = prom.by_instance(f"max_over_time(process_resident_memory_bytes[{window}])")
    prom_cpu = prom.counted("process_cpu_seconds_total")
    last_status = sampler.last
    result = {
        "tasks": tasks,
        "all_running": finished,
        "running_at_end": last_status.get("running"),
        "leader_running_at_end": sampler.leader_running,
        "sim_starts_at_end": last_status.get("starts"),
        "sim_min_connected_during_run": sampler.min_connected,
        "raft_elections_during_run": None
        if term_before is None or term_after is None
        else int(term_after - term_before),
        "clients": clients,
        "leader": leader_key,
        "roles": roles,
        "first_create_to_all_running_s": round(total_s, 2),
        "create_phase_s": round(last - first, 2),
        # The two ends apart: the simulator's count, and the leader's state (ADR 79).
        "nodes_all_running_s": None if sampler.running_at is None else round(sampler.running_at - first, 2),
        "leader_all_running_s": None
        if sampler.leader_running_at is None
        else round(sampler.leader_running_at - first, 2),
        "last_create_to_all_running_s": round(ended - last, 2),
        "all_placed_s": None if sampler.placed_at is None else round(sampler.placed_at - first, 2),
        "placements_per_s": None if sampler.placed_at is None else round(tasks / (sampler.placed_at - first), 1),
        "starts_per_s": round(tasks / total_s, 1),
        "load_started_to_first_create_s": round(first - started, 2),
        "client": client,
        "managers_peak_rss_mib": {k: round(v / 1024, 1) for k, v in sampler.peak_rss_kib.items()},
        "managers_cpu_s": dict(zip(roles, cpu, strict=True)),
        "managers_cpu_pct": {k: round(100 * c / total_s, 1) for k, c in zip(roles, cpu, strict=True)},
        "raft_entries": int(raft_entries),
        "raft_entries_per_s": round(raft_entries / total_s, 1),
        "data_dir_bytes": {f"m{i + 1}": _dir_bytes(m.data_dir) for i, m in enumerate(managers)},
        "prometheus": {
            "window": window,
            # Scrapes that failed in the window (a manager too busy to answer within the interval):
            # a figure missing here for one manager is explained by them.
            "scrapes_failed": {
                key: int(value)
                for key, value in prom.by_instance(
                    f"count_over_time(up[{window}]) - sum_over_time(up[{window}])"
                ).items()
            },
            "write_p50_ms": quantile(0.5, WRITES),
            "write_p99_ms": quantile(0.99, WRITES),
            "read_p50_ms": quantile(0.5, READS),
            "read_p99_ms": quantile(0.99, READS),
            "scheduling_pass_p50_ms": pass_quantile(0.5),
            "scheduling_pass_p99_ms": pass_quantile(0.99),
            "scheduling_passes": sum(prom.counted("warren_scheduler_pass_duration_seconds_count").values()),
            "raft_entries_per_s_leader": round(
                prom.counted(f'warren_raft_commit_index{{instance="{leader_key}"}}').get(leader_key, 0.0) / total_s, 1
            ),
            "peak_rss_mib": {k: round(v / 2**20, 1) for k, v in prom_rss.items()},
            # From the last scrape before the run to the first after it.
            "cpu_s": {k: round(v, 1) for k, v in prom_cpu.items()},
            "store_used_bytes": prom.by_instance("warren_state_store_used_bytes"),
            "raft_log_resident_peak_mib": {
                key: round(value / 2**20, 1)
                for key, value in prom.by_instance(f"max_over_time(warren_raft_log_resident_bytes[{window}])").items()
            },
            "store_file_bytes": prom.by_instance("warren_state_store_file_bytes"),
            "tasks_running_leader": prom.scalar(f'warren_tasks{{state="running",instance="{leader_key}"}}'),
            "raft_tick_gap_p99_ms": {
                key: round(value * 1000, 1)
                for key, value in prom.by_instance(
                    "histogram_quantile(0.99, sum by (instance, le) "
                    f"(increase(warren_raft_tick_gap_seconds_bucket[{window}])))"
                ).items()
            },
            # What the leader's event loop served: calls per second by method (gRPC's own per-call
            # cost is a large part of the loop at S1).
            "leader_calls_per_s": {
                method.rsplit("/", 1)[-1]: round(count / total_s, 1)
                for method, count in prom.counted(
                    f'sum by (method) (warren_api_requests_total{{instance="{leader_key}"}})', "method"
                ).items()
                if count / total_s >= 0.1
            },
            # The agents' status batches on the leader (ADR 79), per second by transport (a stream
            # is one call for a whole session), and their p50 and p99 from arrival to commit (ms).
            "status_batches": {
                transport: round(count / total_s, 1)
                for transport, count in prom.counted(
                    f'sum by (transport) (warren_status_batch_duration_seconds_count{{instance="{leader_key}"}})',
                    "transport",
                ).items()
            },
            "status_batch_ms": [status_quantile(0.5, leader_key), status_quantile(0.99, leader_key)],
            # Where a proposal waits (p50, p99 in ms), on the leader and on the followers.
            "proposal_stages_ms": {
                f"{where}_{stage}": [stage_quantile(0.5, stage, who), stage_quantile(0.99, stage, who)]
                for where, who in (("leader", leader_key), ("followers", followers))
                for stage in ("queued", "replicated", "answered")
            },
            # The Raft thread's own work: its slices of applying committed entries, and its
            # journal writes with their fsyncs.
            "raft_thread": {
                f"{where}_{name}": {
                    "p50_ms": quantile_ms(0.5, metric, f'instance=~"{who}"'),
                    "p99_ms": quantile_ms(0.99, metric, f'instance=~"{who}"'),
                    "per_s": round(sum(prom.counted(f'{metric}_count{{instance=~"{who}"}}').values()) / total_s, 1),
                }
                for where, who in (("leader", leader_key), ("followers", followers))
                for name, metric in (
                    ("apply", "warren_raft_apply_seconds"),
                    ("journal", "warren_raft_journal_write_seconds"),
                )
            },
        },
    }
    if not finished:  # no end: these would time the timeout
        for key in ("first_create_to_all_running_s", "last_create_to_all_running_s", "starts_per_s"):
            result[key] = None
    return result


def run_set(
    name: str,
    params: dict[str, int],
    clients: int,
    skip_s3: bool,
    run_timeout: float,
    heartbeat_period: float | None = None,
) -> dict[str, Any]:
    from bench.promserver import PrometheusServer
    from tests.integration.harness import manager_trio
    from tests.integration.simrig import SimProcess

    root = Path(tempfile.mkdtemp(prefix=f"warren-bench-scale-{name}-"))
    result: dict[str, Any] = {"name": f"scale-{name}", "set": name, "params": params, "label": "end to end"}
    prom = sim = None
    try:
        init = ["--overlay-range", OVERLAY_RANGE]
        if heartbeat_period is not None:
            init += ["--heartbeat-period", f"{heartbeat_period:g}s"]
            result["heartbeat_period_s"] = heartbeat_period
        with manager_trio(root, init_args=init, schedule_on_manager=False) as managers:
            cluster = Cluster(managers)
            targets = {f"m{i + 1}": f"{m.host}:{m.metrics_port}" for i, m in enumerate(managers)}
            prom = PrometheusServer(targets, scrape_interval=SCRAPE_INTERVAL)
            wait_for(lambda: prom.targets_up() == 3, 60, "Prometheus scraping the three managers", interval=0.5)
            sim = SimProcess(managers[0], root, params["nodes"], "--overlay", "sim")
            t0 = time.monotonic()
            wait_for(
                lambda: sim.status(states=False)["connected"] >= params["nodes"],
                900,
                f"{params['nodes']} sim sessions",
                interval=0.5,
            )
            result["all_sessions_open_s"] = round(time.monotonic() - t0, 2)
            print(f"   {params['nodes']} sim nodes connected in {result['all_sessions_open_s']} s", flush=True)
            before = sim.status()
            result["s1"] = s1(cluster, sim, prom, params, clients, run_timeout)
            print(f"   S1: {json.dumps({k: v for k, v in result['s1'].items() if k.endswith('_s')})}", flush=True)
            tasks = result["s1"]["tasks"]
            status = sim.status()
            result["sim"] = {
                "rss_mib": round(status["rss_bytes"] / 2**20, 1),
                "cpu_s": status["cpu_seconds"],  # since it started: the joins and sessions included
                "run_cpu_s": round(status["cpu_seconds"] - before["cpu_seconds"], 2),  # over S1
                # of which collecting, by generation
                "run_gc_s": [round(a - b, 2) for a, b in zip(status["gc_seconds"], before["gc_seconds"], strict=True)],
            }
            print(f"   simulator: {json.dumps(result['sim'])}", flush=True)
            settled = result["s1"]["all_running"]
            if not settled:
                print(f"   S1 did not finish: {result['s1']['running_at_end']}/{tasks} running; no S3", flush=True)
            if not skip_s3 and settled:
                result["s3"] = s3(cluster, sim, tasks, params["nodes"])
                print(f"   S3: {json.dumps(result['s3'])}", flush=True)
                settled = result["s3"]["settled_after_leader_kill_s"] is not None
            result["s4"] = s4(cluster, sim, params, tasks, with_big=settled)
            print(f"   S4: {json.dumps(result['s4'])}", flush=True)
    except BaseException:
        for label, text in (("simulator", sim.log() if sim else ""), ("prometheus", prom.log() if prom else "")):
            if text:
                print(f"--- last lines of the {label}'s log ---", *text.splitlines()[-20:], sep="\n", file=sys.stderr)
        raise
    finally:
        if sim is not None:
            sim.stop()
        if prom is not None:
            prom.stop()
        if os.environ.get("WARREN_BENCH_KEEP"):  # the managers' and simulator's logs, for a post-mortem
            print(f"   kept {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    result["figures"] = figures(result)
    return result


def _interrupted(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    from bench.run import print_summary

    # A run started in the background ignores SIGINT; SIGTERM then stops it the same way, with
    # the managers, the simulator and Prometheus stopped by PID and their directories removed.
    signal.signal(signal.SIGTERM, _interrupted)

    parser = argparse.ArgumentParser(prog="python3 -m bench.bench_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=sorted(SETS), default="s1", help="the parameter set (default: s1)")
    for key in ("nodes", "services", "replicas", "big_replicas"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, help=f"override the set's {key}")
    parser.add_argument("--clients", type=int, default=CLIENTS, help=f"concurrent gRPC writers (default: {CLIENTS})")
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=600.0,
        help="seconds after the last create to wait for every task running (default: 600)",
    )
    parser.add_argument("--skip-s3", action="store_true", help="no node or leader kills")
    parser.add_argument(
        "--heartbeat-period", type=float, metavar="SEC", help="the cluster's heartbeat period (default: Warren's)"
    )
    parser.add_argument(
        "--result", metavar="NAME", help="write bench/results/scale-NAME.json (default: the set's name)"
    )
    parser.add_argument("--no-write", action="store_true", help="print results but don't write bench/results/")
    args = parser.parse_args(argv)
    params = dict(SETS[args.set])
    for key in params:
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                parser.error(f"--{key.replace('_', '-')} must be at least 1")
            params[key] = value
    machine = machine_info()
    machine["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    print(f"== scale-{args.set} {params} ...", flush=True)
    if args.heartbeat_period is not None and args.heartbeat_period <= 0:
        parser.error("--heartbeat-period must be positive")
    result = run_set(args.set, params, args.clients, args.skip_s3, args.run_timeout, args.heartbeat_period)
    result["duration_s"] = round(time.perf_counter() - start, 2)
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["machine"] = machine
    result["command"] = "python3 -m bench.bench_scale " + " ".join(sys.argv[1:] if argv is None else argv)
    if not args.no_write:
        results = REPO / "bench" / "results"
        results.mkdir(exist_ok=True)
        path = results / f"scale-{args.result or args.set}.json"
        path.with_suffix(".tmp").write_text(json.dumps(result, indent=2) + "\n")
        path.with_suffix(".tmp").replace(path)
        print(f"   -> {os.path.relpath(path)}")
    print_summary({result["name"]: result}, {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
