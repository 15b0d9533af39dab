"""S3, failure at scale (issue #15): kill a share of the sim nodes, then the leader.

Timed: until the managers mark the killed nodes down, until their tasks run elsewhere, and until
the next write is acknowledged after the leader is killed; checked: every slot has exactly one
running task (none lost, none duplicated).
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from typing import Any

from bench.common import wait_for
from bench.scale_cluster import IMAGE, Cluster

KILL_PCT = 10  # the share of the sim nodes S3 kills


def _slot_counts(cluster: Cluster, manager: Any) -> tuple[int, int, int]:
    """(slots with one running task, slots with none among those seen, slots with more than one)."""
    per_slot: Counter[tuple[str, int]] = Counter()
    seen: set[tuple[str, int]] = set()
    for t in cluster.tasks(manager):
        key = (t.service_id, t.slot)
        seen.add(key)
        if t.state == "running":
            per_slot[key] += 1
    ones = sum(1 for k in seen if per_slot[k] == 1)
    return ones, sum(1 for k in seen if per_slot[k] == 0), sum(1 for k in seen if per_slot[k] > 1)


def s3(cluster: Cluster, sim: Any, tasks: int, nodes: int) -> dict[str, Any]:
    import grpc

    from warren.api.v1 import control_pb2 as cpb
    from warren.api.v1 import types_pb2 as tpb

    leader = cluster.leader()
    starts_before = sim.status(states=False)["starts"]
    count = max(1, nodes * KILL_PCT // 100)
    killed_at = time.monotonic()
    killed = set(sim.kill(count))

    def all_down() -> bool:
        try:
            by_name = {n.hostname: n.status for n in cluster.nodes(leader)}
        except grpc.RpcError:
            return False
        return all(by_name.get(h) == "down" for h in killed)

    marked_down_s = wait_for(all_down, 300, f"{count} killed nodes marked down", interval=0.5)
    wait_for(
        lambda: sim.status(states=False)["running"] >= tasks,
        600,
        "the killed nodes' tasks running elsewhere",
        interval=0.5,
    )
    elsewhere_s = time.monotonic() - killed_at
    moved = sim.status(states=False)["starts"] - starts_before

    # The leader: SIGKILL, then the next acknowledged write.
    leader.kill(signal.SIGKILL)
    spec = tpb.ServiceSpec(name="s3-after-leader-kill", image=IMAGE, replicas=0)

    def write_acknowledged() -> bool:
        for m in cluster.alive():
            try:
                cluster.stub(m).CreateService(cpb.CreateServiceRequest(spec=spec), timeout=5)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                    return True
                continue
            return True
        return False

    write_s = wait_for(write_acknowledged, 300, "a write acknowledged after the leader kill", interval=0.1)
    new_leader = None

    def settled() -> bool:
        nonlocal new_leader
        new_leader = cluster.leader()
        if new_leader is None or sim.status(states=False)["running"] < tasks:
            return False
        try:
            ones, _, dups = _slot_counts(cluster, new_leader)
        except grpc.RpcError:  # a busy new leader: handshakes time out, as for the nodes
            return False
        return ones == tasks and dups == 0

    settle_error = None
    try:
        settled_s = wait_for(settled, 300, "every slot running once after the leader kill", interval=2)
    except RuntimeError as exc:
        settled_s, settle_error = None, str(exc)
    leader_now = new_leader or cluster.leader()
    # Not answered (no leader found, or its list refused): unknown, not lost.
    ones = lost = dups = None
    try:
        if leader_now is not None:
            ones, lost, dups = _slot_counts(cluster, leader_now)
        else:
            settle_error = f"{settle_error or 'settled'}; no leader answered for the last task list"
    except grpc.RpcError as exc:
        settle_error = f"{settle_error or 'settled'}; the last task list failed: {exc.code().name}"
    status = sim.status()
    return {
        "killed_nodes": count,
        "node_down_s": round(marked_down_s, 2),
        "tasks_running_elsewhere_s": round(elsewhere_s, 2),
        "tasks_moved": moved,
        "next_write_after_leader_kill_s": round(write_s, 2),
        "settled_after_leader_kill_s": None if settled_s is None else round(settled_s, 2),
        "settle_error": settle_error,
        "slots_running_once": ones,
        "slots_lost": lost,
        "slots_duplicated": dups,
        "sim_running": status["running"],
        "sim_starts_after_leader_kill": status["starts"] - starts_before - moved,
    }
