"""Prometheus HTTP service discovery on the manager's metrics listener (ADR 60): the target
groups from the nodes, the endpoint beside /metrics, the manager recording its own address,
and a wildcard listen address made dialable."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from tests.fixtures.ports import free_port
from warren import commands
from warren.host import reachable_addr
from warren.manager import metrics
from warren.manager.discovery import SD_PATH, record_manager_metrics_addr, target_groups
from warren.manager.inmemory import InMemoryRaft, InMemoryState
from warren.manager.ports import RaftStatus
from warren.model import Availability, Node, NodeRole
from warren.state import ClusterState


def nodes() -> list[Node]:
    return [
        Node(id="w2", hostname="worker-2", metrics_addr="10.0.0.2:9100", availability=Availability.DRAIN),
        Node(id="w3", hostname="worker-3"),  # serves no metrics: not listed
        Node(
            id="m1",
            hostname="manager-1",
            role=NodeRole.MANAGER,
            metrics_addr="10.0.0.1:9100",
            manager_metrics_addr="10.0.0.1:9323",
        ),
    ]


def test_one_group_per_agent_and_per_manager_that_serve_metrics() -> None:
    groups = target_groups(nodes())
    assert [(g["targets"], g["labels"]["warren_component"]) for g in groups] == [  # type: ignore[index]
        (["10.0.0.1:9100"], "agent"),
        (["10.0.0.1:9323"], "manager"),
        (["10.0.0.2:9100"], "agent"),
    ]
    assert groups[2]["labels"] == {
        "warren_node_id": "w2",
        "warren_hostname": "worker-2",
        "warren_role": "worker",
        "warren_availability": "drain",
        "warren_component": "agent",
    }


def test_the_metrics_listener_serves_the_groups_beside_metrics() -> None:
    status = RaftStatus(state="leader", leader="", term=1, commit_index=0, applied_index=0, has_quorum=True, peers={})
    collector = metrics.StateCollector(InMemoryState().read, lambda: status)
    port = free_port()
    endpoint = metrics.serve(f"127.0.0.1:{port}", collector, sd_groups=lambda: target_groups(nodes()))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{SD_PATH}", timeout=10) as response:
            assert response.headers["Content-Type"] == "application/json"
            assert json.loads(response.read()) == target_groups(nodes())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert b"warren_raft_term 1.0" in response.read()
    finally:
        endpoint.close()


def test_a_manager_records_its_metrics_address_in_its_node() -> None:
    state = InMemoryState(ClusterState())
    raft = InMemoryRaft(state)

    async def scenario() -> None:
        await raft.propose_async(commands.RegisterNode(Node(id="m1", hostname="m1", role=NodeRole.MANAGER)))
        await asyncio.wait_for(record_manager_metrics_addr(state, raft, "m1", "10.0.0.1:9323"), 10)

    asyncio.run(scenario())
    with state.read() as current:
        assert current.nodes["m1"].manager_metrics_addr == "10.0.0.1:9323"


def test_a_wildcard_listen_address_is_advertised_with_the_nodes_host() -> None:
    assert reachable_addr("0.0.0.0:9100", "10.0.0.5") == "10.0.0.5:9100"
    assert reachable_addr(":9100", "node-5") == "node-5:9100"
    assert reachable_addr("[::]:9100", "fd00::5") == "[fd00::5]:9100"
    assert reachable_addr("127.0.0.1:9100", "10.0.0.5") == "127.0.0.1:9100"


def run(state: ClusterState, command: commands.Command) -> commands.Result:
    result, changes = commands.apply(state, command)
    state.apply(changes)
    return result


def test_recording_the_address_changes_only_that_field_and_refuses_a_malformed_one() -> None:
    """A manager's record must not undo what its agent's session registered meanwhile."""
    state = ClusterState()
    old = Node(id="m1", hostname="m1", role=NodeRole.MANAGER, overlay=False)
    run(state, commands.RegisterNode(old))
    registered = Node(id="m1", hostname="m1", role=NodeRole.MANAGER, overlay=True, metrics_addr="10.0.0.1:9100")
    run(state, commands.RegisterNode(registered))  # the session, after the manager read `old`
    result = run(state, commands.SetManagerMetricsAddr("m1", "10.0.0.1:9323"))
    assert result.ok
    node = state.nodes["m1"]
    assert (node.overlay, node.metrics_addr, node.manager_metrics_addr) == (True, "10.0.0.1:9100", "10.0.0.1:9323")
    # A later registration (its agent's next session) keeps it.
    run(state, commands.RegisterNode(registered))
    assert state.nodes["m1"].manager_metrics_addr == "10.0.0.1:9323"
    refused = run(state, commands.SetManagerMetricsAddr("m1", "nope"))
    assert (refused.ok, refused.code) == (False, "invalid_argument")
    assert run(state, commands.SetManagerMetricsAddr("m9", "10.0.0.9:9323")).code == "not_found"
