"""1,000 nodes joining one after another, each given its overlay /24 (ADR 57). Pure function,
in-process: the RegisterNode handler and the state's apply, what the Raft apply thread runs per
join, without Raft or gRPC.

- "scan": the allocation before ADR 57, which parsed every node's subnet on each join (its code
  is kept here as the reference; tests/unit/test_subnet_index.py checks both pick the same /24).
- "index": the state's index of held subnets.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable

import msgspec

from bench.common import figure
from warren import commands
from warren.commands import nodes as node_commands
from warren.commands.overlay import overlay_layout
from warren.commands.types import Result, error
from warren.model import ClusterInfo, Node, NodeStatus
from warren.network import ipam
from warren.state import ClusterState

JOINS = 1_000
ROUNDS = 3


def _scan(state: ClusterState, cluster: ClusterInfo, node: Node) -> Node | Result:
    """with_overlay_subnet as it was before ADR 57: O(nodes) per join."""
    if node.overlay_subnet:
        return node
    layout = overlay_layout(cluster)
    current = {
        n.id: ipaddress.IPv4Network(n.overlay_subnet)
        for n in state.nodes.values()
        if n.overlay_subnet and n.id != node.id
    }
    try:
        subnet = ipam.allocate_node_subnet(layout, current, node.id)[node.id]
    except ipam.ExhaustedError as exc:
        return error("resource_exhausted", str(exc))
    return msgspec.structs.replace(node, overlay_subnet=str(subnet))


def _joins(allocate: Callable[[ClusterState, ClusterInfo, Node], Node | Result] | None) -> tuple[float, float]:
    """Seconds for JOINS joins, and for the last 100 of them (the cost per join at ~1,000 nodes)."""
    state = ClusterState()
    cluster = ClusterInfo(
        id="c",
        created_at=1.0,
        ca_cert_pem="",
        ca_key_pem="",
        worker_token_secret="w",
        manager_token_secret="m",
        overlay_range=ipam.DEFAULT_OVERLAY,
    )
    result, changes = commands.apply(state, commands.InitCluster(cluster, Node(id="m", hostname="m")))
    state.apply(changes)
    saved = node_commands.with_overlay_subnet
    if allocate is not None:
        node_commands.with_overlay_subnet = allocate  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        tail = start
        for i in range(JOINS):
            if i == JOINS - 100:
                tail = time.perf_counter()
            node = Node(id=f"node-{i:04d}", hostname=f"host-{i:04d}", status=NodeStatus.READY, overlay=True)
            result, changes = commands.apply(state, commands.RegisterNode(node))
            assert result.ok, result.message
            state.apply(changes)
        end = time.perf_counter()
    finally:
        node_commands.with_overlay_subnet = saved
    return end - start, end - tail


def run() -> dict[str, object]:
    cases = {}
    for name, allocate in (("scan", _scan), ("index", None)):
        best = min((_joins(allocate) for _ in range(ROUNDS)), key=lambda r: r[0])
        cases[name] = {"total_ms": round(best[0] * 1000, 1), "per_join_at_1000_us": round(best[1] / 100 * 1e6, 1)}
    return {
        "name": "joins",
        "joins": JOINS,
        "rounds": ROUNDS,
        "cases": [],
        "detail": cases,
        "figures": [
            figure(f"{JOINS:,} joins, scan (before ADR 57), pure function", cases["scan"]["total_ms"], "ms"),
            figure(f"{JOINS:,} joins, /24 index (ADR 57), pure function", cases["index"]["total_ms"], "ms"),
            figure("One join at ~1,000 nodes, scan (before)", cases["scan"]["per_join_at_1000_us"], "µs"),
            figure("One join at ~1,000 nodes, /24 index", cases["index"]["per_join_at_1000_us"], "µs"),
        ],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
