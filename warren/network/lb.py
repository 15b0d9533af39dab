"""Service VIP load balancing (ADR 17): one nftables table, rendered whole from the services'
VIPs and their healthy tasks' addresses, and replaced in one `nft -f` transaction.

Pure: `ruleset(table, endpoints)` returns the text; `warren.network.tasknet` / the agent applies
it. Connections to a VIP, from the node itself (output) or from its tasks (prerouting, through
the bridge), are DNATed to one backend chosen at random per connection; the port is kept. The
source address is left alone (no SNAT): a backend on another node answers the client's own
address over the mesh, and conntrack on the client's node undoes the DNAT, so backends see who
called them (unlike Swarm's routing mesh, moby#25526). A VIP with no healthy backend rejects
connections at once rather than letting them hang.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

TABLE = "warren"
_TABLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Endpoint:
    """A service as the load balancer sees it."""

    name: str
    vip: str
    backends: tuple[str, ...]  # healthy task addresses


def _address(text: str) -> str:
    return str(ipaddress.IPv4Address(text))  # ValueError for anything else: never into the rules


def ruleset(endpoints: Iterable[Endpoint], table: str = TABLE) -> str:
    """The whole table: re-applying the same endpoints gives the same text (sorted)."""
    if not _TABLE_RE.match(table):
        raise ValueError(f"invalid nftables table name {table!r}")
    nat: list[str] = []
    unavailable: list[str] = []
    for ep in sorted(endpoints, key=lambda e: ipaddress.IPv4Address(e.vip)):
        vip = _address(ep.vip)
        backends = sorted({_address(b) for b in ep.backends}, key=ipaddress.IPv4Address)
        if not backends:
            unavailable.append(f"        ip daddr {vip} reject with icmp type host-unreachable")
        elif len(backends) == 1:
            nat.append(f"        ip daddr {vip} dnat to {backends[0]}")
        else:
            choices = ", ".join(f"{i} : {b}" for i, b in enumerate(backends))
            nat.append(f"        ip daddr {vip} dnat to numgen random mod {len(backends)} map {{ {choices} }}")
    nat_rules, reject_rules = "\n".join(nat), "\n".join(unavailable)
    return (
        removal(table)
        + f"table ip {table} {{\n"
        + _chain("vip-prerouting", "type nat hook prerouting priority dstnat; policy accept;", nat_rules)
        + _chain("vip-output", "type nat hook output priority -100; policy accept;", nat_rules)
        + _chain("vip-unavailable", "type filter hook output priority 0; policy accept;", reject_rules)
        + _chain("vip-unavailable-forward", "type filter hook forward priority 0; policy accept;", reject_rules)
        + "}\n"
    )


def _chain(name: str, hook: str, rules: str) -> str:
    return f"    chain {name} {{\n        {hook}\n{rules}\n    }}\n"


def removal(table: str = TABLE) -> str:
    """The transaction that removes the table (creating it first makes it idempotent)."""
    if not _TABLE_RE.match(table):
        raise ValueError(f"invalid nftables table name {table!r}")
    return f"table ip {table} {{}}\ndelete table ip {table}\n"
