"""What the leader's routing reports cost a scheduling pass (ADR 33, #15). Pure function:
`RoutingReports.snapshot()` and the membership questions a pass asks of it (one per node for a
draining task's address), against the raw baseline of building each node's union of the
backend sets sent since its confirmed index, as every pass did before. Nodes confirm different
indexes, as they do while a rollout or S1's placements change the endpoints at every commit."""

from __future__ import annotations

import json
import os
import statistics
import time

from bench.common import figure
from warren.manager.routingreports import RoutingReports

RUNS = 7
CASES = [(100, 20, 10_000), (1000, 5, 10_000)]  # (nodes, indexes sent and not confirmed, backends)


def _reports(nodes: int, pending: int, backends: int) -> tuple[RoutingReports, list[frozenset[str]]]:
    base = frozenset(f"10.{224 + i // 65536}.{(i // 256) % 256}.{i % 256}" for i in range(backends))
    sets = [base | {f"10.239.255.{k}"} for k in range(pending)]
    reports = RoutingReports()
    for n in range(nodes):
        for k, backend_set in enumerate(sets):
            reports.sent(f"n{n}", k + 1, backend_set)
        reports.applied(f"n{n}", 1 + n % pending)
    return reports, sets


def _history_reports(nodes: int, pending: int, backends: int) -> tuple[RoutingReports, list[object]]:
    """The same reports with each index a view of one BackendHistory, as the dispatcher sends
    them since ADR 72 (each index adds one address to the base set)."""
    from warren.manager.backendhistory import BackendHistory

    base = frozenset(f"10.{224 + i // 65536}.{(i // 256) % 256}.{i % 256}" for i in range(backends))
    history = BackendHistory()
    views: list[object] = []
    for k in range(pending):
        backend_set = base | {f"10.239.255.{k}"}
        previous = f"10.239.255.{k - 1}"
        views.append(history.record(k + 1, backend_set, backend_set if k == 0 else {previous, f"10.239.255.{k}"}))
    reports = RoutingReports()
    for n in range(nodes):
        for k, view in enumerate(views):
            reports.sent(f"n{n}", k + 1, view)  # type: ignore[arg-type]
        reports.applied(f"n{n}", 1 + n % pending)
    return reports, views


def _snapshot_and_ask(reports: RoutingReports) -> int:
    known = reports.snapshot()
    return sum("10.224.0.5" in routes for routes in known.values())


def _unions_baseline(nodes: int, pending: int, sets: list[frozenset[str]]) -> int:
    """Each node's union built, as `snapshot()` did (shared between nodes holding the same indexes)."""
    unions: dict[int, frozenset[str]] = {}
    hits = 0
    for n in range(nodes):
        first = n % pending
        union = unions.get(first)
        if union is None:
            union = unions[first] = frozenset().union(*sets[first:])
        hits += "10.224.0.5" in union
    return hits


def _median_seconds(fn: object, *args: object) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fn(*args)  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run() -> dict[str, object]:
    detail = []
    for nodes, pending, backends in CASES:
        reports, sets = _reports(nodes, pending, backends)
        intervals, _views = _history_reports(nodes, pending, backends)
        assert _snapshot_and_ask(reports) == _unions_baseline(nodes, pending, sets) == nodes
        assert _snapshot_and_ask(intervals) == nodes
        ours, baseline, history = [], [], []
        for _ in range(3):  # alternated, so that load changes hit both sides alike
            ours.append(_median_seconds(_snapshot_and_ask, reports))
            baseline.append(_median_seconds(_unions_baseline, nodes, pending, sets))
            history.append(_median_seconds(_snapshot_and_ask, intervals))
        detail.append(
            {
                "nodes": nodes,
                "pending_indexes": pending,
                "backends": backends,
                "snapshot_ms": round(statistics.median(ours) * 1000, 3),
                "unions_baseline_ms": round(statistics.median(baseline) * 1000, 3),
                "ratio": round(statistics.median(ours) / statistics.median(baseline), 4),
                # ADR 72: the views of one BackendHistory, as sent now, against whole sets
                "intervals_ms": round(statistics.median(history) * 1000, 3),
                "intervals_over_sets": round(statistics.median(history) / statistics.median(ours), 3),
                "load_average": os.getloadavg()[0],
            }
        )
    return {
        "name": "routing",
        "cases": [],
        "detail": detail,
        "figures": [
            figure(
                f"Routing snapshot + questions per pass, {d['nodes']:,} nodes x {d['pending_indexes']} unconfirmed "
                f"indexes x {d['backends']:,} backends, vs building the unions (pure function)",
                d["ratio"],
                "x",
            )
            for d in detail
        ],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
