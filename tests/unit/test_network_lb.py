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
    assert "snat" not in text and "masquerade" not in text  # callers keep their source address


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
    assert removal("wtest") == "table ip wtest {}\ndelete table ip wtest\n"
