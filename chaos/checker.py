"""The chaos checker: pure functions over an operation history and a cluster state read back.

History entries are the workload's JSON lines: `seq`, `op` (create | scale | update | remove),
`service`, `replicas` (create, scale, update), `gen` (create: 0, update: its seq; the spec's env
GEN), and `outcome`: ok (acknowledged), failed (surely not applied) or unknown (may have been).
A state is what the probe reads: services (name, replicas, version, env), tasks (service,
service_id, slot, node_id, state, desired_state, spec_version) and nodes (id, role, status).

The rules (issue #4):
- no acknowledged write is missing: an acknowledged create exists unless a remove that was
  acknowledged or unknown followed; an acknowledged remove is never undone; a surely failed
  create never appears; the replicas and the GEN of a service are those of its last acknowledged
  write or of an unknown write after it;
- no operation is applied twice: updates bump `version` by one each and always change the spec,
  so version - 1 lies within [acknowledged updates, acknowledged + unknown updates];
- no two running tasks of the same version hold the same (service, slot), but for a
  rebalance's move beside the task it replaces (ADR 36); in a stop-first update, no two
  running tasks at all (two versions are a start-first replacement, ADR 33);
- a rolling update interrupted by a leader kill (issue #12) completes for the version sent, is
  still the rollout that began before the kill, and keeps the new tasks it had started;
- convergence: every service runs exactly its replicas on its current spec version, on ready
  workers, and no task of a removed service still runs;
- no manager's Raft thread fails a tick (the workload's `bulk` steps make large, chunked
  entries; ADR 20).
- manager links: after a heal, every manager answers, has a Raft connection to every other one
  (both ends say so), and has applied what the leader had applied when the check began.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable

WRITES = ("create", "scale", "update")
WORKER_ROLE = "worker"
# Task states a task never leaves (model.TaskState.terminal): a task in one is history, not load.
ENDED = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned"})
# Ended on their own: a rollout counts them as failures (rollout.outcome), whatever its order.
FAILED = frozenset({"complete", "failed", "rejected"})


def _allowed(values: list[tuple[str, object]]) -> set:
    """Values a register may hold, given its writes in order as (outcome, value): the last
    acknowledged value and every unknown one after it (or every unknown one, if none is acked)."""
    allowed: set = set()
    for outcome, value in values:
        if outcome == "ok":
            allowed = {value}
        elif outcome == "unknown":
            allowed.add(value)
    return allowed


def check_writes(history: Iterable[dict], services: Iterable[dict]) -> list[str]:
    """Violations of the write rules; an empty list when the history and the state agree."""
    by_service: dict[str, list[dict]] = defaultdict(list)
    for op in history:
        if "op" in op and "service" in op:
            by_service[op["service"]].append(op)
    final = {s["name"]: s for s in services}
    problems: list[str] = []
    for name in sorted(set(final) - set(by_service)):
        problems.append(f"{name}: exists but the workload never created it")
    for name, ops in sorted(by_service.items()):
        ops.sort(key=lambda o: o["seq"])
        creates = [o for o in ops if o["op"] == "create"]
        removes = [o for o in ops if o["op"] == "remove"]
        svc = final.get(name)
        create = creates[0] if creates else None
        if any(o["outcome"] == "ok" for o in removes):
            if svc is not None:
                acked = next(o["seq"] for o in removes if o["outcome"] == "ok")
                problems.append(f"{name}: exists after its remove #{acked} was acknowledged")
            continue
        if svc is None:
            if create and create["outcome"] == "ok" and not any(o["outcome"] == "unknown" for o in removes):
                problems.append(f"{name}: acknowledged create #{create['seq']} is missing")
            continue
        if create is None or create["outcome"] == "failed":
            what = f"#{create['seq']} failed" if create else "was never sent"
            problems.append(f"{name}: exists but its create {what}")
            continue
        problems += _check_service(name, ops, svc)
    return problems


def _check_service(name: str, ops: list[dict], svc: dict) -> list[str]:
    problems = []
    writes = [o for o in ops if o["op"] in WRITES]
    replicas = _allowed([(o["outcome"], o["replicas"]) for o in writes])
    if replicas and svc["replicas"] not in replicas:
        problems.append(
            f"{name}: replicas {svc['replicas']}, expected one of {sorted(replicas)} "
            "(the last acknowledged write or a later unknown one)"
        )
    gens = _allowed([(o["outcome"], str(o["gen"])) for o in writes if o["op"] != "scale"])
    gen = (svc.get("env") or {}).get("GEN")
    if gens and gen not in gens:
        problems.append(f"{name}: GEN={gen}, expected one of {sorted(gens, key=int)}")
    updates = Counter(o["outcome"] for o in ops if o["op"] == "update")
    applied = svc["version"] - 1
    low, high = updates["ok"], updates["ok"] + updates["unknown"]
    if not low <= applied <= high:
        problems.append(
            f"{name}: version {svc['version']} means {applied} updates applied, "
            f"but {low} were acknowledged and {updates['unknown']} unknown"
        )
    return problems


RAFT_TICK_FAILURE = "failed _onTick"


def check_raft_ticks(name: str, log_text: str) -> list[str]:
    """PySyncObj's Raft thread raised out of a tick (as when a chunked entry did not
    reassemble, ADR 20): a finding even when no write was lost."""
    failures = [line for line in log_text.splitlines() if RAFT_TICK_FAILURE in line]
    if not failures:
        return []
    return [f"{name}: {len(failures)} Raft ticks failed, first: {failures[0].strip()[:200]}"]


def running(task: dict) -> bool:
    return task["state"] == "running" and task["desired_state"] == "running"


def check_slots(tasks: Iterable[dict], stop_first: Iterable[str] = ()) -> list[str]:
    """Two running tasks of the same version that hold the same slot of a service. Two of
    different versions are a start-first replacement under way (ADR 33): the old one serves
    until the new one is ready; for the services in `stop_first` (ids) they are a violation too."""
    tasks = [t for t in tasks if running(t) and t["slot"]]
    names = {t["service_id"]: t["service"] for t in tasks}
    strict = set(stop_first)
    # A rebalance's move runs beside the task it replaces until it is ready (ADR 36).
    moving = {t.get("relocates") for t in tasks} & {t["id"] for t in tasks}
    same = Counter((t["service_id"], t["slot"], t["spec_version"]) for t in tasks if t["id"] not in moving)
    problems = [
        f"{names[sid]}: {n} running tasks of version {version} hold slot {slot}"
        for (sid, slot, version), n in sorted(same.items())
        if n > 1
    ]
    versions: defaultdict[tuple[str, int], set[int]] = defaultdict(set)
    for t in tasks:
        if t["service_id"] in strict:
            versions[(t["service_id"], t["slot"])].add(t["spec_version"])
    problems += [
        f"{names[sid]}: running tasks of versions {sorted(vs)} hold slot {slot} of a stop-first update"
        for (sid, slot), vs in sorted(versions.items())
        if len(vs) > 1
    ]
    return problems


def check_serving(service: dict, tasks: Iterable[dict]) -> list[str]:
    """Slots of a replicated service that no running task serves, during a rolling update: none
    in a start-first update (the old task serves until the new one is ready, ADR 33), at most
    `parallelism` at once in a stop-first one (0: all of them). A slot whose task of this
    rollout's versions failed is no choice of the order (and it may be left over from an update
    with another order, which a rollback replaced) and is not counted: `tasks` includes the
    history, since a failed task is no longer desired running once its slot has a replacement.
    (A start-first old task stops once its replacement is ready, as in Swarm: one that fails
    right after that leaves its slot empty until it is replaced, ADR 33.)"""
    own = [t for t in tasks if t["service_id"] == service["id"]]
    status = service.get("update_status")
    since = status["from_version"] if status is not None else 0
    served = {t["slot"] for t in own if running(t)}
    failed = {t["slot"] for t in own if t["state"] in FAILED and t["spec_version"] >= since}
    empty = [slot for slot in range(1, service["replicas"] + 1) if slot not in served | failed]
    allowed = 0
    if service["order"] == "stop-first":
        allowed = service["parallelism"] or service["replicas"]
    if len(empty) <= allowed:
        return []
    return [
        f"{service['name']}: no running task in slots {empty} at once "
        f"({service['order']}, parallelism {service['parallelism']})"
    ]


def rollout_unfinished(service: dict, tasks: Iterable[dict], done: Collection[str] = ("completed",)) -> list[str]:
    """Why the rollout of the service's current version has not ended in one of the `done`
    states (completed, rollback_completed; empty: it has): its status, if it has one (none
    before its first update), must say so for that version, and exactly its replicas run it."""
    version, status = service["version"], service.get("update_status")
    reasons = []
    if status is not None and status["to_version"] != version:
        reasons.append(f"the update status is for version {status['to_version']}, the service is at {version}")
    elif status is not None and status["state"] not in done:
        reasons.append(f"update {status['state']}" + (f": {status['message']}" if status["message"] else ""))
    live = [t for t in tasks if running(t) and t["service_id"] == service["id"]]
    old = sorted({t["spec_version"] for t in live if t["spec_version"] != version})
    if old:
        reasons.append(f"tasks of versions {old} still run")
    new = sum(t["spec_version"] == version for t in live)
    if new != service["replicas"]:
        reasons.append(f"{new} of {service['replicas']} tasks run version {version}")
    return reasons


def check_rollout_continued(before: dict, after: dict | None) -> list[str]:
    """The update status after a failover belongs to the rollout that was under way before it
    (same start, same versions): the new leader continued it, it did not start another."""
    if after is None:
        return ["the update status is gone after the failover"]
    fields = ("started_at", "from_version", "to_version")
    changed = [f"{f} {before[f]} -> {after[f]}" for f in fields if before[f] != after[f]]
    if not changed:
        return []
    return [f"the rollout changed across the failover ({', '.join(changed)}): {after['message'] or after['state']}"]


def check_rollout_kept(before: Iterable[str], tasks: Iterable[dict]) -> list[str]:
    """Tasks of the new version that ran before the failover (ids) still run after it: the new
    leader does not redo the slots already replaced."""
    now_running = {t["id"] for t in tasks if running(t)}
    return [
        f"task {tid[:8]} of the new version ran before the failover and not after"
        for tid in sorted(before)
        if tid not in now_running
    ]


def convergence(state: dict) -> list[str]:
    """Why the cluster has not converged yet (empty: it has)."""
    reasons = []
    workers = [n for n in state["nodes"] if n["role"] == WORKER_ROLE]
    down = [n["id"][:8] for n in workers if n["status"] != "ready"]
    if down:
        reasons.append(f"workers not ready: {', '.join(down)}")
    live = {s["id"]: s for s in state["services"]}
    per_service: dict[str, list[dict]] = defaultdict(list)
    for task in state["tasks"]:
        if task["state"] == "running" and task["service_id"] not in live:
            reasons.append(f"{task['service']}: task {task['id'][:8]} of a removed service still runs")
        elif task["desired_state"] == "running" and task["state"] not in ENDED:
            per_service[task["service_id"]].append(task)
    for sid, svc in sorted(live.items(), key=lambda kv: kv[1]["name"]):
        tasks = per_service.get(sid, [])
        ok = [t for t in tasks if t["state"] == "running" and t["spec_version"] == svc["version"]]
        if len(ok) != svc["replicas"] or len(tasks) != svc["replicas"]:
            states = dict(Counter(t["state"] for t in tasks))
            reasons.append(
                f"{svc['name']}: {len(ok)} of {svc['replicas']} running on version {svc['version']} {states}"
            )
    return reasons + check_slots(state["tasks"])


def check_links(managers: Iterable[dict], leader_applied: int) -> list[str]:
    """Why the managers are not yet a whole Raft group (empty: they are). `managers` are their
    own accounts (name, raft_addr, connected, applied_index, error) as one manager gathered
    them; `leader_applied` is the last entry the leader had applied when the check began: every
    manager must reach it, or a pair that looks connected still does not replicate. (Applied,
    not committed: Raft's own entries, such as a new leader's no-op, never reach the state.)"""
    views = sorted(managers, key=lambda m: m["name"])
    problems = [f"{m['name']} does not answer: {m['error']}" for m in views if m.get("error")]
    answering = [m for m in views if not m.get("error")]
    for m in answering:
        for peer in views:
            if peer is not m and peer["raft_addr"] not in m["connected"]:
                problems.append(f"{m['name']} has no Raft connection to {peer['name']}")
        if m["applied_index"] < leader_applied:
            problems.append(f"{m['name']} has applied entry {m['applied_index']}, the leader {leader_applied}")
    return problems


def check_kept_running(
    before: dict[str, bool], during: dict[str, bool], wanted: Iterable[str] | None = None
) -> list[str]:
    """Tasks (task id -> process alive) that ran on a worker when it was cut off must still run
    while it is cut off (agent autonomy, ADR 12). `wanted`, the tasks the cluster wanted running
    there as of the cut (read after it), exempts a stop that was ordered before the cut; None
    exempts nothing."""
    exempt = set() if wanted is None else set(before) - set(wanted)
    return [
        f"task {tid[:8]} stopped while its worker was cut off"
        + (" (its process exited)" if tid in during else " (its runtime record is gone)")
        for tid, alive in before.items()
        if alive and tid not in exempt and not during.get(tid, False)
    ]


def check_reconciled(node_id: str, alive_task_ids: Iterable[str], tasks: Iterable[dict]) -> list[str]:
    """After rejoin, every task process alive on the worker is a task the cluster runs there."""
    expected = {t["id"] for t in tasks if t["node_id"] == node_id and running(t)}
    return [
        f"task {tid[:8]} still runs on {node_id[:8]} but the cluster does not run it there"
        for tid in sorted(set(alive_task_ids) - expected)
    ]


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_stats(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }
