"""Task networks (ADR 17): each task gets its own network namespace, a veth to the node's
bridge, and its address from the node's overlay subnet; the bridge holds the node's own
address, so tasks reach other nodes' subnets through the node's WireGuard routes.

Names are derived from the task id, so a restarted agent finds what it made: the namespace
`wt-<task id>` (under /run/netns) and the host side of the veth `wv<first 13 characters>`. All
calls are idempotent and blocking (the agent runs them in a worker thread).

Inside a task's namespace, iproute2's `ip -n` does the work rather than pyroute2: pyroute2
enters another namespace by forking, and a fork of the agent (a threaded gRPC process) aborts.
In the agent's own namespace (the bridge, the host end of each veth) pyroute2 serves.

Every task network is written in the node's ledger (`<data dir>/network/tasks/<task id>`, ADR 23)
before any of it is made, and struck out only once all of it is gone: the agent's sweep and
`warren worker teardown` remove exactly what the ledger names, never by a pattern (/run/netns is
shared by every namespace on the host, so `wt-*` there is any node's).
"""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

from warren import datadir
from warren.network import links, owner
from warren.network.owner import BRIDGE

NETNS_PREFIX = "wt-"
_IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def netns_name(task_id: str) -> str:
    return f"{NETNS_PREFIX}{task_id}"


def host_veth(task_id: str) -> str:
    return f"wv{task_id[:13]}"


def ledger_dir(data_dir: Path) -> Path:
    """Where a node records the task networks it made."""
    return datadir.AgentDir(data_dir).task_ledger


def recorded(ledger: Path) -> list[str]:
    """The task ids whose networks the ledger names (made, or being made or removed)."""
    try:
        return sorted(p.name for p in ledger.iterdir() if not p.name.startswith("."))
    except FileNotFoundError:
        return []


def _record(ledger: Path, task_id: str) -> None:
    if "/" in task_id or task_id.startswith(".") or not task_id:
        raise ValueError(f"invalid task id {task_id!r}")
    ledger.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ledger / task_id).touch()


def release(ledger: Path, task_id: str) -> bool:
    """Remove a task's veth (both ends) and namespace, then strike it from the ledger; nothing
    there is fine. Call once nothing runs in the namespace. True if anything was there."""
    name, veth = netns_name(task_id), host_veth(task_id)
    entry = ledger / task_id
    found = entry.exists() or (links.NETNS_DIR / name).exists()
    if not found:
        return False  # the veth went with the namespace (its peer lived there)
    if links.link_index(veth) is not None:
        links.delete_link(veth)
    if (links.NETNS_DIR / name).exists():
        _ip("netns", "del", name)
    entry.unlink(missing_ok=True)
    return True


class TaskNetworkManager:
    """Task namespaces on this node's bridge, for the node's overlay `subnet`."""

    def __init__(self, subnet: str, ledger: Path, owner_tag: str, bridge: str = BRIDGE) -> None:
        self.subnet = ipaddress.IPv4Network(subnet)
        self.ledger = ledger
        self.owner_tag = owner_tag  # this node's (warren.network.owner), on the bridge
        self.bridge = bridge
        self.gateway = self.subnet.network_address + 1  # the node's own address (plan.node_address)
        self._bridge_ready = False

    def ensure_bridge(self) -> None:
        """The node's bridge with the node's address, and forwarding on (tasks are routed). A
        bridge another node's tag marks is never used (ADR 23)."""
        if self._bridge_ready:
            return
        found = owner.link_owner(self.bridge)
        if found and found != self.owner_tag:
            raise links.LinkError(f"the bridge {self.bridge} belongs to {owner.describe(found)}")
        if found is None:
            links.add_bridge(self.bridge)
        if found != self.owner_tag:
            links.set_link_alias(self.bridge, self.owner_tag)
        links.pin_link_address(self.bridge)  # ports come and go; the tasks' gateway MAC stays
        links.add_address(self.bridge, f"{self.gateway}/{self.subnet.prefixlen}")
        links.link_up(self.bridge)
        if _IP_FORWARD.read_text().strip() != "1":
            _IP_FORWARD.write_text("1\n")
        self._bridge_ready = True

    def route_vips(self, vip_range: str) -> None:
        """Service VIPs are reached through the bridge: the node's own connections to one need
        a route before the load balancer's DNAT picks the backend."""
        links.add_route(str(ipaddress.IPv4Network(vip_range)), self.bridge, str(self.gateway))

    @staticmethod
    def route_localnet(ifname: str) -> None:
        """Let connections from the loopback be DNATed out of `ifname` (published ports on
        127.0.0.1, ADR 17); the load balancer's table drops what would abuse it."""
        path = Path(f"/proc/sys/net/ipv4/conf/{ifname}/route_localnet")
        if path.exists() and path.read_text().strip() != "1":
            path.write_text("1\n")

    @staticmethod
    def apply_nft(ruleset: str) -> None:
        """Load an nftables ruleset (one atomic transaction) in this namespace."""
        result = subprocess.run(["nft", "-f", "-"], input=ruleset, capture_output=True, text=True, timeout=10)
        if result.returncode != 0:
            raise links.LinkError(f"nft -f: {result.stderr.strip() or result.returncode}")

    def attach(self, task_id: str, address: str) -> str:
        """The task's namespace with `address` on its eth0 and a default route via the node."""
        if ipaddress.IPv4Address(address) not in self.subnet:
            raise ValueError(f"task address {address} is not in this node's subnet {self.subnet}")
        self.ensure_bridge()
        name, veth = netns_name(task_id), host_veth(task_id)
        _record(self.ledger, task_id)  # before anything exists: whatever follows is found again
        if not (links.NETNS_DIR / name).exists():
            _ip("netns", "add", name)
        if links.link_index(veth) is None:
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        links.set_master(veth, self.bridge)
        # Hairpin: with bridge netfilter on (br_netfilter), a task's connection to its own
        # service's VIP is DNATed while bridged, and must go back out of the port it came in by.
        _ip("link", "set", "dev", veth, "type", "bridge_slave", "hairpin", "on")
        _ip("-n", name, "link", "set", "lo", "up")
        # The MAC follows from the address (as Docker's does): an address freed and given to a
        # new task keeps its MAC, so the node's neighbour entry for it, still "reachable" for up
        # to 45 s, does not send the new task's connections to the old one's vanished MAC.
        _ip("-n", name, "link", "set", "eth0", "address", task_mac(address))
        _ip("-n", name, "link", "set", "eth0", "up")
        _ip("-n", name, "addr", "replace", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip("-n", name, "route", "replace", "default", "via", str(self.gateway))
        return links.netns_path(name)

    def detach(self, task_id: str) -> None:
        """Remove the task's veth (both ends) and namespace; nothing there is fine."""
        release(self.ledger, task_id)


def task_mac(address: str) -> str:
    """The MAC of a task's eth0: locally administered, unicast, 02:57 and the IPv4 address."""
    return "02:57:" + ":".join(f"{octet:02x}" for octet in ipaddress.IPv4Address(address).packed)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise links.LinkError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")
