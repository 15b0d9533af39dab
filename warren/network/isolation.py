"""Network isolation (#14, ADR 47): which tasks may reach which, as nftables rules rendered whole
from the services' endpoints (their networks and task addresses) and the nodes' subnets.

Pure, like `lb`: `ruleset(endpoints, subnets)` returns text that the agent appends to the load
balancer's, so both load in one `nft -f` transaction. It adds to the `ip` table a filter on the
forward hook (what a node routes: a task's packets to another node's task, or to a VIP's
backend after the DNAT), and makes a `bridge` table of the same name for what the node's bridge
switches between two of its own tasks, which the `ip` hooks do not see without br_netfilter.

A packet from one task address to another passes only if both are on one network. Task
addresses are those of the nodes' subnets except each node's own address: the node itself (its
health checks, its connections to a VIP, published ports masqueraded to it) reaches every task.
Connections that came in on a published port (lb.PUBLISHED_MARK) pass whatever their source, so
published ports answer from every node whatever the service's network. A task address no
endpoint names yet is in no network: it reaches no other task (fails closed). A task whose
networks are all internal has no route out of the overlay, nor to its node's other addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from warren.network.lb import PUBLISHED_MARK, TABLE, Endpoint, check_table


def memberships(endpoints: Iterable[Endpoint]) -> dict[str, frozenset[str]]:
    """Each network's task addresses: the members of every service on it."""
    members: dict[str, set[str]] = {}
    for ep in endpoints:
        for network in ep.networks:
            members.setdefault(network, set()).update(_address(a) for a in ep.members)
    return {network: frozenset(addresses) for network, addresses in members.items()}


def internal_only(endpoints: Iterable[Endpoint]) -> frozenset[str]:
    """The task addresses whose services are only on internal networks. An address in two
    services' lists (one freed and reused meanwhile) is internal only if both say so."""
    internal: set[str] = set()
    external: set[str] = set()
    for ep in endpoints:
        (internal if ep.internal else external).update(_address(a) for a in ep.members)
    return frozenset(internal - external)


def ruleset(endpoints: Iterable[Endpoint], subnets: Iterable[str], table: str = TABLE) -> str:
    """The isolation rules for `table` (see the module doc); "" when no endpoint names a network
    (nothing is known to isolate)."""
    check_table(table)
    endpoints = list(endpoints)
    if not any(ep.networks for ep in endpoints):
        return ""
    networks = memberships(endpoints)
    nets = sorted({ipaddress.IPv4Network(s, strict=True) for s in subnets})
    nodes = [str(net.network_address + 1) for net in nets]
    member_sets = [(f"net_{i}", networks[name]) for i, name in enumerate(sorted(networks))]
    sets = [
        _set("task_subnets", [str(n) for n in nets], interval=True),
        _set("node_addresses", nodes),
        *(_set(name, addresses) for name, addresses in member_sets),
    ]
    pairs = [f"        ip saddr @{name} ip daddr @{name} accept" for name, _ in member_sets]
    between_tasks = [
        "        ip saddr @node_addresses accept",
        "        ip daddr @node_addresses accept",
        *pairs,
        "        ip saddr @task_subnets ip daddr @task_subnets drop",
    ]
    routed = [
        "        ct state established,related accept",
        f"        ct mark {PUBLISHED_MARK:#x} accept",
        *between_tasks,
    ]
    closed = sorted(internal_only(endpoints), key=ipaddress.IPv4Address)
    local: list[str] = []
    if closed:
        sets.append(_set("internal_only", closed))
        routed.append("        ip saddr @internal_only drop")
        # Nor to the node's own other addresses (its underlay); its overlay address (the DNS,
        # replies to health checks) stays open.
        local = [
            "        ct state established,related accept",
            "        ip saddr @internal_only ip daddr != @node_addresses drop",
        ]
    body = "".join(sets)
    return (
        f"table ip {table} {{\n{body}"
        + _chain("isolation", "type filter hook forward priority filter - 1; policy accept;", routed)
        + (
            _chain("isolation-input", "type filter hook input priority filter - 1; policy accept;", local)
            if local
            else ""
        )
        + "}\n"
        + f"table bridge {table} {{\n{body}"
        + _chain("isolation", "type filter hook forward priority filter - 1; policy accept;", between_tasks)
        + "}\n"
    )


def _address(text: str) -> str:
    return str(ipaddress.IPv4Address(text))  # ValueError for anything else: never into the rules


def _set(name: str, elements: Iterable[str], interval: bool = False) -> str:
    items = sorted(elements, key=lambda e: ipaddress.IPv4Network(e))
    flags = "        flags interval;\n" if interval else ""
    listed = f"        elements = {{ {', '.join(items)} }}\n" if items else ""
    return f"    set {name} {{\n        type ipv4_addr;\n{flags}{listed}    }}\n"


def _chain(name: str, hook: str, rules: list[str]) -> str:
    return f"    chain {name} {{\n        {hook}\n" + "\n".join(rules) + "\n    }\n"
