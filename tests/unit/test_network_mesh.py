"""`converge` against the in-memory device and routing: start, apply, then nothing to do;
a node leaving; a dead device coming back empty and being refilled."""

from __future__ import annotations

from pathlib import Path

import pytest

from warren.network.fake import FakeDevice, FakeRouting
from warren.network.mesh import converge, current_state
from warren.network.plan import MeshNode, plan_mesh
from warren.network.wireguard import ensure_key_file


@pytest.fixture
def cluster(tmp_path: Path):
    keys = {f"n{i}": tmp_path / f"n{i}.key" for i in (1, 2, 3)}
    nodes = [
        MeshNode(name, ensure_key_file(path), f"192.0.2.{i}:51820", f"10.200.{i}.0/24")
        for i, (name, path) in enumerate(keys.items(), start=1)
    ]
    return keys, nodes


def test_converge_then_idempotent(cluster):
    keys, nodes = cluster
    device, routing = FakeDevice("wg0"), FakeRouting()
    plan = plan_mesh(nodes, "n1", private_key_ref=str(keys["n1"]), ifname="wg0")
    first = converge(device, plan, routing)
    assert first.applied == len(first.diff.operations) == 6
    assert "wg0" in routing.up
    assert routing.addresses("wg0") == ("10.200.1.1/32",)
    assert routing.routes("wg0") == (("10.200.2.0/24", "10.200.1.1"), ("10.200.3.0/24", "10.200.1.1"))
    assert device.status().public_key == nodes[0].public_key
    again = converge(device, plan, routing)
    assert again.diff.empty and again.applied == 0
    assert device.starts == 1
    assert current_state(device, routing).peers == plan.interface.peers


def test_node_leaving_and_device_restart(cluster):
    keys, nodes = cluster
    device, routing = FakeDevice("wg0"), FakeRouting()
    converge(device, plan_mesh(nodes, "n1", private_key_ref=str(keys["n1"]), ifname="wg0"), routing)
    smaller = plan_mesh(nodes[:2], "n1", private_key_ref=str(keys["n1"]), ifname="wg0")
    left = converge(device, smaller, routing)
    assert [type(op).__name__ for op in left.diff.operations] == ["RemovePeer", "RemoveRoute"]
    assert [p.public_key for p in device.status().peers] == [nodes[1].public_key]

    device.stop()  # wireguard-go died: the new one starts with nothing
    routing.addrs.clear()
    routing.table.clear()
    back = converge(device, smaller, routing)
    assert [type(op).__name__ for op in back.diff.operations] == ["SetInterface", "AddAddress", "AddPeer", "AddRoute"]
    assert converge(device, smaller, routing).diff.empty


def test_plan_for_another_interface_is_refused(cluster):
    keys, nodes = cluster
    with pytest.raises(ValueError, match="the plan is for wg1"):
        converge(
            FakeDevice("wg0"), plan_mesh(nodes, "n1", private_key_ref=str(keys["n1"]), ifname="wg1"), FakeRouting()
        )
