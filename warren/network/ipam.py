"""Overlay address management: one subnet per node, one address per task, one VIP per service.

Pure (ADR 17): every function takes the current allocations (owner id -> address or subnet)
and returns new ones; nothing is stored here. The replicated state will hold the mappings and
call these from its apply, so an allocation is decided once, by the Raft log, and no address
is handed out twice. Allocation is deterministic: always the lowest free slot.

Layout (defaults): overlay 10.224.0.0/12 cut into /24s, one per node (4,096 nodes; clusters
initialised before ADR 55 keep the 10.200.0.0/16 they recorded, 256 nodes); in a node's /24 the
first host address is the node's own (its WireGuard address, later its bridge gateway) and the
rest go to tasks; service VIPs come from a separate range, 10.201.0.0/16, which is never routed
between nodes (every node DNATs its own VIP traffic).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

IPv4Network = ipaddress.IPv4Network
IPv4Address = ipaddress.IPv4Address

_Allocation = TypeVar("_Allocation")

# 4,096 node subnets (ADR 55): a /16 held only 256 nodes, too few for issue #15's 1,000.
DEFAULT_OVERLAY = "10.224.0.0/12"
# The plan of a cluster whose ClusterInfo records none (initialised before ADR 17 recorded it).
LEGACY_OVERLAY = "10.200.0.0/16"
DEFAULT_NODE_PREFIXLEN = 24
DEFAULT_VIP_RANGE = "10.201.0.0/16"


class IpamError(ValueError):
    """A layout or an allocation that cannot be made; the message says which and why."""


class ExhaustedError(IpamError):
    """No free subnet, address or VIP is left."""


@dataclass(frozen=True)
class Layout:
    """The cluster's address plan, fixed at `cluster init`."""

    overlay: IPv4Network
    node_prefixlen: int
    vips: IPv4Network

    @property
    def node_subnet_count(self) -> int:
        return 1 << (self.node_prefixlen - self.overlay.prefixlen)


def _net(text: str, what: str) -> IPv4Network:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise IpamError(f"{what} {text!r} is not a network: {exc}") from None
    if not isinstance(net, IPv4Network):
        raise IpamError(f"{what} {text!r}: only IPv4 is supported")
    return net


def make_layout(
    overlay: str = DEFAULT_OVERLAY,
    node_prefixlen: int = DEFAULT_NODE_PREFIXLEN,
    vip_range: str = DEFAULT_VIP_RANGE,
    reserved: Iterable[str] = (),
) -> Layout:
    """Check and build a layout. `reserved` are networks the overlay must not overlap (the
    hosts' own networks, the container runtime's bridge...)."""
    net = _net(overlay, "overlay range")
    vips = _net(vip_range, "VIP range")
    if not net.prefixlen < node_prefixlen <= 30:
        raise IpamError(
            f"node subnets of /{node_prefixlen} do not fit the overlay {net}: "
            f"the prefix length must be between /{net.prefixlen + 1} and /30"
        )
    if net.overlaps(vips):
        raise IpamError(f"the VIP range {vips} overlaps the overlay range {net}")
    if vips.num_addresses < 4:
        raise IpamError(f"the VIP range {vips} is too small (at least a /30)")
    for text in reserved:
        other = _net(text, "reserved network")
        for name, mine in (("overlay range", net), ("VIP range", vips)):
            if mine.overlaps(other):
                raise IpamError(f"the {name} {mine} overlaps the host network {other}")
    return Layout(net, node_prefixlen, vips)


# -- node subnets --------------------------------------------------------------------------------


def node_subnet(layout: Layout, index: int) -> IPv4Network:
    """The index-th node subnet of the overlay."""
    if not 0 <= index < layout.node_subnet_count:
        raise IpamError(f"node subnet index {index} is outside 0..{layout.node_subnet_count - 1}")
    size = 1 << (32 - layout.node_prefixlen)
    return IPv4Network((int(layout.overlay.network_address) + index * size, layout.node_prefixlen))


def allocate_node_subnet(layout: Layout, current: Mapping[str, IPv4Network], node_id: str) -> dict[str, IPv4Network]:
    """`current` plus a subnet for `node_id` (the lowest free one); unchanged if it has one."""
    if node_id in current:
        return dict(current)
    size = 1 << (32 - layout.node_prefixlen)
    base = int(layout.overlay.network_address)
    used = set()
    for owner, subnet in _check_unique(current, "subnet").items():
        if subnet.prefixlen != layout.node_prefixlen or not subnet.subnet_of(layout.overlay):
            raise IpamError(f"node {owner} holds {subnet}, which is not a /{layout.node_prefixlen} of {layout.overlay}")
        used.add((int(subnet.network_address) - base) // size)
    index = _lowest_free(used, layout.node_subnet_count)
    if index is None:
        raise ExhaustedError(exhausted_overlay(layout))
    return {**current, node_id: node_subnet(layout, index)}


def exhausted_overlay(layout: Layout) -> str:
    """Why no node subnet is left in `layout`, and what to do about it."""
    return (
        f"the overlay range {layout.overlay} holds {layout.node_subnet_count} nodes (a /{layout.node_prefixlen} "
        "each) and every one is taken: remove the nodes that are gone (`warren node rm`), or re-create the "
        f"cluster with a wider `cluster init --overlay-range` (the default, {DEFAULT_OVERLAY}, holds "
        f"{1 << (layout.node_prefixlen - _net(DEFAULT_OVERLAY, 'overlay range').prefixlen):,})"
    )


# -- task addresses ------------------------------------------------------------------------------


def task_address_bounds(subnet: IPv4Network) -> tuple[int, int]:
    """The first and the last task address of a node subnet, as integers: the network, the node
    and the broadcast addresses are never handed out. An empty range (first > last) if none."""
    return int(subnet.network_address) + 2, int(subnet.broadcast_address) - 1


def address_int(text: str) -> int:
    """A dotted-quad IPv4 address as an integer, as int(IPv4Address(text)) gives it, a third of
    its time: the state indexes every task address it applies (100,000 at S2's size, on the thread
    that applies the Raft log). ValueError for anything IPv4Address refuses."""
    parts = text.split(".")
    if len(parts) != 4:
        raise ValueError(f"{text!r} is not an IPv4 address")
    value = 0
    for part in parts:
        # Decimal digits only, at most 3, no leading zero (as ipaddress refuses them), <= 255.
        if not (part.isascii() and part.isdigit()) or len(part) > 3 or (part[0] == "0" and len(part) > 1):
            raise ValueError(f"{text!r} is not an IPv4 address")
        octet = int(part)
        if octet > 255:
            raise ValueError(f"{text!r} is not an IPv4 address")
        value = value << 8 | octet
    return value


# -- service VIPs --------------------------------------------------------------------------------


def vip_bounds(layout: Layout) -> tuple[int, int]:
    """The first and the last service VIP of `layout`, as integers."""
    return int(layout.vips.network_address) + 1, int(layout.vips.broadcast_address) - 1


def allocate_vip(layout: Layout, current: Mapping[str, IPv4Address], service_id: str) -> dict[str, IPv4Address]:
    """`current` plus the lowest free VIP for `service_id`; unchanged if it has one."""
    if service_id in current:
        return dict(current)
    first, last = vip_bounds(layout)
    used = set()
    for who, addr in _check_unique(current, "VIP").items():
        if not first <= int(addr) <= last:
            raise IpamError(f"service {who} holds {addr}, which is not a VIP of {layout.vips}")
        used.add(int(addr) - first)
    offset = _lowest_free(used, last - first + 1)
    if offset is None:
        raise ExhaustedError(f"the VIP range {layout.vips} is exhausted ({len(used)} services hold one)")
    return {**current, service_id: IPv4Address(first + offset)}


# -- shared --------------------------------------------------------------------------------------


def release(current: Mapping[str, _Allocation], owner: str) -> dict[str, _Allocation]:
    """`current` without `owner`'s allocation (nothing happens if it has none)."""
    return {k: v for k, v in current.items() if k != owner}


def _check_unique(current: Mapping[str, _Allocation], what: str) -> Mapping[str, _Allocation]:
    seen: dict[object, str] = {}
    for owner, value in current.items():
        if value in seen:
            raise IpamError(f"{what} {value} is allocated twice: to {seen[value]} and to {owner}")
        seen[value] = owner
    return current


def _lowest_free(used: set[int], size: int) -> int | None:
    if len(used) >= size:
        return None
    for i in range(size):
        if i not in used:
            return i
    return None
