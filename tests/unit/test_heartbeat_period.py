"""The heartbeat period at run time (ADR 52): `cluster update --heartbeat-period` is a replicated
setting, checked in the command as well as the API, and the down check counts with the old
period for a while after it is lowered, until every agent has taken the new one up."""

from __future__ import annotations

import math

import pytest

from warren import commands
from warren.manager.orchestrator import HeartbeatPeriod
from warren.model import ClusterInfo
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
