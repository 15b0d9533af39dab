"""Service VIP load balancing (ADR 17): one nftables table, rendered whole from the services'
VIPs and their healthy tasks' addresses, and replaced in one `nft -f` transaction.

Pure: `ruleset(table, endpoints)` returns the text; `warren.network.tasknet` / the agent applies
it. Connections to a VIP, from the node itself (output) or from its tasks (prerouting, through
the bridge), are DNATed to one backend chosen at random per connection; the port is kept. The
source address is left alone (no SNAT): a backend on another node answers the client's own
address over the mesh, and conntrack on the client's node undoes the DNAT, so backends see who
called them (unlike Swarm's routing mesh, moby#25526). A VIP with no healthy backend rejects
connections at once rather than letting them hang.

A published port also answers on the node's loopback (`curl 127.0.0.1:PORT` on a node, as with
Docker): such a connection is DNATed out of the loopback, which the kernel allows only with
`route_localnet` on the outgoing link (the bridge, the WireGuard interface; set by the agent) and
is masqueraded to that link's address. Since `route_localnet` would also let a task (or a peer)
address the node's own 127.0.0.0/8 services, the table drops any packet to 127.0.0.0/8 that
arrives on another link than the loopback (as Kubernetes does since CVE-2020-8558).

A host-mode port (ADR 46) is published only by a node running a task of its service, straight to
that task: its rule names only the backends in the node's own subnet (`local_subnet`), so a node
without one has no rule and refuses the port.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

TABLE = "warren"
_TABLE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")  # fullmatch
_COMMENT_RE = re.compile(r'[^"\\\x00-\x1f\x7f]{0,128}')  # nft's limit; nothing ends the string early


@dataclass(frozen=True)
class Endpoint:
    """A service as the load balancer sees it."""

    name: str
    vip: str
    backends: tuple[str, ...]  # healthy task addresses
    ports: tuple[tuple[str, int, int], ...] = ()  # published ports: (protocol, published, target)
    # A canary (ADR 33): these healthy tasks get `canary_weight` percent of new connections
    # between them, whatever their number; `backends` share the rest.
    canary: tuple[str, ...] = ()
    canary_weight: int = 0
    host_ports: tuple[tuple[str, int, int], ...] = ()  # host-mode ports (ADR 46), as `ports`
    # Networks (#14, ADR 47): the service's networks by name (() = none known: no isolation),
    # every live task's address (not only the healthy ones: a starting task calls its peers
    # too), its aliases as (network, alias), and whether all its networks are internal.
    networks: tuple[str, ...] = ()
    members: tuple[str, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    internal: bool = False


# Weighted choices pick one of this many buckets per connection: 1/10000 is the finest share.
BUCKETS = 10000


# Marks connections that came in on a published port, so that those leaving for another node's
# task are masqueraded (the reply must come back through this node); see the module doc.
PUBLISHED_MARK = 0x5741


def _address(text: str) -> str:
    return str(ipaddress.IPv4Address(text))  # ValueError for anything else: never into the rules


def ruleset(
    endpoints: Iterable[Endpoint], table: str = TABLE, bridge: str = "", owner: str = "", local_subnet: str = ""
) -> str:
    """The whole table: re-applying the same endpoints gives the same text (sorted). `bridge`
    is the node's task bridge: published-port connections leaving by another link (to another
    node's task) are masqueraded. `owner` is the node's tag (warren.network.owner), the table's
    comment. `local_subnet` is the node's overlay subnet: its tasks take its host-mode ports."""
    local = ipaddress.IPv4Network(local_subnet) if local_subnet else None
    check_table(table)
    if not _COMMENT_RE.fullmatch(owner):
        raise ValueError(f"invalid nftables comment {owner!r}")
    nat: list[str] = []
    unavailable: list[str] = []
    every_backend: set[str] = set()
    for ep in sorted(endpoints, key=lambda e: ipaddress.IPv4Address(e.vip)):
        vip = _address(ep.vip)
        shares = _shares(ep)
        every_backend.update(address for address, _ in shares)
        if not shares:
            unavailable.append(f"        ip daddr {vip} reject with icmp type host-unreachable")
            continue
        nat.append(f"        ip daddr {vip} dnat to {_choice(shares)}")
        nat.extend(_published(ep, shares))
        here = [(a, 1) for a, _ in shares if local is not None and ipaddress.IPv4Address(a) in local]
        if here and ep.host_ports:
            nat.extend(_published(ep, here, ep.host_ports))
    nat_rules, reject_rules = "\n".join(nat), "\n".join(unavailable)
    masquerade = (
        f"        ct mark {PUBLISHED_MARK:#x} oifname != {_quote(bridge)} masquerade\n"
        f"        ct mark {PUBLISHED_MARK:#x} ip saddr 127.0.0.0/8 masquerade"
        if bridge
        else ""
    )
    guard = '        iifname != "lo" ip daddr 127.0.0.0/8 drop'
    if every_backend:
        # Hairpin: a task whose VIP connection was sent to itself would see a packet from its own
        # address and drop it; only that connection is masqueraded (to the node's bridge address).
        pairs = ", ".join(f"{b} . {b}" for b in sorted(every_backend, key=ipaddress.IPv4Address))
        masquerade += f"\n        ct status dnat ip saddr . ip daddr {{ {pairs} }} masquerade"

    return (
        removal(table)
        + f"table ip {table} {{\n"
        + (f'    comment "{owner}"\n' if owner else "")
        + _chain("vip-prerouting", "type nat hook prerouting priority dstnat; policy accept;", nat_rules)
        + _chain("vip-output", "type nat hook output priority -100; policy accept;", nat_rules)
        + _chain("published-postrouting", "type nat hook postrouting priority srcnat; policy accept;", masquerade)
        + _chain("vip-unavailable", "type filter hook output priority 0; policy accept;", reject_rules)
        + _chain("vip-unavailable-forward", "type filter hook forward priority 0; policy accept;", reject_rules)
        + _chain("localnet-guard", "type filter hook prerouting priority raw; policy accept;", guard)
        + "}\n"
    )


def _shares(ep: Endpoint) -> list[tuple[str, int]]:
    """Each backend address with its share of new connections, in buckets of BUCKETS: equal
    shares unless a canary takes `canary_weight` percent (an address in both lists is a canary)."""
    if not 0 <= ep.canary_weight <= 100:
        raise ValueError(f"invalid canary weight {ep.canary_weight} of {ep.name}")
    canary = sorted({_address(b) for b in ep.canary}, key=ipaddress.IPv4Address)
    stable = sorted({_address(b) for b in ep.backends} - set(canary), key=ipaddress.IPv4Address)
    if not canary or not stable:
        return [(address, 1) for address in stable or canary]  # equal shares
    canary_buckets = BUCKETS * ep.canary_weight // 100
    weighted = list(zip(canary, _split(canary_buckets, len(canary)), strict=True))
    weighted += zip(stable, _split(BUCKETS - canary_buckets, len(stable)), strict=True)
    return [(address, share) for address, share in weighted if share > 0]


def _split(total: int, parts: int) -> list[int]:
    """`total` in `parts` shares that differ by one at most."""
    return [total // parts + (i < total % parts) for i in range(parts)] if parts else []


def _choice(shares: list[tuple[str, int]], port: int = 0) -> str:
    """The dnat target: one address, or one picked per connection in proportion to its share
    (equal shares: `numgen random mod N` over indexes; otherwise over bucket ranges)."""
    target = (lambda address: f"{address} . {port}") if port else (lambda address: address)
    if len(shares) == 1:
        return f"{shares[0][0]}:{port}" if port else shares[0][0]
    if len({share for _, share in shares}) == 1:
        choices = ", ".join(f"{i} : {target(address)}" for i, (address, _) in enumerate(shares))
        return f"numgen random mod {len(shares)} map {{ {choices} }}"
    ranges, start = [], 0
    for address, share in shares:
        ranges.append(f"{start}-{start + share - 1} : {target(address)}")
        start += share
    return f"numgen random mod {start} map {{ {', '.join(ranges)} }}"


def _published(
    ep: Endpoint, shares: list[tuple[str, int]], ports: tuple[tuple[str, int, int], ...] | None = None
) -> list[str]:
    """A published port on any of this node's own addresses goes to one of the tasks' target
    port (the routing mesh; `ports`: the host-mode ones, to this node's tasks); the connection
    is marked for masquerading (see PUBLISHED_MARK)."""
    rules = []
    for protocol, published, target in sorted(ep.ports if ports is None else ports):
        if protocol not in ("tcp", "udp") or not 0 < published < 65536 or not 0 < target < 65536:
            raise ValueError(f"invalid published port {protocol} {published}:{target} of {ep.name}")
        to = _choice(shares, target)
        rules.append(
            f"        fib daddr type local {protocol} dport {published} ct mark set {PUBLISHED_MARK:#x} dnat ip to {to}"
        )
    return rules


def _quote(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", name):
        raise ValueError(f"invalid interface name {name!r}")
    return f'"{name}"'


def _chain(name: str, hook: str, rules: str) -> str:
    return f"    chain {name} {{\n        {hook}\n{rules}\n    }}\n"


def check_table(table: str) -> None:
    """Raises ValueError for a name nft would not take as a table (or that would end the text)."""
    if not _TABLE_RE.fullmatch(table):
        raise ValueError(f"invalid nftables table name {table!r}")


def removal(table: str = TABLE) -> str:
    """The transaction that removes the table and its bridge twin, which holds the isolation of
    tasks on one bridge (warren.network.isolation); creating each first makes it idempotent."""
    check_table(table)
    return f"table ip {table} {{}}\ndelete table ip {table}\ntable bridge {table} {{}}\ndelete table bridge {table}\n"
