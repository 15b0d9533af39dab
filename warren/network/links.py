"""pyroute2 helpers: namespaces, links, addresses, routes, veths and bridges.

Every function takes an optional `netns` (a name under /run/netns); None means the namespace
this process runs in. Each call opens and closes its own netlink socket: these run on
configuration changes, not per packet, and a short-lived socket cannot leak into a fork.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from pathlib import Path

from pyroute2 import netns as _netns
from pyroute2.iproute.linux import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

NETNS_DIR = Path("/run/netns")
MAIN_TABLE = 254
RTPROT_STATIC = 4
RT_SCOPE_LINK = 253


class LinkError(RuntimeError):
    """A link, address or route operation failed; the message names the object and namespace."""


@contextlib.contextmanager
def ipr(netns: str | None = None) -> Iterator[IPRoute]:
    """An IPRoute socket in `netns` (or here), closed on exit."""
    sock = IPRoute(netns=netns) if netns else IPRoute()
    try:
        yield sock
    finally:
        sock.close()


def _where(netns: str | None) -> str:
    return f"namespace {netns}" if netns else "this namespace"


# -- namespaces ----------------------------------------------------------------------------------


def create_netns(name: str) -> None:
    _netns.create(name)


def remove_netns(name: str) -> None:
    """Remove a namespace by name; a missing one is not an error."""
    if name in _netns.listnetns():
        _netns.remove(name)


def netns_path(name: str) -> str:
    return str(NETNS_DIR / name)


def nsenter(netns: str | None, argv: list[str]) -> list[str]:
    """argv run in `netns`'s network only (mounts stay ours: ENVIRONMENT.md, not `ip netns exec`)."""
    return ["nsenter", f"--net={netns_path(netns)}", *argv] if netns else list(argv)


# -- links ---------------------------------------------------------------------------------------


def link_index(ifname: str, netns: str | None = None) -> int | None:
    with ipr(netns) as ip:
        found = ip.link_lookup(ifname=ifname)
    return found[0] if found else None


def _index(ip: IPRoute, ifname: str, netns: str | None) -> int:
    found = ip.link_lookup(ifname=ifname)
    if not found:
        raise LinkError(f"no link {ifname} in {_where(netns)}")
    return found[0]


def link_up(ifname: str, netns: str | None = None, mtu: int | None = None) -> None:
    with ipr(netns) as ip:
        kwargs = {"mtu": mtu} if mtu else {}
        ip.link("set", index=_index(ip, ifname, netns), state="up", **kwargs)


def delete_link(ifname: str, netns: str | None = None) -> None:
    """Delete a link by name; a missing one is not an error."""
    with ipr(netns) as ip:
        found = ip.link_lookup(ifname=ifname)
        if found:
            ip.link("del", index=found[0])


def add_bridge(name: str, netns: str | None = None) -> None:
    """A bridge, up."""
    with ipr(netns) as ip:
        ip.link("add", ifname=name, kind="bridge")
        ip.link("set", index=_index(ip, name, netns), state="up")


def pin_link_address(ifname: str, netns: str | None = None) -> None:
    """Set a link's MAC to the one it has now, so that the kernel never changes it. A bridge
    otherwise takes the lowest MAC of its ports, which changes as tasks come and go; its tasks
    still hold the old one for their gateway (for up to ~45 s), and their replies to anything off
    the subnet (a published port's client, another node's task) go nowhere meanwhile."""
    with ipr(netns) as ip:
        index = _index(ip, ifname, netns)
        address = ip.get_links(index)[0].get_attr("IFLA_ADDRESS")
        ip.link("set", index=index, address=address)


def link_alias(ifname: str, netns: str | None = None) -> str | None:
    """A link's alias (IFLA_IFALIAS): "" when it has none, None when there is no such link."""
    with ipr(netns) as ip:
        found = ip.get_links(ifname=ifname) if ip.link_lookup(ifname=ifname) else []
    return (found[0].get_attr("IFLA_IFALIAS") or "") if found else None


def set_link_alias(ifname: str, alias: str, netns: str | None = None) -> None:
    with ipr(netns) as ip:
        ip.link("set", index=_index(ip, ifname, netns), ifalias=alias)


def add_veth(name: str, peer: str, netns: str | None = None, peer_netns: str | None = None) -> None:
    """A veth pair: `name` in `netns`, `peer` in `peer_netns` (the same namespace when None)."""
    peer_spec: dict[str, object] = {"ifname": peer}
    if peer_netns:
        peer_spec["net_ns_fd"] = peer_netns
    with ipr(netns) as ip:
        try:
            ip.link("add", ifname=name, kind="veth", peer=peer_spec)
        except NetlinkError as exc:
            raise LinkError(f"cannot add veth {name}/{peer} in {_where(netns)}: {exc}") from exc


def set_master(ifname: str, bridge: str, netns: str | None = None) -> None:
    """Enslave `ifname` to `bridge` and bring it up."""
    with ipr(netns) as ip:
        ip.link("set", index=_index(ip, ifname, netns), master=_index(ip, bridge, netns), state="up")


# -- addresses -----------------------------------------------------------------------------------


def addresses(ifname: str, netns: str | None = None) -> tuple[str, ...]:
    """The IPv4 addresses on a link, as sorted CIDRs."""
    with ipr(netns) as ip:
        index = _index(ip, ifname, netns)
        msgs = ip.get_addr(index=index, family=2)
    return tuple(sorted(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}" for m in msgs))


def add_address(ifname: str, cidr: str, netns: str | None = None) -> None:
    """Add an address (idempotent: an address already there is fine)."""
    iface = ipaddress.ip_interface(cidr)
    with ipr(netns) as ip:
        try:
            ip.addr("add", index=_index(ip, ifname, netns), address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkError as exc:
            if exc.code != 17:  # EEXIST
                raise LinkError(f"cannot add {cidr} to {ifname} in {_where(netns)}: {exc}") from exc


def remove_address(ifname: str, cidr: str, netns: str | None = None) -> None:
    iface = ipaddress.ip_interface(cidr)
    with ipr(netns) as ip:
        try:
            ip.addr("del", index=_index(ip, ifname, netns), address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkError as exc:
            if exc.code != 99:  # EADDRNOTAVAIL: already gone
                raise LinkError(f"cannot remove {cidr} from {ifname} in {_where(netns)}: {exc}") from exc


# -- routes --------------------------------------------------------------------------------------


def routes(ifname: str, netns: str | None = None) -> tuple[tuple[str, str | None], ...]:
    """Unicast IPv4 routes of the main table that leave through `ifname`, as sorted
    (destination CIDR, preferred source) pairs. Kernel-made connected routes are left out."""
    with ipr(netns) as ip:
        index = _index(ip, ifname, netns)
        msgs = ip.get_routes(family=2, table=MAIN_TABLE, oif=index)
    out = []
    for m in msgs:
        if m.get_attr("RTA_OIF") != index or m["type"] != 1 or m["proto"] == 2:  # unicast, not kernel
            continue
        dst = m.get_attr("RTA_DST") or "0.0.0.0"
        out.append((f"{dst}/{m['dst_len']}", m.get_attr("RTA_PREFSRC")))
    return tuple(sorted(out, key=lambda r: (r[0], r[1] or "")))


def add_route(destination: str, ifname: str, source: str | None = None, netns: str | None = None) -> None:
    """A link-scope route to `destination` through `ifname` (idempotent: `replace`)."""
    with ipr(netns) as ip:
        kwargs: dict[str, object] = {
            "dst": destination,
            "oif": _index(ip, ifname, netns),
            "scope": RT_SCOPE_LINK,
            "proto": RTPROT_STATIC,
        }
        if source:
            kwargs["prefsrc"] = source
        try:
            ip.route("replace", **kwargs)
        except NetlinkError as exc:
            raise LinkError(f"cannot route {destination} via {ifname} in {_where(netns)}: {exc}") from exc


def remove_route(destination: str, ifname: str, netns: str | None = None) -> None:
    """Remove a route through `ifname`: ours are link-scope (the kernel matches the scope too),
    then any other scope; one already gone is not an error."""
    with ipr(netns) as ip:
        index = _index(ip, ifname, netns)
        for scope in ({"scope": RT_SCOPE_LINK}, {}):
            try:
                ip.route("del", dst=destination, oif=index, **scope)
                return
            except NetlinkError as exc:
                if exc.code != 3:  # ESRCH: not this scope, or already gone
                    raise LinkError(
                        f"cannot remove the route {destination} via {ifname} in {_where(netns)}: {exc}"
                    ) from exc
