"""A join finds its node subnet from the state's index of held subnets, not by parsing every node's
subnet (ADR 57), and picks the same /24 as the pure allocator over all nodes would."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warren import commands
from warren.commands.overlay import overlay_layout
from warren.model import ClusterInfo, Node, NodeStatus
from warren.network import ipam
from warren.state import ClusterState, Put


def _run(state: ClusterState, command: commands.Command) -> commands.Result:
    result, changes = commands.apply(state, command)
    state.apply(changes)
    return result


def _overlay_state(overlay: str, prefixlen: int) -> ClusterState:
    state = ClusterState()
    cluster = ClusterInfo(
        id="c1",
        created_at=1.0,
        ca_cert_pem="",
        ca_key_pem="",
        worker_token_secret="w",
        manager_token_secret="m",
        overlay_range=overlay,
        node_subnet_prefixlen=prefixlen,
    )
    assert _run(state, commands.InitCluster(cluster, Node(id="m1", hostname="m1", status=NodeStatus.READY))).ok
    return state


def _node(node_id: str) -> Node:
    return Node(id=node_id, hostname=node_id, status=NodeStatus.READY, overlay=True)


def _expected_subnet(state: ClusterState, node_id: str) -> str | None:
    """What the allocator over every node's subnet picks (the code before ADR 57): the reference."""
    assert state.cluster is not None
    current = {n.id: ipaddress.IPv4Network(n.overlay_subnet) for n in state.nodes.values() if n.overlay_subnet}
    try:
        return str(ipam.allocate_node_subnet(overlay_layout(state.cluster), current, node_id)[node_id])
    except ipam.ExhaustedError:
        return None


def _reloaded(state: ClusterState) -> ClusterState:
    """The state as a manager rebuilds it from its store or a Raft snapshot: every object put again."""
    other = ClusterState()
    changes: list[Put] = [Put("cluster", state.cluster)] if state.cluster is not None else []
    other.apply([*changes, *(Put("node", n) for n in state.nodes.values())])
    return other


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 12)), max_size=60))
def test_the_indexed_subnet_is_the_lowest_free_one(steps: list[tuple[bool, int]]) -> None:
    state = _overlay_state("10.50.0.0/27", 30)  # 8 subnets for up to 14 nodes: joins also hit a full range
    joined: dict[int, str] = {}  # slot -> the id of the node in it (a removed id is revoked: never reused)
    for step, (join, slot) in enumerate(steps):
        if join and slot not in joined:
            node_id = f"n{slot}-{step}"
            expected = _expected_subnet(state, node_id)
            result = _run(state, commands.RegisterNode(_node(node_id)))
            assert result.ok == (expected is not None)
            if expected is None:
                assert result.code == "resource_exhausted" and "holds 8 nodes (a /30 each)" in result.message
            else:
                joined[slot] = node_id
                assert state.nodes[node_id].overlay_subnet == expected
        elif not join and slot in joined:
            assert _run(state, commands.RemoveNode(joined.pop(slot), 2.0)).ok
        for other in (state.copy(), _reloaded(state)):  # a snapshot and a reload allocate like the live state
            probe = _node(f"probe-{step}")
            expected = _expected_subnet(other, probe.id)
            assert _run(other, commands.RegisterNode(probe)).ok == (expected is not None)
            assert other.nodes.get(probe.id, probe).overlay_subnet == (expected or "")


def test_a_join_does_not_parse_every_nodes_subnet(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the Raft apply thread at 1,000 nodes this was a third of its time (ADR 52's profile)."""
    state = _overlay_state("10.224.0.0/12", 24)
    for i in range(500):
        assert _run(state, commands.RegisterNode(_node(f"w{i}"))).ok
    parsed = 0
    real_init = ipaddress.IPv4Network.__init__

    def counting_init(self: ipaddress.IPv4Network, *args: object, **kwargs: object) -> None:
        nonlocal parsed
        parsed += 1
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ipaddress.IPv4Network, "__init__", counting_init)
    result, changes = commands.apply(state, commands.RegisterNode(_node("late")))
    assert result.ok
    state.apply(changes)
    assert state.nodes["late"].overlay_subnet == "10.225.245.0/24"  # index 501: the manager holds the first
    assert parsed <= 5, f"a join parsed {parsed} networks with 501 nodes in the state"


def test_a_removed_nodes_subnet_is_given_to_the_next_join() -> None:
    state = _overlay_state("10.224.0.0/12", 24)
    for i in range(5):
        assert _run(state, commands.RegisterNode(_node(f"w{i}"))).ok
    assert state.nodes["w1"].overlay_subnet == "10.224.2.0/24"
    assert _run(state, commands.RemoveNode("w1", 2.0)).ok
    assert _run(state, commands.RegisterNode(_node("w9"))).ok
    assert state.nodes["w9"].overlay_subnet == "10.224.2.0/24"
    assert _run(state, commands.RegisterNode(_node("w10"))).ok
    assert state.nodes["w10"].overlay_subnet == "10.224.6.0/24"
