"""The leader's cost of endpoint deltas to sessions spread over many bases (ADR 78): a delta
composed per base against a run of each version's own entries, in one process and one log.
In-process: the real EndpointLog over a live ClusterState, no gRPC, no agent.

The shape is S2's ramp: SERVICES services gaining PER_VERSION backends per version in all, and
SESSIONS sessions whose bases are spread over the last WINDOW versions (paced sessions wake at
random points; at 1,000 nodes and ~4 versions a second, a session is up to ~8 versions behind).
After each version, every session asks for its delta both ways, in alternating order; each way
is computed once per base and shared, as the dispatcher does. The figure is the CPU per version
of each way, and of the version itself (the log's catch-up, which now also encodes the version's
own entries for runs)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from bench.common import figure
from bench.endpoint_sessions import make_backend, make_service

SERVICES = 100
INITIAL = 300  # backends per service before the timed versions
PER_VERSION = 400  # backends added per version, over all services
VERSIONS = 40
WINDOW = 8
SESSIONS = 1000


async def _scenario() -> dict[str, object]:
    from tests.unit.endpoint_rig import _LiveState  # the live state as the log reads it
    from warren.manager.endpointlog import EndpointLog
    from warren.manager.events import EventHub
    from warren.state import Put

    store = _LiveState()
    hub = EventHub(asyncio.get_running_loop())
    log = EndpointLog(store, hub)  # type: ignore[arg-type]
    log.open()
    encoding: list[float] = []  # of each version, its own entries for runs (part of making it)
    step = log._step

    def timed_step(*args: Any) -> bytes | None:
        start = time.process_time()
        try:
            return step(*args)
        finally:
            encoding.append(time.process_time() - start)

    log._step = timed_step  # type: ignore[method-assign]
    services = [make_service(k, INITIAL) for k in range(SERVICES)]
    added = [0] * SERVICES

    def commit(changes: list[Any]) -> None:
        store.state.apply(changes)
        store.applied_index += 1
        hub._deliver((store.applied_index, changes))

    commit([Put("service", s) for s in services])
    commit([Put("task", make_backend(k, j, s, 10_000)) for k, s in enumerate(services) for j in range(INITIAL)])
    log.current()
    versions: list[int] = []
    spent: dict[str, list[float]] = {"version": [], "composed": [], "runs": []}
    sizes: dict[str, list[int]] = {"composed": [], "runs": []}
    for number in range(VERSIONS + WINDOW):
        tasks = []
        for i in range(PER_VERSION):
            k = (number * PER_VERSION + i) % SERVICES
            tasks.append(Put("task", make_backend(k, INITIAL + added[k], services[k], 10_000)))
            added[k] += 1
        commit(tasks)
        start = time.process_time()
        view = log.current()
        made = time.process_time() - start
        versions.append(view.at)
        if number < WINDOW:
            continue  # the window fills first
        bases = [versions[-2 - (s % WINDOW)] for s in range(SESSIONS)]
        spent["version"].append(made)
        ways = ("composed", "runs") if number % 2 else ("runs", "composed")
        for way in ways:
            start = time.process_time()
            for base in bases:
                changed = log.since(base, True, True, way == "runs")
                assert changed is not None and changed[0].at == view.at
            spent[way].append(time.process_time() - start)
            sizes[way].append(len(changed[1]))
    log.close()
    return {
        "services": SERVICES,
        "backends_at_end": SERVICES * INITIAL + (VERSIONS + WINDOW) * PER_VERSION,
        "per_version": PER_VERSION,
        "window": WINDOW,
        "sessions": SESSIONS,
        "versions_timed": VERSIONS,
        "ms_per_version": {way: _median_ms(values) for way, values in spent.items()},
        "runs_encoding_ms_per_version": _median_ms(encoding[-VERSIONS:]),
        "largest_delta_bytes": {way: max(values) for way, values in sizes.items()},
        "load_average": os.getloadavg()[0],
    }


def _median_ms(values: list[float]) -> float:
    return round(sorted(values)[len(values) // 2] * 1000, 3)


def run() -> dict[str, object]:
    case = asyncio.run(_scenario())
    per = case["ms_per_version"]
    encoding = case["runs_encoding_ms_per_version"]
    assert isinstance(per, dict) and isinstance(encoding, float)
    return {
        "name": "endpoint_runs",
        "cases": [],
        "detail": case,
        "figures": [
            figure(
                f"Deltas for {SESSIONS:,} sessions over {WINDOW} bases, per version, composed (in-process)",
                per["composed"],
                "ms",
            ),
            figure(
                f"Deltas for {SESSIONS:,} sessions over {WINDOW} bases, per version, runs (in-process)",
                per["runs"],
                "ms",
            ),
            figure("Runs / composed, the same versions (in-process)", round(per["runs"] / per["composed"], 3), "x"),
            figure("A version made from its changes, runs' encoding included (in-process)", per["version"], "ms"),
            figure("Of which its own entries encoded for runs (in-process)", encoding, "ms"),
        ],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
