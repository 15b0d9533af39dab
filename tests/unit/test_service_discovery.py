"""Prometheus HTTP service discovery on the manager's metrics listener (ADR 60): the target
groups from the nodes, the endpoint beside /metrics, the manager recording its own address,
and a wildcard listen address made dialable."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

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


def test_the_address_is_recorded_only_once_the_node_record_is_quiet() -> None:
    """A whole-node RegisterNode from a copy read while the agent's session registers would undo
    that registration: the manager waits until its record has not changed for a while."""
    state = InMemoryState(ClusterState())
    raft = InMemoryRaft(state)
    now = [100.0]

    async def scenario() -> None:
        node = Node(id="m1", hostname="m1", role=NodeRole.MANAGER, updated_at=99.0)
        await raft.propose_async(commands.RegisterNode(node))
        recording = asyncio.create_task(
            record_manager_metrics_addr(state, raft, "m1", "10.0.0.1:9323", clock=lambda: now[0])
        )
        await asyncio.sleep(0.2)
        with state.read() as current:
            assert current.nodes["m1"].manager_metrics_addr == ""  # changed 1 s ago: not yet
        now[0] = 103.0
        await asyncio.wait_for(recording, 10)

    asyncio.run(scenario())
    with state.read() as current:
        assert current.nodes["m1"].manager_metrics_addr == "10.0.0.1:9323"


def test_a_collector_that_fails_when_registered_leaves_the_port_free_and_nothing_registered() -> None:
    """Registering collects once, for the names (warren.promregistry): a start that fails there
    lets its port go and can be tried again in the same process."""
    status = RaftStatus(state="leader", leader="", term=1, commit_index=0, applied_index=0, has_quorum=True, peers={})

    def broken() -> RaftStatus:
        raise RuntimeError("no raft yet")

    port = free_port()
    # The failure is held (its traceback keeps serve's frame): the port must be let go
    # explicitly, not when the server object happens to be collected.
    with pytest.raises(RuntimeError, match="no raft yet") as failed:
        metrics.serve(f"127.0.0.1:{port}", metrics.StateCollector(InMemoryState().read, broken))
    endpoint = metrics.serve(f"127.0.0.1:{port}", metrics.StateCollector(InMemoryState().read, lambda: status))
    endpoint.close()
    assert failed.traceback  # held until here
