"""The mesh plan and its diff: unit cases and Hypothesis properties (convergence, idempotence,
minimality: only changed peers are touched, and never by removing and re-adding them, unless
this node's own key changes)."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warren.network.plan import (
    AddAddress,
    AddPeer,
    AddRoute,
    CurrentState,
    MeshNode,
    PeerConfig,
    PlanError,
    RemoveAddress,
    RemovePeer,
    RemoveRoute,
    Route,
    SetInterface,
    UpdatePeer,
    diff,
    expected_state,
    node_address,
    plan_mesh,
)

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REF = "/var/lib/warren/wireguard.key"


def key(i: int) -> str:
    return base64.b64encode(bytes([i]) * 32).decode()


def node(i: int, endpoint: bool = True) -> MeshNode:
    return MeshNode(f"n{i}", key(i), f"10.0.0.{i}:51820" if endpoint else None, f"10.200.{i}.0/24")


def apply(state: CurrentState, ops) -> CurrentState:
    """A model of the device: what it reports after the operations (with `me`'s key)."""
    peers = {p.public_key: p for p in state.peers}
    addrs = set(state.addresses)
    routes = set(state.routes)
    public_key, port = state.public_key, state.listen_port
    for op in ops:
        match op:
            case SetInterface(listen_port=lp):
                public_key, port = "ME", port if lp is None else lp
            case AddPeer(peer=p):
                assert p.public_key not in peers, "peer added twice"
                peers[p.public_key] = p
            case UpdatePeer(peer=p):
                old = peers[p.public_key]
                peers[p.public_key] = PeerConfig(
                    p.public_key, p.endpoint if op.endpoint_changed else old.endpoint, p.allowed_ips, p.keepalive
                )
            case RemovePeer(public_key=k):
                del peers[k]
            case AddAddress(address=a):
                addrs.add(a)
            case RemoveAddress(address=a):
                addrs.discard(a)
            case AddRoute(route=r):
                routes.add(r)
            case RemoveRoute(route=r):
                routes.discard(r)
    return CurrentState(public_key, port, tuple(peers.values()), tuple(addrs), tuple(routes))


def with_me(plan):
    """The plan as the model device sees it: its own key is "ME"."""
    return dataclasses.replace(plan, interface=dataclasses.replace(plan.interface, public_key="ME"))


def test_plan_peers_routes_and_address():
    plan = plan_mesh([node(1), node(2), node(3)], "n2", private_key_ref=REF, ifname="wg-t", listen_port=51900)
    i = plan.interface
    assert (i.ifname, i.listen_port, i.public_key, i.address, i.private_key_ref) == (
        "wg-t",
        51900,
        key(2),
        "10.200.2.1/32",
        REF,
    )
    assert i.peers == tuple(
        sorted(
            [
                PeerConfig(key(1), "10.0.0.1:51820", ("10.200.1.0/24",), 25),
                PeerConfig(key(3), "10.0.0.3:51820", ("10.200.3.0/24",), 25),
            ]
        )
    )
    assert plan.routes == (
        Route("10.200.1.0/24", "wg-t", "10.200.2.1"),
        Route("10.200.3.0/24", "wg-t", "10.200.2.1"),
    )


def test_nodes_without_a_key_are_not_peers_yet_and_endpoint_is_optional():
    pending = MeshNode("n3", None, "10.0.0.3:51820", "10.200.3.0/24")
    plan = plan_mesh([node(1), node(2, endpoint=False), pending], "n1", private_key_ref=REF)
    assert [p.public_key for p in plan.interface.peers] == [key(2)]
    assert plan.interface.peers[0].endpoint is None


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ([node(1), node(1)], "appears twice"),
        ([node(1), MeshNode("n2", key(1), None, "10.200.2.0/24")], "same public key"),
        ([node(1), MeshNode("n2", key(2), None, "10.200.1.128/25")], "overlap"),
        ([node(1), MeshNode("n2", key(2), None, "10.200.2.1/24")], "subnet of node n2"),
        ([node(1), MeshNode("n2", key(2), "10.0.0.2", "10.200.2.0/24")], "not IP:PORT"),
        ([node(1), MeshNode("n2", key(2), "host:80", "10.200.2.0/24")], "not IP:PORT"),
        ([node(2)], "not in the mesh"),
        ([MeshNode("n1", None, None, "10.200.1.0/24")], "no public key"),
        ([MeshNode("n1", key(1), None, "10.200.1.0/31")], "too small"),
    ],
)
def test_bad_node_lists_are_refused(nodes, message):
    with pytest.raises(PlanError, match=message):
        plan_mesh(nodes, "n1", private_key_ref=REF)


def test_node_address_is_first_host():
    assert node_address("10.200.7.0/24") == "10.200.7.1"


def test_fresh_device_gets_everything_then_nothing():
    plan = plan_mesh([node(1), node(2), node(3)], "n1", private_key_ref=REF, ifname="wg-t")
    ops = diff(CurrentState(), plan).operations
    assert ops[0] == SetInterface(REF, 51820)
    assert [type(o) for o in ops[1:]] == [AddAddress, AddPeer, AddPeer, AddRoute, AddRoute]
    assert diff(expected_state(plan), plan).empty


def test_endpoint_change_updates_only_that_peer_in_place():
    nodes = [node(1), node(2), node(3)]
    before = plan_mesh(nodes, "n1", private_key_ref=REF)
    moved = [node(1), node(2), dataclasses.replace(node(3), endpoint="10.0.0.33:51820")]
    ops = diff(expected_state(before), plan_mesh(moved, "n1", private_key_ref=REF)).operations
    assert len(ops) == 1
    assert isinstance(ops[0], UpdatePeer)
    assert ops[0].peer.public_key == key(3)
    assert (ops[0].endpoint_changed, ops[0].allowed_ips_changed, ops[0].keepalive_changed) == (True, False, False)


def test_roamed_endpoint_is_left_alone_when_none_is_published():
    plan = plan_mesh([node(1), node(2, endpoint=False)], "n1", private_key_ref=REF)
    state = expected_state(plan)
    roamed = dataclasses.replace(state, peers=(dataclasses.replace(state.peers[0], endpoint="192.0.2.9:4000"),))
    assert diff(roamed, plan).empty


def test_node_leaving_removes_its_peer_and_route():
    plan3 = plan_mesh([node(1), node(2), node(3)], "n1", private_key_ref=REF, ifname="wg-t")
    plan2 = plan_mesh([node(1), node(2)], "n1", private_key_ref=REF, ifname="wg-t")
    ops = diff(expected_state(plan3), plan2).operations
    assert ops == (RemovePeer(key(3)), RemoveRoute(Route("10.200.3.0/24", "wg-t", "10.200.1.1")))


def test_foreign_address_and_port_change():
    plan = plan_mesh([node(1)], "n1", private_key_ref=REF, listen_port=5000)
    state = dataclasses.replace(expected_state(plan), addresses=("10.200.1.1/32", "10.9.9.9/32"), listen_port=4000)
    assert diff(state, plan).operations == (SetInterface(REF, 5000), RemoveAddress("warren0", "10.9.9.9/32"))


def test_own_key_rotation_sets_the_key_and_starts_every_peer_afresh():
    nodes = [node(1), node(2), node(3)]
    before = plan_mesh(nodes, "n1", private_key_ref=REF)
    rotated = plan_mesh([dataclasses.replace(node(1), public_key=key(77)), *nodes[1:]], "n1", private_key_ref="/new")
    ops = diff(expected_state(before), rotated).operations
    assert ops == (
        SetInterface("/new", None),  # the port is unchanged: no UDP rebind
        RemovePeer(key(2)),
        RemovePeer(key(3)),
        AddPeer(before.interface.peers[0]),
        AddPeer(before.interface.peers[1]),
    )
    assert diff(expected_state(rotated), rotated).empty


def test_a_peer_key_rotation_replaces_only_that_peer():
    nodes = [node(1), node(2), node(3)]
    before = plan_mesh(nodes, "n1", private_key_ref=REF)
    new_peer = dataclasses.replace(node(3), public_key=key(77))
    ops = diff(expected_state(before), plan_mesh([node(1), node(2), new_peer], "n1", private_key_ref=REF)).operations
    assert ops == (RemovePeer(key(3)), AddPeer(PeerConfig(key(77), "10.0.0.3:51820", ("10.200.3.0/24",), 25)))


def test_allowed_ips_order_does_not_matter():
    plan = plan_mesh([node(1), node(2)], "n1", private_key_ref=REF)
    state = expected_state(plan)
    peer = state.peers[0]
    noisy = dataclasses.replace(peer, allowed_ips=("10.200.2.0/24", "10.200.2.0/24"))
    assert diff(dataclasses.replace(state, peers=(noisy,)), plan).empty


# -- properties ----------------------------------------------------------------------------------


@st.composite
def clusters(draw: st.DrawFn) -> list[MeshNode]:
    ids = draw(st.lists(st.integers(1, 40), min_size=1, max_size=8, unique=True))
    return [
        MeshNode(
            f"n{i}",
            key(i) if draw(st.integers(0, 5)) else None,
            draw(st.sampled_from([None, f"10.0.0.{i}:51820", f"10.0.1.{i}:5{i:04d}"])),
            f"10.200.{i}.0/24",
        )
        for i in ids
    ]


def _mine(nodes: list[MeshNode]) -> list[MeshNode]:
    """Make sure the first node has a key, so it can be planned for."""
    first = nodes[0]
    return [dataclasses.replace(first, public_key=first.public_key or key(99)), *nodes[1:]]


@FAST
@given(clusters(), clusters(), st.integers(0, 60))
def test_any_state_converges_in_one_diff_and_then_stays(before, after, keepalive):
    before, after = _mine(before), _mine(after)
    old = with_me(plan_mesh(before, before[0].node_id, private_key_ref=REF))
    new = with_me(plan_mesh(after, after[0].node_id, private_key_ref=REF, keepalive=keepalive))
    state = apply(CurrentState(), diff(CurrentState(), old).operations)
    assert diff(state, old).empty
    state = apply(state, diff(state, new).operations)
    assert diff(state, new).empty  # converged: re-applying changes nothing


@FAST
@given(clusters(), clusters())
def test_only_changed_peers_are_touched(before, after):
    me = MeshNode("n0", key(0), "10.0.0.100:51820", "10.200.0.0/24")
    old = with_me(plan_mesh([me, *before], "n0", private_key_ref=REF))
    new = with_me(plan_mesh([me, *after], "n0", private_key_ref=REF))
    ops = diff(expected_state(old), new).operations
    old_peers = {p.public_key: p for p in old.interface.peers}
    new_peers = {p.public_key: p for p in new.interface.peers}
    touched = [op.peer.public_key for op in ops if isinstance(op, AddPeer | UpdatePeer)]
    touched += [op.public_key for op in ops if isinstance(op, RemovePeer)]
    assert len(touched) == len(set(touched))  # at most one operation per peer
    for k in touched:
        assert old_peers.get(k) != new_peers.get(k)
    for op in ops:
        if isinstance(op, AddPeer):
            assert op.peer.public_key not in old_peers  # a kept peer is never re-added
        if isinstance(op, RemovePeer):
            assert op.public_key not in new_peers
    assert not any(isinstance(op, SetInterface) for op in ops)
