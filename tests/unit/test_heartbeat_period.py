"""The heartbeat period at run time (ADR 52): `cluster update --heartbeat-period` is a replicated
setting, checked in the command as well as the API, and the down check counts with the old
period for a while after it is lowered, until every agent has taken the new one up."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.unit.test_manager_services import Manager, run
from warren import commands, reconciler
from warren.manager.orchestrator import HeartbeatPeriod
from warren.model import ClusterInfo, Node, NodeStatus
from warren.reconciler import liveness
from warren.state import ClusterState, Put


def cluster_state() -> ClusterState:
    state = ClusterState()
    info = ClusterInfo(
        id="c", created_at=1.0, ca_cert_pem="", ca_key_pem="", worker_token_secret="", manager_token_secret=""
    )
    state.apply([Put("cluster", info)])
    return state


def test_the_period_is_a_cluster_setting() -> None:
    state = cluster_state()
    result, changes = commands.apply(state, commands.UpdateClusterSettings(heartbeat_period=1.5))
    assert result.ok
    state.apply(changes)
    assert state.cluster is not None and state.cluster.heartbeat_period == 1.5
    assert not state.cluster.auto_rebalance  # the other settings are kept


@pytest.mark.parametrize("period", [0.0, 0.05, 3601.0, math.nan, math.inf, -1.0])
def test_a_period_out_of_range_is_refused(period: float) -> None:
    result, changes = commands.apply(cluster_state(), commands.UpdateClusterSettings(heartbeat_period=period))
    assert (result.ok, result.code, changes) == (False, "invalid_argument", [])
    assert "between 100ms and 1h" in result.message


def test_the_old_period_counts_for_two_old_periods_after_it_is_lowered() -> None:
    period = HeartbeatPeriod()
    assert period.effective(5.0, 100.0) == 5.0
    assert period.effective(1.0, 101.0) == 5.0  # agents may still sleep 5 s before their next beat
    assert period.effective(1.0, 110.9) == 5.0
    assert period.effective(1.0, 111.0) == 1.0
    # Raised: the longer period counts at once (agents beat faster than needed meanwhile).
    assert period.effective(3.0, 112.0) == 3.0
    # Lowered again while lowered before: the grace follows the latest change.
    assert period.effective(1.0, 113.0) == 3.0
    assert period.effective(1.0, 119.0) == 1.0


@pytest.mark.parametrize(
    ("configured", "nodes"), [(5.0, 1), (5.0, 250), (5.0, 251), (5.0, 1000), (1.0, 60), (60.0, 1000)]
)
def test_a_large_cluster_beats_at_most_max_heartbeats_per_second(configured: float, nodes: int) -> None:
    """ADR 73: past 250 nodes at 5 s, the period grows, so that the leader is asked to take at
    most MAX_HEARTBEATS_PER_SECOND heartbeats a second; never shorter than the setting."""
    period = liveness.heartbeat_period(configured, nodes)
    assert period >= configured
    assert nodes / period <= liveness.MAX_HEARTBEATS_PER_SECOND * (1 + 1e-9)
    if nodes / configured <= liveness.MAX_HEARTBEATS_PER_SECOND:
        assert period == configured  # a cluster of a few hundred nodes keeps its setting


def test_the_agents_and_the_down_check_count_with_the_lengthened_period(monkeypatch: pytest.MonkeyPatch) -> None:
    """The heartbeat answer and the reconcile pass use the same period: a node of a 1,000-node
    cluster is told 20 s, and is called down only after 60 s without a beat."""
    configs: list[reconciler.ReconcileConfig] = []
    real = reconciler.reconcile_pass

    def recording(*args: Any, **kwargs: Any) -> Any:
        configs.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(reconciler, "reconcile_pass", recording)

    async def scenario() -> None:
        manager = Manager()
        await manager.init()
        nodes = [Node(id=f"n{i}", hostname=f"n{i}", status=NodeStatus.READY) for i in range(999)]
        manager.store.put(*(Put("node", n) for n in nodes))
        with manager.store.read() as state:
            assert len(state.nodes) == 1000
            assert manager.dispatcher._period(state) == 20.0
        await manager.orchestrator.pass_once()
        assert configs and configs[-1].heartbeat_period == 20.0 and configs[-1].node_timeout == 60.0

    run(scenario())
