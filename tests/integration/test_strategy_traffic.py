"""Deployment strategies under real traffic (ADR 35), on the deployment rig: one node in its own
network namespace, real containerd, the web images v1 and v2 (which serve different pages), the
overlay's nftables load balancer, and Debian's `hey` on the published port and on the VIP.

One rig for the module, one scenario in order:
1. a canary at 20% beside 2 old tasks: over 1,000 new connections to the published port, the
   share that reaches v2 is within the 99.9% binomial interval of 20% (and far from the 1/3 an
   unweighted canary would get);
2. the canary promoted under load: no request fails;
3. a blue/green switch under load, then the instant rollback to the kept set: no request fails,
   and the rollback starts no task.
"""

from __future__ import annotations

import math
import subprocess

import pytest

from tests.fixtures.deploy_rig import DeployRig
from tests.fixtures.images import web_page
from tests.fixtures.load import HeyLoad, LoadResult
from tests.waiting import wait_for
from warren.network import links

pytestmark = [pytest.mark.integration, pytest.mark.serial]

RATE = 25.0  # requests/s per hey worker: the machine is shared
TIMEOUT = 5.0
SAMPLES = 1000
WEIGHT = 20
FAST = ("--update-monitor", "1s", "--rollback-monitor", "1s", "--timeout", "300s")


def binomial_interval(n: int, p: float, confidence: float = 0.999) -> tuple[int, int]:
    """The central interval holding `confidence` of Binomial(n, p), from its exact distribution."""
    log_pmf = [
        math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log(1 - p)
        for k in range(n + 1)
    ]
    pmf = [math.exp(x) for x in log_pmf]
    tail = (1 - confidence) / 2
    low, acc = 0, 0.0
    while acc + pmf[low] < tail:
        acc += pmf[low]
        low += 1
    high, acc = n, 0.0
    while acc + pmf[high] < tail:
        acc += pmf[high]
        high -= 1
    return low, high


def test_binomial_interval_is_the_textbook_one() -> None:
    low, high = binomial_interval(1000, 0.2)
    assert (low, high) == (159, 243)  # mean 200, sd 12.6: about +-3.29 sd, exact tails


def _pages(rig: DeployRig, url: str, count: int) -> list[str]:
    """`count` GETs, each on a new connection, from inside the node (one shell, many wgets)."""
    script = f"for i in $(seq {count}); do wget -q -O - {url} || echo failed; done"
    argv = links.nsenter(rig.netns, ["busybox", "sh", "-c", script])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    return done.stdout.splitlines()


def _loads(rig: DeployRig) -> tuple[HeyLoad, HeyLoad]:
    published = rig.load(concurrency=4, rate_per_worker=RATE, request_timeout=TIMEOUT).start()
    vip = rig.load(rig.vip_url("web"), concurrency=2, rate_per_worker=RATE, request_timeout=TIMEOUT).start()
    return published, vip


def _assert_none_failed(what: str, loads: tuple[HeyLoad, HeyLoad]) -> None:
    results: dict[str, LoadResult] = {"published port": loads[0].stop(), "VIP": loads[1].stop()}
    for target, result in results.items():
        print(f"{what}, {target}: {result.as_dict()}")
        assert result.requests >= 50 and result.failed == 0, (what, target, result.as_dict(), result.error_messages)


def test_canary_share_promote_and_blue_green_under_load(rig: DeployRig) -> None:
    v1, v2 = web_page("v1").decode().strip(), web_page("v2").decode().strip()
    try:
        canary = ("--deploy-strategy", "canary", "--canary-replicas", "1", "--canary-weight", str(WEIGHT))
        rig.create_web("web", "v1", 2, *canary, *FAST)
        rig.wait_serving(web_page("v1"), "web", 2)

        # 1. The canary's share, whatever the number of tasks (1 of 3 here).
        loads = _loads(rig)
        update = rig.cli("service", "update", "web", "--image", rig.image("v2"), *FAST)
        assert update.returncode == 0, update.stderr
        assert "canary" in rig.ok("service", "inspect", "web", "--format", "json")
        wait_for(lambda: v2 in _pages(rig, rig.published_url, 20), timeout=30, message="the canary routed")
        pages = _pages(rig, rig.published_url, SAMPLES)
        assert len(pages) == SAMPLES and set(pages) <= {v1, v2}, set(pages)
        low, high = binomial_interval(SAMPLES, WEIGHT / 100)
        share = pages.count(v2)
        print(f"canary at {WEIGHT}%: {share} of {SAMPLES} requests reached v2 (99.9% interval {low}..{high})")
        assert low <= share <= high

        # 2. Promote: the rest rolls, and no request fails (counted since the update began).
        rig.ok("service", "promote", "web", "--timeout", "300s")
        rig.wait_serving(web_page("v2"), "web", 2, timeout=300)
        _assert_none_failed("canary start and promote", loads)

        # 3. Blue/green to v1, then the instant rollback to the kept v2 set.
        loads = _loads(rig)
        green = ("--deploy-strategy", "blue-green", "--blue-green-keep", "5m")
        switched = rig.cli("service", "update", "web", "--image", rig.image("v1"), *green, *FAST)
        assert switched.returncode == 0, switched.stderr
        assert "switched to version" in switched.stderr
        wait_for(lambda: set(_pages(rig, rig.published_url, 20)) == {v1}, timeout=30, message="the switch applied")
        kept = {t["id"] for t in rig.tasks("web") if t["desired_state"] == "running"}
        assert len(kept) == 4  # both sets run: the old one out of routing
        every_task = {t["id"] for t in rig.tasks("web", history=True)}
        rig.ok("service", "rollback", "web", "--timeout", "300s")
        wait_for(lambda: set(_pages(rig, rig.published_url, 20)) == {v2}, timeout=30, message="switched back")
        rig.wait_serving(web_page("v2"), "web", 2, timeout=300)
        assert {t["id"] for t in rig.tasks("web", history=True)} <= every_task  # the rollback started none
        _assert_none_failed("blue/green switch and rollback", loads)
    finally:
        rig.tasks("web", history=True)  # the ids the rig sweeps if removal fails
