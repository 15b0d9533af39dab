"""Handlers of network commands (#14, ADR 47): create and remove, and the rules a network's
name, subnet and users follow.

A network is a set of services allowed to reach each other and a DNS scope on the one overlay
(ADR 17), not a mesh of its own. The cluster's default network is not stored: a service with no
networks is on it, `default` names it, and it can be neither created nor removed.
"""

from __future__ import annotations

import ipaddress

from warren.commands.overlay import overlay_layout
from warren.commands.types import Changes, CreateNetwork, RemoveNetwork, Result, error
from warren.model import Network, ServiceSpec
from warren.network import ipam
from warren.state import ClusterState, Delete, Put
from warren.text import shown
from warren.validate import ValidationError, check_labels, check_name

DEFAULT_NETWORK = "default"


def network_names(spec: ServiceSpec) -> tuple[str, ...]:
    """The networks a service's tasks are on, by name: `default` when it names none."""
    return tuple(a.network for a in spec.networks) or (DEFAULT_NETWORK,)


def check_network(network: Network, reserved_ok: bool = False) -> None:
    """Raises ValidationError for a name, subnet or labels an operator may not give
    (`reserved_ok`: a stack's network carries the engine's own STACK_LABEL)."""
    check_name("network", network.name)
    if network.name == DEFAULT_NETWORK:
        raise ValidationError(f"the network name {DEFAULT_NETWORK!r} is reserved for the cluster's default network")
    if network.subnet:
        subnet_of(network)
    check_labels("network label", dict(network.labels), reserved_ok)


def subnet_of(network: Network) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(network.subnet, strict=True)
    except ValueError as exc:
        raise ValidationError(f"invalid subnet {shown(network.subnet)} of network {network.name}: {exc}") from None


def missing_networks(state: ClusterState, spec: ServiceSpec) -> Result | None:
    """A service may only name networks that exist (checked again at apply, as secrets are:
    one may be removed between the API's check and the commit)."""
    for attachment in spec.networks:
        if attachment.network != DEFAULT_NETWORK and state.network_by_name(attachment.network) is None:
            return error("not_found", f"network {shown(attachment.network)} not found (service {spec.name})")
    return None


def users(state: ClusterState, name: str) -> list[str]:
    """The services whose spec, or one of whose live tasks, is on the network called `name`."""
    names = {s.spec.name for s in state.services.values() if name in network_names(s.spec)}
    live = (t for t in state.tasks.values() if not t.state.terminal)
    names |= {t.service_name for t in live if name in network_names(t.spec)}
    return sorted(names)


def _subnet_clash(state: ClusterState, network: Network) -> str | None:
    """Why `network.subnet` may not be used: it overlaps the overlay's ranges or another
    network's subnet; None if it is free."""
    subnet = subnet_of(network)
    if state.cluster is not None:
        try:
            layout = overlay_layout(state.cluster)
        except ipam.IpamError:
            layout = None
        if layout is not None:
            for what, reserved in (("overlay", layout.overlay), ("service VIP range", layout.vips)):
                if subnet.overlaps(reserved):
                    return f"subnet {subnet} overlaps the cluster's {what} {reserved}"
    for other in state.networks.values():
        if other.subnet and subnet.overlaps(subnet_of(other)):
            return f"subnet {subnet} overlaps network {other.name}'s {other.subnet}"
    return None


def create_network(state: ClusterState, cmd: CreateNetwork) -> tuple[Result, Changes]:
    network = cmd.network
    try:
        check_network(network, reserved_ok=True)  # the API refused an operator's reserved labels
        clash = _subnet_clash(state, network) if network.subnet else None
    except ValidationError as exc:
        return error("invalid_argument", str(exc)), []
    if state.network_by_name(network.name) is not None:
        return error("already_exists", f"network name {shown(network.name)} is already in use"), []
    if network.id in state.networks:
        return error("already_exists", f"network id {network.id} is already in use"), []
    if clash is not None:
        return error("invalid_argument", clash), []
    return Result(id=network.id), [Put("network", network)]


def remove_network(state: ClusterState, cmd: RemoveNetwork) -> tuple[Result, Changes]:
    network = state.networks.get(cmd.network_id)
    if network is None:
        return error("not_found", f"network {cmd.network_id} not found"), []
    using = users(state, network.name)
    if using:
        more = f" and {len(using) - 3} more" if len(using) > 3 else ""
        return error(
            "failed_precondition",
            f"network {network.name} is in use by service {', '.join(using[:3])}{more}: remove it from them first",
        ), []
    return Result(id=network.id), [Delete("network", network.id)]
