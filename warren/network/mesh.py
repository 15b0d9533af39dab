"""Converge a WireGuard device and its routes on a mesh plan: read, diff, apply the difference.

The only place that joins the pure plan to the I/O adapters. `converge` is what an agent calls
on start and whenever the cluster's node list changes; it is idempotent, so calling it again
with the same plan applies nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from warren.network import links
from warren.network.plan import (
    AddAddress,
    AddRoute,
    CurrentState,
    Diff,
    MeshPlan,
    RemoveAddress,
    RemoveRoute,
    Route,
    diff,
)
from warren.network.wireguard import WireGuardDevice


@dataclass(frozen=True)
class Converged:
    diff: Diff
    applied: int  # operations carried out (== len(diff.operations))


def current_state(device: WireGuardDevice) -> CurrentState:
    """What the device and the routing table of its namespace report now."""
    status = device.status()
    routes = tuple(Route(dst, device.ifname, src) for dst, src in links.routes(device.ifname, device.netns))
    return CurrentState(
        public_key=status.public_key,
        listen_port=status.listen_port,
        peers=tuple(p.config() for p in status.peers),
        addresses=links.addresses(device.ifname, device.netns),
        routes=routes,
    )


def converge(device: WireGuardDevice, plan: MeshPlan) -> Converged:
    """Start (or adopt) the device, bring its link up, and apply only what differs from `plan`."""
    if plan.interface.ifname != device.ifname:
        raise ValueError(f"the plan is for {plan.interface.ifname}, the device is {device.ifname}")
    device.start()
    links.link_up(device.ifname, device.netns)
    change = diff(current_state(device), plan)
    applied = device.apply(change.operations)
    ns = device.netns
    for op in change.operations:
        if isinstance(op, RemoveAddress):
            links.remove_address(op.ifname, op.address, ns)
        elif isinstance(op, AddAddress):
            links.add_address(op.ifname, op.address, ns)
    for op in change.operations:
        if isinstance(op, RemoveRoute):
            links.remove_route(op.route.destination, op.route.device, ns)
        elif isinstance(op, AddRoute):
            links.add_route(op.route.destination, op.route.device, op.route.source, ns)
        else:
            continue
        applied += 1
    applied += sum(isinstance(op, AddAddress | RemoveAddress) for op in change.operations)
    return Converged(change, applied)
