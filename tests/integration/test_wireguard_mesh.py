"""A real WireGuard mesh of three "hosts" (network namespaces on a bridge), each with its own
wireguard-go, configured from the pure plan through the adapter (issue #5, ADR 17).

Checks: overlay ping between every pair; re-applying the same plan applies nothing and leaves
peers and handshakes as they were; an agent restart (a new adapter adopting the running
wireguard-go) converges with no operation; a node leaving the plan loses its peer everywhere
and the overlay to it stops working; a key rotation is one SetInterface on the rotating node
and a peer swap on the others, after which every pair talks again. Everything is torn down in
`finally`.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import shutil
from pathlib import Path

import pytest

from tests.fixtures.overlay_lab import OverlayLab
from warren.network import ipam
from warren.network.mesh import converge, current_state
from warren.network.plan import AddPeer, MeshNode, RemovePeer, RemoveRoute, UpdatePeer, plan_mesh
from warren.network.wireguard import UserspaceDevice, ensure_key_file

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="wireguard-go is not installed (make deps)"),
]
PORT = 51820


def test_three_host_mesh(tmp_path: Path) -> None:
    lab = OverlayLab()
    try:
        hosts = lab.create(3)
        layout = ipam.make_layout("10.200.0.0/16", 24, "10.201.0.0/16", reserved=["10.214.0.0/24"])
        subnets: dict = {}
        for h in hosts:
            subnets = ipam.allocate_node_subnet(layout, subnets, h.name)
        keys = {h.name: tmp_path / f"{h.name}.key" for h in hosts}
        nodes = [MeshNode(h.name, ensure_key_file(keys[h.name]), f"{h.ip}:{PORT}", str(subnets[h.name])) for h in hosts]
        devices = {}
        for h in hosts:
            dev = UserspaceDevice(lab.ifname(h), h.netns, log_path=tmp_path / f"{h.name}-wg.log")
            lab.stoppers.append(dev.stop)
            devices[h.name] = dev

        def plan_for(name: str, members: list[MeshNode]):
            return plan_mesh(members, name, private_key_ref=str(keys[name]), ifname=devices[name].ifname)

        overlay = {h.name: str(ipaddress.ip_network(subnets[h.name]).network_address + 1) for h in hosts}

        # 1. every host converges from nothing; the overlay works between all pairs
        for h in hosts:
            result = converge(devices[h.name], plan_for(h.name, nodes))
            assert result.applied == len(result.diff.operations) == 1 + 1 + 2 + 2  # iface, addr, peers, routes
        for a, b in itertools.permutations(hosts, 2):
            assert a.ping(overlay[b.name], attempts=3), f"{a.name} cannot reach {b.name} over the overlay"

        # 2. re-applying the same plan changes nothing: same peers, same handshakes
        before = {h.name: devices[h.name].status() for h in hosts}
        assert all(p.last_handshake > 0 for s in before.values() for p in s.peers)
        for h in hosts:
            assert converge(devices[h.name], plan_for(h.name, nodes)).diff.empty
        after = {h.name: devices[h.name].status() for h in hosts}
        for name in before:
            assert [(p.public_key, p.last_handshake) for p in after[name].peers] == [
                (p.public_key, p.last_handshake) for p in before[name].peers
            ]

        # 3. an agent restart: a fresh adapter adopts the running wireguard-go and applies nothing
        h1 = hosts[0]
        adopted = UserspaceDevice(devices[h1.name].ifname, h1.netns)
        assert converge(adopted, plan_for(h1.name, nodes)).diff.empty
        assert adopted.pid is None  # not ours: the original process kept running
        assert devices[h1.name].process.poll() is None
        assert h1.ping(overlay[hosts[1].name])

        # 4. a changed endpoint is an in-place update of that one peer; its handshake survives
        h3 = hosts[2]
        h3_key = nodes[2].public_key
        handshake = devices[h1.name].status().peer(h3_key).last_handshake
        moved = [*nodes[:2], MeshNode("h3", h3_key, f"{h3.ip}:{PORT + 1}", nodes[2].subnet)]
        ops = converge(devices[h1.name], plan_for(h1.name, moved)).diff.operations
        assert [type(op) for op in ops] == [UpdatePeer]
        peer = devices[h1.name].status().peer(h3_key)
        assert peer.endpoint == f"{h3.ip}:{PORT + 1}"
        assert peer.last_handshake == handshake
        back = converge(devices[h1.name], plan_for(h1.name, nodes)).diff.operations
        assert all(isinstance(op, UpdatePeer) and op.peer.public_key == h3_key for op in back)  # [] if h3 roamed

        # 5. h3 leaves: its peer and route go everywhere; h3 keeps its own config, and still
        # nothing passes (the others drop its packets: it is no longer a peer of theirs)
        remaining = nodes[:2]
        for h in hosts[:2]:
            ops = converge(devices[h.name], plan_for(h.name, remaining)).diff.operations
            assert [type(op) for op in ops] == [RemovePeer, RemoveRoute]
            status = devices[h.name].status()
            assert [p.public_key for p in status.peers] == [n.public_key for n in remaining if n.node_id != h.name]
            assert current_state(devices[h.name]).routes == plan_for(h.name, remaining).routes
        assert hosts[0].ping(overlay["h2"]) and hosts[1].ping(overlay["h1"])
        for h in hosts[:2]:
            assert not h.ping(overlay["h3"]), f"{h.name} still reaches the departed h3"
            assert not h3.ping(overlay[h.name]), f"the departed h3 still reaches {h.name}"

        # 6. it joins again: only its peer and route come back
        for h in hosts[:2]:
            ops = converge(devices[h.name], plan_for(h.name, nodes)).diff.operations
            assert sorted(type(op).__name__ for op in ops) == ["AddPeer", "AddRoute"]
            assert isinstance(ops[0], AddPeer)
        assert hosts[0].ping(overlay["h3"], attempts=3)

        # 7. h2 rotates its key: a new key on h2, the old peer swapped for the new one elsewhere
        keys["h2"] = tmp_path / "h2-rotated.key"
        rotated = [nodes[0], MeshNode("h2", ensure_key_file(keys["h2"]), nodes[1].endpoint, nodes[1].subnet), nodes[2]]
        # h2 starts each peer afresh too, so that each handshakes at once with the new key
        ops = converge(devices["h2"], plan_for("h2", rotated)).diff.operations
        assert [type(op).__name__ for op in ops] == ["SetInterface", *["RemovePeer"] * 2, *["AddPeer"] * 2]
        for name in ("h1", "h3"):
            ops = converge(devices[name], plan_for(name, rotated)).diff.operations
            assert [type(op).__name__ for op in ops] == ["RemovePeer", "AddPeer"]
        assert devices["h2"].status().public_key == rotated[1].public_key
        for a, b in itertools.permutations(hosts, 2):
            assert a.ping(overlay[b.name], attempts=3), f"{a.name} cannot reach {b.name} after h2's key rotation"
    finally:
        lab.destroy()


def test_supervision_restarts_a_dead_wireguard_go_and_reconverges(tmp_path: Path) -> None:
    lab = OverlayLab()
    try:
        (h1, h2) = lab.create(2)
        keys = {h: tmp_path / f"{h.name}.key" for h in (h1, h2)}
        nodes = [
            MeshNode(h.name, ensure_key_file(keys[h]), f"{h.ip}:{PORT}", f"10.200.{i}.0/24")
            for i, h in enumerate((h1, h2), start=1)
        ]
        devs = {}
        for h in (h1, h2):
            devs[h] = UserspaceDevice(lab.ifname(h), h.netns)
            lab.stoppers.append(devs[h].stop)
            converge(devs[h], plan_mesh(nodes, h.name, private_key_ref=str(keys[h]), ifname=devs[h].ifname))
        assert h1.ping("10.200.2.1", attempts=3)

        devs[h2].process.kill()
        devs[h2].process.wait()
        assert devs[h2].ensure_running() is True  # restarted
        assert devs[h2].ensure_running() is False  # and running now
        assert devs[h2].restarts == 1
        plan = plan_mesh(nodes, "h2", private_key_ref=str(keys[h2]), ifname=devs[h2].ifname)
        assert not converge(devs[h2], plan).diff.empty  # a new process starts empty
        assert converge(devs[h2], plan).diff.empty
        assert h1.ping("10.200.2.1", attempts=3)

        # a restarted agent that adopted the device can still remove it (by deleting the link)
        adopted = UserspaceDevice(devs[h1].ifname, h1.netns)
        adopted.start()
        adopted.stop()
        assert devs[h1].process.wait(timeout=5) == 0
        assert not adopted.alive() and not adopted.socket_path.exists()
    finally:
        lab.destroy()
