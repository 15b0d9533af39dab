"""The reconcile pass itself: pure and deterministic, its caps spreading big changes over
passes, and its config from the cluster settings."""

from __future__ import annotations

import msgspec

from tests.unit.core_sim import cluster, spec
from warren import commands
from warren.model import ClusterInfo, ServiceMode
from warren.reconciler import ReconcileConfig, is_empty, reconcile


def test_reconcile_is_pure_and_deterministic() -> None:
    sim = cluster("n1", "n2")
    sim.create_service(spec("web", replicas=3))
    sim.create_service(spec("mon", mode=ServiceMode.GLOBAL))
    before = msgspec.msgpack.encode(sorted(sim.state.tasks.values(), key=lambda t: t.id))

    def ids() -> object:
        counter = iter(range(100))
        return lambda: f"x{next(counter)}"

    first = reconcile(sim.state, sim.now, sim.heartbeats, sim.config, ids())  # type: ignore[arg-type]
    second = reconcile(sim.state, sim.now, sim.heartbeats, sim.config, ids())  # type: ignore[arg-type]
    assert first == second and len(first.created) == 5
    assert msgspec.msgpack.encode(sorted(sim.state.tasks.values(), key=lambda t: t.id)) == before
    assert not sim.state.tasks


def test_caps_spread_big_changes_over_passes() -> None:
    sim = cluster("n1", config=ReconcileConfig(max_starts_per_pass=2, max_stops_per_pass=1))
    svc = sim.create_service(spec("web", replicas=5))
    assert [len(sim.reconcile().created) for _ in range(4)] == [2, 2, 1, 0]
    sim.agents_step()
    sim.scale(svc, 2)
    assert [len(sim.reconcile().updated) for _ in range(4)] == [1, 1, 1, 0]
    sim.agents_step()
    assert len(sim.live(svc)) == 2


def test_config_from_cluster_and_is_empty() -> None:
    info = ClusterInfo(
        id="c", created_at=0, ca_cert_pem="", ca_key_pem="", worker_token_secret="", manager_token_secret="",
        heartbeat_period=2.0, task_history_limit=9,
    )  # fmt: skip
    config = ReconcileConfig.from_cluster(info, max_stops_per_pass=7)
    assert (config.heartbeat_period, config.node_timeout, config.task_history_limit) == (2.0, 6.0, 9)
    assert config.max_stops_per_pass == 7 and config.max_starts_per_pass == 1000
    assert ReconcileConfig.from_cluster(None) == ReconcileConfig()
    assert is_empty(commands.ApplyPlan())
    assert not is_empty(commands.ApplyPlan(deleted=("x",)))
