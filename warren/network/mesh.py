"""Converge a WireGuard device and its routes on a mesh plan: read, diff, apply the difference.

The only place that joins the pure plan to the I/O adapters. `converge` is what an agent calls
on start and whenever the cluster's node list changes; it is idempotent, so calling it again
with the same plan applies nothing. Addresses and routes go through a small `Routing` port:
netlink in a namespace for real (`NetlinkRouting`), in memory for tests (`warren.network.fake`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

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
from warren.network.wgdevice import WireGuardDevice


class Routing(Protocol):
    """Links, addresses and routes of one namespace."""

    def link_up(self, ifname: str) -> None: ...
    def addresses(self, ifname: str) -> tuple[str, ...]: ...
    def routes(self, ifname: str) -> tuple[tuple[str, str | None], ...]: ...
    def add_address(self, ifname: str, cidr: str) -> None: ...
    def remove_address(self, ifname: str, cidr: str) -> None: ...
    def add_route(self, destination: str, ifname: str, source: str | None) -> None: ...
    def remove_route(self, destination: str, ifname: str) -> None: ...


@dataclass(frozen=True)
class NetlinkRouting:
    """`Routing` through pyroute2 (`links`) in `netns` (None: this namespace)."""

    netns: str | None = None

    def link_up(self, ifname: str) -> None:
        links.link_up(ifname, self.netns)

    def addresses(self, ifname: str) -> tuple[str, ...]:
        return links.addresses(ifname, self.netns)

    def routes(self, ifname: str) -> tuple[tuple[str, str | None], ...]:
        return links.routes(ifname, self.netns)

    def add_address(self, ifname: str, cidr: str) -> None:
        links.add_address(ifname, cidr, self.netns)

    def remove_address(self, ifname: str, cidr: str) -> None:
        links.remove_address(ifname, cidr, self.netns)

    def add_route(self, destination: str, ifname: str, source: str | None) -> None:
        links.add_route(destination, ifname, source, self.netns)

    def remove_route(self, destination: str, ifname: str) -> None:
        links.remove_route(destination, ifname, self.netns)


@dataclass(frozen=True)
class Converged:
    diff: Diff
    applied: int  # operations carried out (== len(diff.operations))


def current_state(device: WireGuardDevice, routing: Routing | None = None) -> CurrentState:
    """What the device and the routing table of its namespace report now."""
    routing = routing or NetlinkRouting(device.netns)
    status = device.status()
    return CurrentState(
        public_key=status.public_key,
        listen_port=status.listen_port,
        peers=tuple(p.config() for p in status.peers),
        addresses=routing.addresses(device.ifname),
        routes=tuple(Route(dst, device.ifname, src) for dst, src in routing.routes(device.ifname)),
    )


def converge(device: WireGuardDevice, plan: MeshPlan, routing: Routing | None = None) -> Converged:
    """Start (or adopt) the device, bring its link up, and apply only what differs from `plan`:
    WireGuard operations first, then addresses (a route's source must exist), then routes."""
    if plan.interface.ifname != device.ifname:
        raise ValueError(f"the plan is for {plan.interface.ifname}, the device is {device.ifname}")
    routing = routing or NetlinkRouting(device.netns)
    device.start()
    routing.link_up(device.ifname)
    change = diff(current_state(device, routing), plan)
    applied = device.apply(change.operations)
    for op in change.operations:
        if isinstance(op, RemoveAddress):
            routing.remove_address(op.ifname, op.address)
        elif isinstance(op, AddAddress):
            routing.add_address(op.ifname, op.address)
        else:
            continue
        applied += 1
    for op in change.operations:
        if isinstance(op, RemoveRoute):
            routing.remove_route(op.route.destination, op.route.device)
        elif isinstance(op, AddRoute):
            routing.add_route(op.route.destination, op.route.device, op.route.source)
        else:
            continue
        applied += 1
    return Converged(change, applied)
