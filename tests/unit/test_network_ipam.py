"""IPAM: layout checks, deterministic lowest-free allocation, no double allocation, clear errors."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import HealthCheck, settings

from warren.network.ipam import (
    LEGACY_OVERLAY,
    ExhaustedError,
    IpamError,
    allocate_node_subnet,
    allocate_vip,
    make_layout,
    node_subnet,
    release,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
net = ipaddress.ip_network
ip = ipaddress.ip_address


def test_default_layout_holds_4096_nodes():
    layout = make_layout()  # ADR 55: a /16 held 256 nodes, fewer than issue #15's 1,000
    assert (str(layout.overlay), layout.node_prefixlen, str(layout.vips)) == ("10.224.0.0/12", 24, "10.201.0.0/16")
    assert layout.node_subnet_count == 4096
    assert node_subnet(layout, 0) == net("10.224.0.0/24")
    assert node_subnet(layout, 4095) == net("10.239.255.0/24")


def test_the_legacy_default_layout():
    layout = make_layout(LEGACY_OVERLAY)  # what clusters that recorded no range use
    assert (str(layout.overlay), layout.node_subnet_count) == ("10.200.0.0/16", 256)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"overlay": "10.200.0.0/16", "vip_range": "10.200.128.0/20"}, "VIP range 10.200.128.0/20 overlaps"),
        ({"overlay": "10.200.0.0/16", "reserved": ["10.200.5.0/24"]}, "overlay range 10.200.0.0/16 overlaps the host"),
        ({"vip_range": "10.201.0.0/16", "reserved": ["10.0.0.0/8"]}, "overlaps the host network 10.0.0.0/8"),
        ({"overlay": "10.200.0.1/16"}, "not a network"),
        ({"overlay": "fd00::/64"}, "only IPv4"),
        ({"overlay": "10.200.0.0/24", "node_prefixlen": 24}, "do not fit"),
        ({"overlay": "10.200.0.0/24", "node_prefixlen": 31}, "do not fit"),
        ({"vip_range": "10.201.0.0/31"}, "too small"),
    ],
)
def test_bad_layouts(kwargs, message):
    with pytest.raises(IpamError, match=message):
        make_layout(**kwargs)


def test_node_subnets_lowest_free_and_idempotent():
    layout = make_layout("10.200.0.0/22", 24)
    a = allocate_node_subnet(layout, {}, "a")
    ab = allocate_node_subnet(layout, a, "b")
    assert ab == {"a": net("10.200.0.0/24"), "b": net("10.200.1.0/24")}
    assert allocate_node_subnet(layout, ab, "a") == ab
    b = release(ab, "a")
    assert allocate_node_subnet(layout, b, "c")["c"] == net("10.200.0.0/24")  # the freed one, reused
    assert a == {"a": net("10.200.0.0/24")}  # inputs are never changed


def test_node_subnets_exhausted_and_input_unchanged():
    layout = make_layout("10.200.0.0/23", 24)
    full = allocate_node_subnet(layout, allocate_node_subnet(layout, {}, "a"), "b")
    snapshot = dict(full)
    with pytest.raises(ExhaustedError, match=r"range 10.200.0.0/23 holds 2 nodes .* taken: remove .* --overlay-range"):
        allocate_node_subnet(layout, full, "c")
    assert full == snapshot


def test_corrupt_subnet_allocations_are_refused():
    layout = make_layout("10.200.0.0/16", 24)
    with pytest.raises(IpamError, match="allocated twice"):
        allocate_node_subnet(layout, {"a": net("10.200.1.0/24"), "b": net("10.200.1.0/24")}, "c")
    with pytest.raises(IpamError, match="not a /24 of"):
        allocate_node_subnet(layout, {"a": net("10.9.1.0/24")}, "c")


def test_vips():
    layout = make_layout(vip_range="10.201.0.0/30")
    alloc = allocate_vip(layout, {}, "web")
    alloc = allocate_vip(layout, alloc, "db")
    assert alloc == {"web": ip("10.201.0.1"), "db": ip("10.201.0.2")}
    assert allocate_vip(layout, alloc, "web") == alloc
    with pytest.raises(ExhaustedError, match=re.escape("VIP range 10.201.0.0/30 is exhausted")):
        allocate_vip(layout, alloc, "cache")
    with pytest.raises(IpamError, match="not a VIP"):
        allocate_vip(layout, {"x": ip("10.200.0.1")}, "y")


def test_a_new_cluster_records_the_wide_default():
    from pathlib import Path

    from warren.manager.startup import ManagerOptions, overlay_plan

    plan = overlay_plan(ManagerOptions(data_dir=Path("/nonexistent")))
    assert plan == {"overlay_range": "10.224.0.0/12", "node_subnet_prefixlen": 24, "vip_range": "10.201.0.0/16"}
