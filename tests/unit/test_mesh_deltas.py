"""Mesh deltas (#15, ADR 65), on the endpoint rig: an agent that takes them holds exactly the
whole mesh at every mesh version, as one sent whole meshes does; a join is one entry; a mesh
delta onto another version is a gap."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.unit.endpoint_rig import Agent, Rig, _run
from tests.waiting import async_wait_for as until
from warren.agent.assignments import AssignmentSet
from warren.model import Node
from warren.state import Delete, Put


def _node(i: int, key: int, endpoint: int, subnet: bool, overlay: bool) -> Node:
    return Node(
        id=f"m{i}",
        hostname=f"m{i}",
        wg_public_key=f"key{i}-{key}",
        wg_endpoint=f"127.0.0.1:{40000 + i * 10 + endpoint}",
        overlay_subnet=f"10.230.{i}.0/24" if subnet else "",
        overlay=overlay,
    )


nodes = st.integers(0, 4)
node_ops = st.one_of(
    st.tuples(st.just("node"), nodes, st.integers(0, 2), st.integers(0, 1), st.booleans(), st.booleans()),
    st.tuples(st.just("gone"), nodes),
)
node_steps = st.lists(st.tuples(st.lists(node_ops, min_size=1, max_size=3), st.booleans(), st.booleans()), max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=node_steps)
@example(  # the lagging agent misses versions that changed different nodes, one of them leaving
    history=[
        ([("node", 0, 0, 0, True, True)], True, True),
        ([("node", 1, 0, 0, True, True)], True, True),
        ([("gone", 0)], True, True),
    ]
)
def test_mesh_deltas_give_exactly_the_whole_mesh_at_every_version(history: list) -> None:
    """Nodes joining, leaving, changing key, endpoint or subnet, turning the overlay on and off:
    an agent that takes mesh deltas holds, at every mesh version it is sent, exactly the mesh an
    agent sent whole meshes holds, and both hold the mesh of the current state once settled."""

    async def scenario(root: Path) -> None:
        rig = Rig(root)
        try:
            whole = Agent(deltas=False)
            steady = Agent(deltas=True, assignments=AssignmentSet())
            lagging = Agent(deltas=True, assignments=AssignmentSet())
            agents = [rig.open(1, whole), rig.open(2, steady), rig.open(3, lagging)]
            await rig.mesh_settled(agents)
            for changes, lag, wait in history:
                if lag:
                    lagging.gate.clear()
                else:
                    lagging.gate.set()
                rig.commit(
                    [Put("node", _node(*op[1:])) if op[0] == "node" else Delete("node", f"m{op[1]}") for op in changes]
                )
                if wait:
                    await rig.mesh_settled(agents)
                    truth = rig.mesh_truth()
                    assert all(a.mesh == truth for a in agents if a.gate.is_set())
            lagging.gate.set()
            await rig.mesh_settled(agents)
            truth = rig.mesh_truth()
            for agent in agents:
                assert agent.mesh == truth
                assert not agent.gaps
            for agent in (steady, lagging):
                for version, held in agent.mesh_seen.items():
                    if version in whole.mesh_seen:
                        assert held == whole.mesh_seen[version], f"mesh version {version}"
            assert not any(m.mesh_delta for m in whole.messages)
            for agent in (steady, lagging):
                assert agent.messages[0].mesh_changed and not agent.messages[0].mesh_delta
                assert not any(m.mesh_changed for m in agent.messages[1:])
        finally:
            await rig.close()

    with tempfile.TemporaryDirectory(prefix="warren-mesh-deltas-") as root:
        _run(scenario(Path(root)))


def test_a_join_sends_an_agent_that_takes_deltas_one_mesh_entry(tmp_path: Path) -> None:
    """With 20 nodes in the mesh, a join is one MeshNode to an agent that takes deltas, the
    whole mesh to one that does not; a mesh delta onto another version is a gap."""

    async def scenario() -> None:
        rig = Rig(tmp_path)
        try:
            rig.commit([Put("node", _node(i, 0, 0, True, True)) for i in range(20)])
            new, old = rig.open(1, Agent(deltas=True)), rig.open(2, Agent(deltas=False))
            await rig.mesh_settled([new, old])
            counts = len(new.messages), len(old.messages)
            rig.commit([Put("node", _node(25, 0, 0, True, True))])
            await rig.mesh_settled([new, old])
            delta, whole = new.messages[counts[0]], old.messages[counts[1]]
            assert delta.mesh_delta and [m.node_id for m in delta.mesh] == ["m25"]
            assert whole.mesh_changed and len(whole.mesh) == len(rig.mesh_truth()) > 20
            assert new.mesh == old.mesh == rig.mesh_truth()
            new.assignments.mesh_version += 5  # as if it had missed one
            rig.commit([Delete("node", "m25")])
            await until(lambda: new.gaps, message="the gap")
            assert "mesh delta onto version" in new.gaps[0]
        finally:
            await rig.close()

    _run(scenario())
