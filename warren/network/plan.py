"""The mesh plan: cluster nodes in, this node's desired WireGuard interface and routes out.

Pure (ADR 6, ADR 17): no sockets, no netlink, no clock. `plan_mesh` says what the interface
should look like; `diff` compares that with what the device and the routing table report and
returns the fewest operations that close the gap. Applying an empty diff does nothing, so a
restarted agent that re-applies its plan leaves working tunnels (and their sessions) alone.

Keys are base64 strings here, as the cluster state and `wg` show them; the adapter converts to
the hex the UAPI speaks. The private key is only ever referred to (`private_key_ref`, e.g. the
path of the node's key file): it never enters a plan, a diff or a log line.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

DEFAULT_LISTEN_PORT = 51820
DEFAULT_KEEPALIVE = 25  # seconds: keeps NAT mappings open; WireGuard's own recommendation
DEFAULT_IFNAME = "warren0"


class PlanError(ValueError):
    """The cluster's node list cannot be turned into a mesh (duplicate key, overlapping subnet...)."""


@dataclass(frozen=True)
class MeshNode:
    """What the cluster state knows about one node's place in the mesh."""

    node_id: str
    public_key: str | None  # base64; None until the node has published it
    endpoint: str | None  # "IP:PORT" the other nodes send to; None: it only connects out
    subnet: str  # the node's overlay subnet, CIDR (from IPAM)


@dataclass(frozen=True, order=True)
class PeerConfig:
    """One WireGuard peer as we want it (or as the device reports it)."""

    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]  # sorted, normalised CIDRs
    keepalive: int  # persistent keepalive interval in seconds, 0 = off


@dataclass(frozen=True, order=True)
class Route:
    """A route to a peer's subnet through the WireGuard interface, from this node's address."""

    destination: str  # CIDR
    device: str
    source: str | None = None  # preferred source address


@dataclass(frozen=True)
class InterfaceConfig:
    """This node's WireGuard interface."""

    ifname: str
    private_key_ref: str  # where the adapter finds the private key; never the key itself
    public_key: str  # base64, of that private key (published in the cluster state)
    listen_port: int
    address: str  # this node's overlay address, CIDR (/32: the subnet itself is routed locally)
    peers: tuple[PeerConfig, ...]  # sorted by public key


@dataclass(frozen=True)
class MeshPlan:
    interface: InterfaceConfig
    routes: tuple[Route, ...]  # sorted


@dataclass(frozen=True)
class CurrentState:
    """What the device and the routing table report now; `public_key` None = no key set yet."""

    public_key: str | None = None
    listen_port: int | None = None
    peers: tuple[PeerConfig, ...] = ()
    addresses: tuple[str, ...] = ()  # CIDRs on the interface
    routes: tuple[Route, ...] = ()  # routes through the interface


# -- operations: what `diff` returns and the adapter carries out ----------------------------------


@dataclass(frozen=True)
class SetInterface:
    """Set the private key (from its reference) and the listen port (None: keep it; setting it
    rebinds the UDP socket, which a key change alone must not do)."""

    private_key_ref: str
    listen_port: int | None


@dataclass(frozen=True)
class AddPeer:
    peer: PeerConfig


@dataclass(frozen=True)
class UpdatePeer:
    """Change a peer in place: the session and its handshake survive."""

    peer: PeerConfig
    endpoint_changed: bool = True
    allowed_ips_changed: bool = True
    keepalive_changed: bool = True


@dataclass(frozen=True)
class RemovePeer:
    public_key: str


@dataclass(frozen=True)
class AddAddress:
    ifname: str
    address: str


@dataclass(frozen=True)
class RemoveAddress:
    ifname: str
    address: str


@dataclass(frozen=True)
class AddRoute:
    route: Route


@dataclass(frozen=True)
class RemoveRoute:
    route: Route


Operation = SetInterface | AddPeer | UpdatePeer | RemovePeer | AddAddress | RemoveAddress | AddRoute | RemoveRoute


@dataclass(frozen=True)
class Diff:
    """Operations in the order they are applied: interface, addresses, peers, routes; within
    each group removals come first, so an address or subnet moving between peers never clashes."""

    operations: tuple[Operation, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not self.operations


# -- planning ------------------------------------------------------------------------------------


def _network(cidr: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise PlanError(f"{what}: {exc}") from None


def node_address(subnet: str) -> str:
    """A node's own overlay address: the first host of its subnet (the later bridge gateway)."""
    net = ipaddress.ip_network(subnet, strict=True)
    if net.num_addresses < 4:
        raise PlanError(f"subnet {subnet} is too small for a node (needs at least a /30)")
    return str(net.network_address + 1)


def _check_nodes(nodes: Iterable[MeshNode]) -> list[MeshNode]:
    nodes = list(nodes)
    seen_ids: set[str] = set()
    seen_keys: dict[str, str] = {}
    nets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
    for n in nodes:
        if n.node_id in seen_ids:
            raise PlanError(f"node {n.node_id} appears twice")
        seen_ids.add(n.node_id)
        if n.public_key is not None:
            if n.public_key in seen_keys:
                raise PlanError(f"nodes {seen_keys[n.public_key]} and {n.node_id} have the same public key")
            seen_keys[n.public_key] = n.node_id
        net = _network(n.subnet, f"subnet of node {n.node_id}")
        for other, other_id in nets:
            if net.overlaps(other):
                raise PlanError(f"subnets of nodes {other_id} ({other}) and {n.node_id} ({net}) overlap")
        nets.append((net, n.node_id))
        if n.endpoint is not None:
            _check_endpoint(n.endpoint, n.node_id)
    return nodes


def _check_endpoint(endpoint: str, node_id: str) -> None:
    host, sep, port = endpoint.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        ok = bool(sep) and 0 < int(port) < 65536
    except ValueError:
        ok = False
    if not ok:
        raise PlanError(f"endpoint of node {node_id} is not IP:PORT: {endpoint!r}")


def plan_mesh(
    nodes: Iterable[MeshNode],
    self_id: str,
    *,
    private_key_ref: str,
    ifname: str = DEFAULT_IFNAME,
    listen_port: int = DEFAULT_LISTEN_PORT,
    keepalive: int = DEFAULT_KEEPALIVE,
) -> MeshPlan:
    """This node's desired interface: every other node with a published key is a peer whose
    allowed IPs are its subnet, and each of those subnets is routed through the interface."""
    nodes = _check_nodes(nodes)
    me = next((n for n in nodes if n.node_id == self_id), None)
    if me is None:
        raise PlanError(f"node {self_id} is not in the mesh")
    if me.public_key is None:
        raise PlanError(f"node {self_id} has no public key yet")
    address = node_address(me.subnet)
    peers = []
    routes = []
    for n in nodes:
        if n.node_id == self_id or n.public_key is None:
            continue
        subnet = str(ipaddress.ip_network(n.subnet))
        peers.append(PeerConfig(n.public_key, n.endpoint, (subnet,), keepalive))
        routes.append(Route(subnet, ifname, address))
    prefix = ipaddress.ip_address(address).max_prefixlen
    interface = InterfaceConfig(
        ifname=ifname,
        private_key_ref=private_key_ref,
        public_key=me.public_key,
        listen_port=listen_port,
        address=f"{address}/{prefix}",
        peers=tuple(sorted(peers)),
    )
    return MeshPlan(interface, tuple(sorted(routes)))


# -- diffing -------------------------------------------------------------------------------------


def _norm_cidrs(cidrs: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({str(ipaddress.ip_network(c, strict=False)) for c in cidrs}))


def normalise_peer(peer: PeerConfig) -> PeerConfig:
    """The same peer with its allowed IPs sorted and normalised, so equal configs compare equal."""
    return PeerConfig(peer.public_key, peer.endpoint, _norm_cidrs(peer.allowed_ips), peer.keepalive)


def diff(current: CurrentState, plan: MeshPlan) -> Diff:
    """The minimal operations that turn `current` into `plan`: only changed peers are touched,
    and a changed peer is updated in place, never removed and re-added, unless this node's own
    key changes (then every peer is started afresh)."""
    want = plan.interface
    ops: list[Operation] = []
    if current.public_key != want.public_key or current.listen_port != want.listen_port:
        port = want.listen_port if current.listen_port != want.listen_port else None
        ops.append(SetInterface(want.private_key_ref, port))
    # A new private key (a rotation, ADR 18) ends every session anyway. Peers are started afresh
    # so that each handshakes at once (a new peer with a keepalive sends one): without that, a
    # handshake lost because a peer had not switched yet is retried only after 5 s.
    rekeyed = current.public_key is not None and current.public_key != want.public_key

    have_addrs = set(current.addresses)
    ops += [RemoveAddress(want.ifname, a) for a in sorted(have_addrs - {want.address})]
    if want.address not in have_addrs:
        ops.append(AddAddress(want.ifname, want.address))

    have = {p.public_key: normalise_peer(p) for p in current.peers}
    wanted = {p.public_key: normalise_peer(p) for p in want.peers}
    if rekeyed:
        have = {}
        ops += [RemovePeer(k) for k in sorted({p.public_key for p in current.peers})]
    ops += [RemovePeer(k) for k in sorted(have.keys() - wanted.keys())]
    for key in sorted(wanted):
        new = wanted[key]
        old = have.get(key)
        if old is None:
            ops.append(AddPeer(new))
        elif old != new:
            # A desired endpoint of None means "whatever the peer roams from": never clear it.
            endpoint_changed = new.endpoint is not None and new.endpoint != old.endpoint
            allowed_changed = new.allowed_ips != old.allowed_ips
            keepalive_changed = new.keepalive != old.keepalive
            if endpoint_changed or allowed_changed or keepalive_changed:
                ops.append(UpdatePeer(new, endpoint_changed, allowed_changed, keepalive_changed))

    have_routes = set(current.routes)
    want_routes = set(plan.routes)
    ops += [RemoveRoute(r) for r in sorted(have_routes - want_routes)]
    ops += [AddRoute(r) for r in sorted(want_routes - have_routes)]
    return Diff(tuple(ops))


def expected_state(plan: MeshPlan) -> CurrentState:
    """What the device should report once `plan` is applied (for tests and fakes)."""
    i = plan.interface
    return CurrentState(i.public_key, i.listen_port, i.peers, (i.address,), plan.routes)
