"""The reconcile pass's caps as cluster settings (ADR 53): `cluster update --max-starts-per-pass`
bounds how many tasks one pass starts; bad values are refused with a clear error."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from tests.unit.test_manager_services import Manager, as_caller, run, web
from warren import commands
from warren.api.v1 import control_pb2 as cpb
from warren.manager.server import ApiError
from warren.model import ClusterInfo, Node
from warren.reconciler import ReconcileConfig
from warren.state import ClusterState, Put


def cluster_state() -> ClusterState:
    state = ClusterState()
    state.apply([Put("cluster", ClusterInfo("c", 0.0, "", "", "", ""))])
    return state


def test_the_caps_are_cluster_settings_with_defaults() -> None:
    state = cluster_state()
    assert ReconcileConfig.from_cluster(state.cluster).max_starts_per_pass == 1000  # 0 means the default
    result, changes = commands.apply(state, commands.UpdateClusterSettings(max_starts_per_pass=50))
    assert result.ok
    state.apply(changes)
    config = ReconcileConfig.from_cluster(state.cluster)
    assert (config.max_starts_per_pass, config.max_stops_per_pass) == (50, 1000)
    assert ReconcileConfig.from_cluster(state.cluster, 1000).max_starts_per_pass == 50  # the cluster's, at any size
    for bad in (-1, 100_001):
        result, _ = commands.apply(state, commands.UpdateClusterSettings(max_stops_per_pass=bad))
        assert result.code == "invalid_argument" and "max stops per pass" in result.message


@pytest.mark.parametrize(
    ("nodes", "cap"), [(0, 1000), (3, 1000), (50, 1000), (51, 1020), (1000, 20_000), (6000, 100_000)]
)
def test_the_default_start_cap_grows_with_the_cluster(nodes: int, cap: int) -> None:
    """ADR 74: 20 starts per node, never fewer than 1,000 nor more than an operator may set; the
    stop cap stays 1,000."""
    config = ReconcileConfig.from_cluster(cluster_state().cluster, nodes)
    assert (config.max_starts_per_pass, config.max_stops_per_pass) == (cap, 1000)


def test_cluster_info_shows_the_cap_the_pass_uses() -> None:
    async def scenario() -> None:
        manager = Manager()
        await manager.init()
        as_caller("admin", "admin")
        manager.store.put(*(Put("node", Node(id=f"n{i}", hostname=f"w{i}")) for i in range(60)))
        info = await manager.control.GetClusterInfo(cpb.GetClusterInfoRequest(), None)
        assert (info.nodes, info.max_starts_per_pass) == (61, 1220)  # the manager's own node and 60

    run(scenario())


def test_a_pass_starts_no_more_than_the_cluster_allows() -> None:
    async def scenario() -> None:
        manager = Manager()
        await manager.init()
        as_caller("admin", "admin")
        info = await manager.control.UpdateCluster(cpb.UpdateClusterRequest(max_starts_per_pass=3), None)
        assert (info.max_starts_per_pass, info.max_stops_per_pass) == (3, 1000)
        await manager.control.CreateService(cpb.CreateServiceRequest(spec=web(10)), None)
        await manager.orchestrator.pass_once()
        assert len(manager.store.state.tasks) == 3
        await manager.orchestrator.pass_once()
        assert len(manager.store.state.tasks) == 6
        with pytest.raises(ApiError) as refused:
            await manager.control.UpdateCluster(cpb.UpdateClusterRequest(max_starts_per_pass=200_000), None)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT

    run(scenario())


@pytest.mark.parametrize("value", ["many", "100001"])
def test_the_cli_refuses_a_bad_cap(value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "warren.cli.main", "cluster", "update", "--max-starts-per-pass", value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert "expected a whole number from 0 to 100000" in result.stderr
    assert "Traceback" not in result.stderr
