"""Zero failed requests (#12, ADR 33 "routing leads every stop"), on the deployment rig.

One node in its own network namespace, real containerd, the web images (which exit at SIGTERM,
as most servers do), the overlay's nftables load balancer, and two Debian `hey`s side by side,
a new connection per request: one on the published port, one on the service's VIP. Under that
load these fail no request:
- a rolling update of 4 replicas (v1 -> v2) and a scale-down from 4 to 1;
- a start-first update of a single replica (moby#29148: Swarm's stop-first leaves it down);
- on the two-node rig (a second namespace with its own containerd and agent, over the
  WireGuard overlay), draining the node that runs one of 2 replicas: its task moves.
Every task that stops was first taken out of the load balancing, and stopped only once the
nodes' agents reported that their nftables no longer route to it. Each stopped task says so: it
was drained, and no node failed to confirm (the bound was not what ended the wait).

The one-node rig is shared by the module's one-node tests, each removing its service at the end.

Everything the rig starts is stopped by PID, by containerd's API or by the names it made.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.fixtures.deploy_rig import DeployRig
from tests.fixtures.images import web_page
from tests.fixtures.load import HeyLoad, LoadResult
from tests.integration.harness import wait_for

# It measures under load: it runs alone, after the parallel workers (ADR 41).
pytestmark = [pytest.mark.integration, pytest.mark.serial]

RATE = 25.0  # requests/s per hey worker: the machine is shared
TIMEOUT = 5.0
# Each load runs at least this long, so that a change done in under a second is still run under
# enough requests for "none failed" to mean something (the assertion wants 50 or more).
MIN_LOAD_S = 2.5


def _loads(rig: DeployRig, service: str = "web") -> tuple[HeyLoad, HeyLoad]:
    published = rig.load(concurrency=4, rate_per_worker=RATE, request_timeout=TIMEOUT).start()
    vip = rig.load(rig.vip_url(service), concurrency=2, rate_per_worker=RATE, request_timeout=TIMEOUT).start()
    return published, vip


def _assert_none_failed(what: str, results: dict[str, LoadResult]) -> None:
    for target, result in results.items():
        print(f"{what}, {target}: {result.as_dict()}")
        assert result.requests >= 50 and result.failed == 0, (what, target, result.as_dict(), result.error_messages)


def _stopped_after_draining(rig: DeployRig, ids: set[str], service: str = "web") -> None:
    """Every task in `ids` was stopped after its drain, confirmed by the nodes (not by the bound)."""
    stopped = [t for t in rig.tasks(service, history=True) if t["id"] in ids]
    assert len(stopped) == len(ids), stopped
    for task in stopped:
        assert task["desired_state"] == "shutdown", task
        assert "not confirmed" not in task["message"], task


def _remove(rig: DeployRig, service: str) -> None:
    """Remove `service` (its port is free for the module's next test), its task ids kept for the sweep."""
    rig.tasks(service, history=True)
    rig.cli("service", "rm", service)


def test_a_rolling_update_and_a_scale_down_under_load_fail_no_request(module_rig: DeployRig) -> None:
    rig = module_rig
    try:
        rig.create_web("web", "v1", 4)
        rig.wait_serving(web_page("v1"), "web", 4)

        old = {t["id"] for t in rig.running("web")}
        published, vip = _loads(rig)
        rig.ok("service", "update", "web", "--image", rig.image("v2"), "--timeout", "300s")
        rig.wait_serving(web_page("v2"), "web", 4, timeout=300)
        _assert_none_failed(
            "rolling update v1 -> v2",
            {"published port": published.stop(ran_for=MIN_LOAD_S), "VIP": vip.stop(ran_for=MIN_LOAD_S)},
        )
        _stopped_after_draining(rig, old)

        running = {t["id"] for t in rig.running("web")}
        published, vip = _loads(rig)
        rig.ok("service", "scale", "web=1", "--timeout", "300s")
        rig.wait_serving(web_page("v2"), "web", 1, timeout=300)
        _assert_none_failed(
            "scale-down 4 -> 1",
            {"published port": published.stop(ran_for=MIN_LOAD_S), "VIP": vip.stop(ran_for=MIN_LOAD_S)},
        )
        _stopped_after_draining(rig, running - {t["id"] for t in rig.running("web")})
    finally:
        _remove(rig, "web")


def test_a_start_first_update_of_a_single_replica_fails_no_request(module_rig: DeployRig) -> None:
    rig = module_rig
    try:
        rig.create_web("solo", "v1", 1, "--update-order", "start-first", "--update-monitor", "1s")
        rig.wait_serving(web_page("v1"), "solo", 1)

        [old] = [t["id"] for t in rig.running("solo")]
        published, vip = _loads(rig, "solo")
        rig.ok("service", "update", "solo", "--image", rig.image("v2"), "--timeout", "120s")
        rig.wait_serving(web_page("v2"), "solo", 1)
        _assert_none_failed(
            "start-first update of 1 replica",
            {"published port": published.stop(ran_for=MIN_LOAD_S), "VIP": vip.stop(ran_for=MIN_LOAD_S)},
        )
        _stopped_after_draining(rig, {old}, "solo")
    finally:
        _remove(rig, "solo")


def test_a_node_drain_on_two_nodes_fails_no_request_and_moves_the_task(two_node_rig: DeployRig) -> None:
    rig = two_node_rig
    first, second = (rig.cluster.node_of(host)["id"] for host in rig.cluster.hosts)
    try:
        rig.create_web("web", "v1", 2)
        rig.wait_serving(web_page("v1"), "web", 2)
        on_second = wait_for(
            lambda: [t["id"] for t in rig.running("web") if t["node_id"] == second],
            message="a replica on each node",
        )
        assert {t["node_id"] for t in rig.running("web")} == {first, second}

        published, vip = _loads(rig)
        rig.ok("node", "update", second, "--availability", "drain")
        wait_for(
            lambda: rig.settled("web", 2) and {t["node_id"] for t in rig.running("web")} == {first},
            timeout=120,
            interval=0.5,
            message="both replicas on the first node",
        )
        rig.wait_serving(web_page("v1"), "web", 2)
        _assert_none_failed(
            "drain of a node",
            {"published port": published.stop(ran_for=MIN_LOAD_S), "VIP": vip.stop(ran_for=MIN_LOAD_S)},
        )
        _stopped_after_draining(rig, set(on_second))
    finally:
        _remove(rig, "web")


def test_a_silent_agent_holds_a_stop_no_longer_than_the_bound_and_is_named(two_node_rig: DeployRig) -> None:
    """The second node's agent stops (SIGSTOP, by PID) and confirms nothing more: a scale-down's
    stop of a task on the first node (the second, drained, runs none but routes to both) still
    goes out, within the bound (3 heartbeat periods) of the drain, and the stopped task's message
    names the node that did not confirm. The node goes down (3 periods after its last heartbeat,
    which came before the drain) before the bound passes: that ends the wait."""
    rig = two_node_rig
    second = rig.cluster.node_of(rig.cluster.hosts[1])["id"]
    agent = rig.cluster.agents["h2"]
    try:
        rig.ok("node", "update", second, "--availability", "drain")
        rig.create_web("web", "v1", 2)
        rig.wait_serving(web_page("v1"), "web", 2)
        agent.send_signal(signal.SIGSTOP)
        drained = time.monotonic()
        rig.ok("service", "scale", "web=1", "--detach")
        stopped = wait_for(
            lambda: [t for t in rig.tasks("web", history=True) if t["desired_state"] == "shutdown"],
            timeout=60,
            interval=0.2,
            message="the scaled-down task told to stop",
        )
        waited = time.monotonic() - drained
        print(f"silent agent: the stop went out {waited:.1f}s after the scale-down: {stopped[0]['message']}")
        assert len(stopped) == 1 and stopped[0]["message"] == (
            f"shutdown: scaled down (node(s) {second[:12]} went down before confirming it out of their load balancing)"
        ), stopped
        bound = 3 * rig.heartbeat_period  # how long a node that does not confirm holds a stop
        assert waited < bound + 10, waited  # plus a loaded machine's passes and CLI calls
    finally:
        agent.send_signal(signal.SIGCONT)
        _remove(rig, "web")
