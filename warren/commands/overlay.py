"""Overlay address allocation at apply time (ADR 17): node subnets and task addresses."""

from __future__ import annotations

import functools
import ipaddress

import msgspec

from warren.commands.types import Result, error
from warren.model import ClusterInfo, Node, Task
from warren.network import ipam
from warren.state import ClusterState


def overlay_layout(cluster: ClusterInfo) -> ipam.Layout:
    """The cluster's overlay address plan; raises ipam.IpamError if it is not a valid one."""
    return _layout(
        cluster.overlay_range or ipam.LEGACY_OVERLAY,  # never the default: that changed (ADR 55)
        cluster.node_subnet_prefixlen or ipam.DEFAULT_NODE_PREFIXLEN,
        cluster.vip_range or ipam.DEFAULT_VIP_RANGE,
    )


@functools.lru_cache(maxsize=8)
def _layout(overlay: str, node_prefixlen: int, vip_range: str) -> ipam.Layout:
    # Every create asks (for a VIP): parsing the networks each time was a visible part of its
    # apply under load (ADR 51). A Layout is immutable; an invalid plan raises, and is not cached.
    return ipam.make_layout(overlay, node_prefixlen, vip_range)


def with_overlay_subnet(state: ClusterState, cluster: ClusterInfo, node: Node) -> Node | Result:
    """`node` with a subnet of the overlay (the lowest free one), or the error why it has none.
    Found from the state's index of held subnets (ADR 57): this runs on the Raft apply thread for
    every join, and parsing every node's subnet made a join O(nodes)."""
    if node.overlay_subnet:
        return node
    try:
        layout = overlay_layout(cluster)
    except (ipam.IpamError, ValueError) as exc:
        return error("internal", f"the overlay address plan is unusable: {exc}")
    size = 1 << (32 - layout.node_prefixlen)
    index = state.lowest_free_subnet(int(layout.overlay.network_address), size, layout.node_subnet_count)
    if index is None:
        return error("resource_exhausted", f"cannot add node {node.hostname}: {ipam.exhausted_overlay(layout)}")
    return msgspec.structs.replace(node, overlay_subnet=str(ipam.node_subnet(layout, index)))


class Addresses:
    """Task addresses of the nodes a plan places tasks on, allocated from each node's subnet
    (ADR 17), for nodes on the overlay only: the lowest free one first, found from the state's
    index of held addresses. A task gives its address back once it has ended: one this plan only
    asks to stop keeps running (and using it) until its agent stops it."""

    def __init__(self, state: ClusterState) -> None:
        self._state = state
        # Per node: the next address to try and the last task address of its subnet. Everything
        # below the cursor is held, or was handed out by this plan (not in the state yet).
        self._cursors: dict[str, tuple[int, int]] = {}
        self._full: set[str] = set()  # nodes with no address left, in this plan

    def assign(self, task: Task, node_id: str) -> Task | None:
        """`task` with an address on `node_id` (a new one, even if it held one elsewhere);
        unchanged for a node off the overlay (its tasks use the node's network); None when the
        node's subnet has no address left (the plan was computed before it filled up: the
        scheduler never places a task there)."""
        node = self._state.nodes.get(node_id)
        if node is None or not node.overlay or not node.overlay_subnet:
            return task
        if node_id in self._full:
            return None
        cursor = self._cursors.get(node_id)
        if cursor is None:
            try:
                first, last = ipam.task_address_bounds(ipaddress.IPv4Network(node.overlay_subnet))
            except ValueError:
                self._full.add(node_id)
                return None
            found = self._state.lowest_free_address(node_id, first, last)
        else:
            last = cursor[1]
            held = self._state.node_addresses.get(node_id, {})
            found = cursor[0]
            while found <= last and found in held:
                found += 1
        if found is None or found > last:
            self._full.add(node_id)
            return None
        self._cursors[node_id] = (found + 1, last)
        return msgspec.structs.replace(task, overlay_address=str(ipaddress.IPv4Address(found)))
