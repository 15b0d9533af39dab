"""Run Warren's benchmarks: `python3 -m bench.run [--only NAME[,NAME]] [--no-write]` (`make bench`).

Each benchmark module has `run() -> dict`. Its result, with machine info added, is written to
bench/results/<name>.json, and a summary marks every figure that has a goal as met or not met.
These are measurements, not assertions: the exit status is non-zero only if a benchmark fails to
run, never because a goal is missed. A failed benchmark leaves its previous results file alone.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

from bench import report
from bench.common import figure, machine_info

BENCHMARKS = {
    "scheduler": "bench.bench_scheduler",
    "api": "bench.bench_api",
    "memory": "bench.bench_memory",
    "task_memory": "bench.bench_task_memory",  # bytes per task at 10K and 100K, in-process (ADR 55, #15)
    "task_start": "bench.bench_task_start",
    "e2e": "bench.bench_e2e",
    "raft": "bench.bench_raft",
    "vip": "bench.bench_vip",
    "failover": "bench.bench_failover",
    "overlay": "bench.bench_overlay",
    "rotation": "bench.bench_rotation",
    "deploy": "bench.bench_deploy",
    "rollout": "bench.bench_rollout",
    "deploy_cases": "bench.bench_deploy_cases",
    "secrets_start": "bench.bench_secrets",
    "stack": "bench.bench_stack",  # #14
    "events": "bench.bench_events",
    "sim": "bench.bench_sim",  # the cost of `warren sim` itself, at 100 nodes (ADR 50, #15)
    "service_ps": "bench.bench_service_ps",  # S4: `service ps` of 10,000 tasks, 1 manager + 50 sim nodes, end to end
    "reconcile": "bench.bench_reconcile",  # one pass, full and incremental (ADR 53, #15)
    "status_reports": "bench.bench_status_reports",  # Raft entries per task start (ADR 53, #15)
    "nodes": "bench.bench_nodes",  # S3: 10 % of 100 sim nodes killed, at two heartbeat periods (ADR 52)
    "joins": "bench.bench_joins",  # 1,000 joins' /24 allocation, scan vs index, pure function (ADR 57)
    "endpoints": "bench.bench_endpoints",  # dispatcher CPU per backend change at 300/1,000 sessions (ADR 57)
    "endpoint_runs": "bench.bench_endpoint_runs",  # deltas to sessions over 8 bases: runs vs composed (ADR 78)
    "reconnect": "bench.bench_reconnect",  # a new leader reopening 300 sessions at S2's shape, digests vs none (ADR 81)
    "routing": "bench.bench_routing",  # a pass's routing snapshot vs building per-node unions (ADR 33)
    "handshakes": "bench.bench_handshakes",  # TLS handshakes into a busy process by switch interval (ADR 84)
}
RESULTS = Path(__file__).resolve().parent / "results"
COMMAND = "make bench  (python3 -m bench.run)"


def figures_of(result: dict[str, object]) -> list[dict[str, object]]:
    """The figures of a result: its own `figures` list, or derived from the scheduler's `cases`."""
    if "figures" in result:
        return list(result["figures"])  # type: ignore[arg-type]
    out = []
    for case in result.get("cases", []):  # type: ignore[union-attr]
        out.append(
            figure(
                f"Placements/s, {case['tasks']:,} tasks / {case['nodes']:,} nodes",
                case["placements_per_s"],
                "/s",
                case.get("goal_per_s"),
                ">=",
            )
        )
    return out


def run_one(name: str, write: bool, argv: list[str]) -> dict[str, object]:
    module = importlib.import_module(BENCHMARKS[name])
    machine = machine_info()
    machine["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    result = module.run()
    result = {**result, "figures": figures_of(result)}
    result["duration_s"] = round(time.perf_counter() - start, 2)
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["machine"] = machine
    result["command"] = "python3 -m bench.run " + " ".join(argv) if argv else COMMAND
    if write:
        RESULTS.mkdir(exist_ok=True)
        tmp = RESULTS / f"{name}.json.tmp"
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(RESULTS / f"{name}.json")
    return result


def print_summary(results: dict[str, dict[str, object]], failures: dict[str, str]) -> None:
    rows = []
    for name, result in results.items():
        for f in result["figures"]:  # type: ignore[union-attr]
            goal = "" if f["goal"] is None else f"{f['op']} {report.format_value(f['goal'], f['unit'])}"
            status = "" if f["met"] is None else ("met" if f["met"] else "NOT MET")
            rows.append((name, str(f["name"]), report.format_value(f["value"], str(f["unit"])), goal, status))
    headers = ("bench", "figure", "value", "goal", "status")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    goals = [r for r in rows if r[4]]
    missed = [r for r in goals if r[4] != "met"]
    print(f"\n{len(goals) - len(missed)}/{len(goals)} goals met", end="")
    print(f"; not met: {', '.join(r[1] for r in missed)}" if missed else "")
    for name, error in failures.items():
        print(f"FAILED: {name}: {error}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python3 -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME[,NAME]",
        help=f"run only these benchmarks (of: {', '.join(BENCHMARKS)}); repeatable",
    )
    parser.add_argument("--no-write", action="store_true", help="print results but don't write bench/results/")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--report",
        action="store_true",
        help="print the stored results of every benchmark (and scale-s1, scale-s2) as one Markdown table",
    )
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(BENCHMARKS))
        return 0
    if args.report:
        print(report.markdown(report.load(RESULTS, [*BENCHMARKS, "scale-s1", "scale-s2"])))
        return 0
    selected = list(BENCHMARKS)
    if args.only:
        selected = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
        unknown = [n for n in selected if n not in BENCHMARKS]
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")

    results: dict[str, dict[str, object]] = {}
    failures: dict[str, str] = {}
    for name in selected:
        print(f"== {name} ...", flush=True)
        try:
            results[name] = run_one(name, write=not args.no_write, argv=argv)
        except Exception as exc:  # report it and go on with the others
            traceback.print_exc()
            failures[name] = f"{type(exc).__name__}: {exc}"
            continue
        where = "" if args.no_write else f" -> {os.path.relpath(RESULTS / f'{name}.json')}"
        print(f"   done in {results[name]['duration_s']} s{where}", flush=True)
    print_summary(results, failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
