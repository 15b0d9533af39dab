"""Zero failed requests (#12, ADR 33 "routing leads every stop"), on the deployment rig.

One node in its own network namespace, real containerd, the web images (which exit at SIGTERM,
as most servers do), the overlay's nftables load balancer, and two Debian `hey`s side by side,
a new connection per request: one on the published port, one on the service's VIP. Under that
load, a rolling update of 4 replicas (v1 -> v2) and a scale-down from 4 to 1 fail no request:
every task that stops was first taken out of the load balancing, and stopped only once the
node's agent reported that its nftables no longer route to it. Each stopped task says so: it
was drained, and no node failed to confirm (the bound was not what ended the wait).

Everything the rig starts is stopped by PID, by containerd's API or by the names it made.
"""

from __future__ import annotations

import pytest

from tests.fixtures.deploy_rig import DeployRig
from tests.fixtures.images import web_page
from tests.fixtures.load import HeyLoad, LoadResult

# It measures under load: it runs alone, after the parallel workers (ADR 41).
pytestmark = [pytest.mark.integration, pytest.mark.serial]

RATE = 25.0  # requests/s per hey worker: the machine is shared
TIMEOUT = 5.0


def _loads(rig: DeployRig) -> tuple[HeyLoad, HeyLoad]:
    published = rig.load(concurrency=4, rate_per_worker=RATE, request_timeout=TIMEOUT).start()
    vip = rig.load(rig.vip_url("web"), concurrency=2, rate_per_worker=RATE, request_timeout=TIMEOUT).start()
    return published, vip


def _assert_none_failed(what: str, results: dict[str, LoadResult]) -> None:
    for target, result in results.items():
        print(f"{what}, {target}: {result.as_dict()}")
        assert result.requests >= 50 and result.failed == 0, (what, target, result.as_dict(), result.error_messages)


def _stopped_after_draining(rig: DeployRig, ids: set[str]) -> None:
    """Every task in `ids` was stopped after its drain, confirmed by the node (not by the bound)."""
    stopped = [t for t in rig.tasks("web", history=True) if t["id"] in ids]
    assert len(stopped) == len(ids), stopped
    for task in stopped:
        assert task["desired_state"] == "shutdown", task
        assert "not confirmed" not in task["message"], task


def test_a_rolling_update_and_a_scale_down_under_load_fail_no_request(rig: DeployRig) -> None:
    try:
        rig.create_web("web", "v1", 4)
        rig.wait_serving(web_page("v1"), "web", 4)

        old = {t["id"] for t in rig.running("web")}
        published, vip = _loads(rig)
        rig.ok("service", "update", "web", "--image", rig.image("v2"), "--timeout", "300s")
        rig.wait_serving(web_page("v2"), "web", 4, timeout=300)
        _assert_none_failed("rolling update v1 -> v2", {"published port": published.stop(), "VIP": vip.stop()})
        _stopped_after_draining(rig, old)

        running = {t["id"] for t in rig.running("web")}
        published, vip = _loads(rig)
        rig.ok("service", "scale", "web=1", "--timeout", "300s")
        rig.wait_serving(web_page("v2"), "web", 1, timeout=300)
        _assert_none_failed("scale-down 4 -> 1", {"published port": published.stop(), "VIP": vip.stop()})
        _stopped_after_draining(rig, running - {t["id"] for t in rig.running("web")})
    finally:
        rig.tasks("web", history=True)  # the ids the rig sweeps if removal fails
