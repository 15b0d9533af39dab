"""The VIP load balancer's nftables table is a pure rendering of the services (ADR 17)."""

from __future__ import annotations

import pytest

from warren.network.lb import Endpoint, removal, ruleset


def test_the_table_spreads_each_vip_over_its_backends_and_rejects_a_vip_without_any() -> None:
    text = ruleset(
        [
            Endpoint("web", "10.201.0.2", ("10.200.1.2", "10.200.0.2")),
            Endpoint("one", "10.201.0.1", ("10.200.2.5",)),
            Endpoint("down", "10.201.0.3", ()),
        ]
    )
    assert text.startswith("table ip warren {}\ndelete table ip warren\n")  # replaced whole, atomically
    spread = "ip daddr 10.201.0.2 dnat to numgen random mod 2 map { 0 : 10.200.0.2, 1 : 10.200.1.2 }"
    assert text.count(spread) == 2  # tasks' connections (prerouting) and the node's own (output)
    assert text.count("ip daddr 10.201.0.1 dnat to 10.200.2.5") == 2
    assert text.count("ip daddr 10.201.0.3 reject with icmp type host-unreachable") == 2
    # Callers keep their source address; only a task sent to itself (hairpin) cannot.
    assert "snat" not in text and text.count("masquerade") == 1
    assert "ct status dnat ip saddr . ip daddr { 10.200.0.2 . 10.200.0.2, " in text


def test_the_same_services_render_the_same_table_in_any_order() -> None:
    a = [Endpoint("a", "10.201.0.9", ("10.200.0.3", "10.200.0.2")), Endpoint("b", "10.201.0.10", ())]
    b = [Endpoint("b", "10.201.0.10", ()), Endpoint("a", "10.201.0.9", ("10.200.0.2", "10.200.0.3", "10.200.0.2"))]
    assert ruleset(a) == ruleset(b)


@pytest.mark.parametrize(
    "endpoint",
    [
        Endpoint("x", "10.201.0.1; flush ruleset", ()),
        Endpoint("x", "10.201.0.1", ("10.200.0.2 } ; flush ruleset",)),
        Endpoint("x", "fe80::1", ()),
    ],
)
def test_anything_but_an_ipv4_address_never_reaches_the_rules(endpoint: Endpoint) -> None:
    with pytest.raises(ValueError):
        ruleset([endpoint])


def test_table_names_are_checked() -> None:
    with pytest.raises(ValueError):
        ruleset([], table="warren; flush ruleset")
    assert removal("wtest") == (
        "table ip wtest {}\ndelete table ip wtest\ntable bridge wtest {}\ndelete table bridge wtest\n"
    )


def test_published_ports_reach_the_tasks_from_every_node_and_remote_ones_are_masqueraded() -> None:
    web = Endpoint("web", "10.201.0.2", ("10.200.1.2", "10.200.0.2"), (("tcp", 18080, 8080),))
    dns = Endpoint("dns", "10.201.0.3", ("10.200.2.2",), (("udp", 5353, 53),))
    text = ruleset([web, dns], bridge="warren-br0")
    spread = "dnat ip to numgen random mod 2 map { 0 : 10.200.0.2 . 8080, 1 : 10.200.1.2 . 8080 }"
    assert text.count(f"fib daddr type local tcp dport 18080 ct mark set 0x5741 {spread}") == 2
    assert text.count("fib daddr type local udp dport 5353 ct mark set 0x5741 dnat ip to 10.200.2.2:53") == 2
    # Only connections that came in on a published port, and leave for another node, lose
    # their source (the reply must come back through this node); VIP traffic keeps it.
    assert 'ct mark 0x5741 oifname != "warren-br0" masquerade' in text
    # A connection from the node's loopback leaves it with the outgoing link's address.
    assert "ct mark 0x5741 ip saddr 127.0.0.0/8 masquerade" in text
    # A task sent to itself through its own VIP (hairpin) is masqueraded, and only that case.
    hairpin = "ct status dnat ip saddr . ip daddr { 10.200.0.2 . 10.200.0.2, 10.200.1.2 . 10.200.1.2, "
    assert hairpin + "10.200.2.2 . 10.200.2.2 } masquerade" in text and text.count("masquerade") == 3
    # Nothing but the loopback itself may address the node's 127.0.0.0/8 (route_localnet is on).
    assert 'iifname != "lo" ip daddr 127.0.0.0/8 drop' in text
    with pytest.raises(ValueError):
        ruleset([Endpoint("x", "10.201.0.4", ("10.200.0.9",), (("sctp", 1, 2),))])
    with pytest.raises(ValueError):
        ruleset([web], bridge='br0" ; flush ruleset')


def test_the_table_carries_its_nodes_tag_and_nothing_can_end_the_comment_early() -> None:
    tagged = ruleset([], owner="warren:/var/lib/warren-worker")
    assert '    comment "warren:/var/lib/warren-worker"\n' in tagged
    assert "comment" not in ruleset([])
    for bad in ('warren:/x" ; flush ruleset ; "', "warren:/x\nflush ruleset", "warren:/" + "x" * 130):
        with pytest.raises(ValueError, match="comment"):
            ruleset([], owner=bad)


def test_a_canary_gets_its_weight_of_new_connections_whatever_its_number_of_tasks() -> None:
    stable = ("10.200.0.2", "10.200.0.3", "10.200.0.4")
    one = Endpoint("web", "10.201.0.2", stable, (("tcp", 18080, 8080),), canary=("10.200.1.9",), canary_weight=20)
    text = ruleset([one])
    vip = (
        "ip daddr 10.201.0.2 dnat to numgen random mod 10000 map { 0-1999 : 10.200.1.9, "
        "2000-4666 : 10.200.0.2, 4667-7333 : 10.200.0.3, 7334-9999 : 10.200.0.4 }"
    )
    assert text.count(vip) == 2
    assert "0-1999 : 10.200.1.9 . 8080, 2000-4666 : 10.200.0.2 . 8080, " in text  # the published port too
    two = Endpoint("web", "10.201.0.2", stable, canary=("10.200.1.9", "10.200.1.8"), canary_weight=20)
    assert "0-999 : 10.200.1.8, 1000-1999 : 10.200.1.9, 2000-4666 : 10.200.0.2" in ruleset([two])


@pytest.mark.parametrize(
    ("backends", "canary", "weight", "expected"),
    [
        ((), ("10.200.1.9",), 20, "dnat to 10.200.1.9\n"),  # no stable task left: all to the canary
        (("10.200.0.2",), (), 20, "dnat to 10.200.0.2\n"),  # no canary yet
        (("10.200.0.2",), ("10.200.1.9",), 0, "dnat to 10.200.0.2\n"),  # weight 0: none to the canary
        (("10.200.0.2",), ("10.200.1.9",), 100, "dnat to 10.200.1.9\n"),
        # Equal shares keep the plain form; an address in both lists is a canary.
        (("10.200.0.2", "10.200.1.9"), ("10.200.1.9",), 50, "mod 2 map { 0 : 10.200.1.9, 1 : 10.200.0.2 }"),
    ],
)
def test_canary_edges(backends: tuple[str, ...], canary: tuple[str, ...], weight: int, expected: str) -> None:
    assert expected in ruleset([Endpoint("web", "10.201.0.2", backends, canary=canary, canary_weight=weight)])


def test_a_weight_outside_0_to_100_never_reaches_the_rules() -> None:
    for weight in (-1, 101):
        with pytest.raises(ValueError):
            ruleset([Endpoint("web", "10.201.0.2", ("10.200.0.2",), canary=("10.200.1.9",), canary_weight=weight)])
