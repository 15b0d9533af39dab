"""A rebalance under load fails no request (#12, ADR 36) on two hosts of an overlay lab: each
host a network namespace with its Warren node (a manager with its embedded agent in h1, an agent
in h2), wireguard-go, nftables load balancing and the exec runtime; the tasks are busybox httpds
in their own task namespaces. The service's 4 tasks start on h1 while h2 is paused; h2 becomes
active and `service rebalance` moves two of them there at once, while two Debian `hey`s, one per host,
send a new connection per request to the published port of their own host. Every moved task's
old one was drained out of both hosts' load balancing, confirmed by both agents, before its stop.

Everything is torn down in `finally`: the lab's processes by PID, wireguard-go by the interface
names the lab chose, the task namespaces by the ids of this test's tasks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from tests.fixtures.load import HeyLoad, LoadResult
from tests.fixtures.overlay_cluster import OverlayCluster
from tests.fixtures.overlay_lab import LabHost, OverlayLab, remove_task_namespaces
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.serial,  # it counts failed requests under load (ADR 41)
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="wireguard-go is not installed (make deps)"),
    pytest.mark.skipif(shutil.which("hey") is None, reason="hey is not installed (make deps)"),
]

PORT = 18080
RATE = 25.0  # requests/s per hey worker: the machine is shared
# A connection sent to a task that stopped never succeeds, whatever the timeout; a long one keeps
# a SYN that a CPU-starved wireguard-go dropped (retried after 1 s, then 3 s) from counting.
TIMEOUT = 15.0


def test_a_rebalance_under_load_fails_no_request(tmp_path: Path) -> None:
    lab = OverlayLab()
    cluster = OverlayCluster(lab, tmp_path)
    loads: list[HeyLoad] = []
    task_ids: list[str] = []
    try:
        cluster.start(2)
        h1, h2 = cluster.hosts
        node1, node2 = cluster.node_of(h1)["id"], cluster.node_of(h2)["id"]
        assert cluster.cli("node", "update", "--availability", "pause", node2).returncode == 0

        www = tmp_path / "www"
        www.mkdir()
        serve = 'd="$WWW/$$" && mkdir -p "$d" && echo ok > "$d/index.html" && exec busybox httpd -f -p 8080 -h "$d"'
        created = cluster.cli(
            *("service", "create", "web", "--image", "busybox", "--replicas", "4", "--detach"),
            *("--env", f"WWW={www}", "--publish", f"{PORT}:8080"),
            *("--update-monitor", "1s", "--update-parallelism", "2"),  # both moves at once
            *("--health-http", "http://127.0.0.1:8080/index.html", "--health-interval", "1s"),
            *("--", "/bin/sh", "-c", serve),
        )
        assert created.returncode == 0, created.stderr

        def serving() -> list[dict]:
            tasks = cluster.cli_json("service", "ps", "web")
            return [t for t in tasks if t["state"] == "running" and t["health"] == "healthy"]  # type: ignore[union-attr]

        wait_for(lambda: len(serving()) == 4, timeout=60, message="4 healthy tasks")
        assert {t["node_id"] for t in serving()} == {node1}
        old = {t["id"] for t in serving()}
        assert cluster.cli("node", "update", "--availability", "active", node2).returncode == 0

        for host in (h1, h2):
            url = f"http://{host.ip}:{PORT}/index.html"
            load = HeyLoad(url, netns=host.netns, rate_per_worker=RATE, request_timeout=TIMEOUT)
            loads.append(load.start())
        moved = cluster.cli("service", "rebalance", "web", "--timeout", "120s")
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert moved.stdout.strip() == "web: moving 2 of 4 tasks"

        def stopped() -> list[dict]:
            tasks = cluster.cli_json("service", "ps", "web", "--all")
            return [t for t in tasks if t["id"] in old and t["state"] in ("shutdown", "complete")]  # type: ignore[union-attr]

        wait_for(lambda: len(stopped()) == 2, timeout=60, message="the two moved tasks' old ones to stop")
        hosts_loads = zip((h1, h2), loads, strict=True)
        results: dict[str, LoadResult] = {f"published port on {host.name}": load.stop() for host, load in hosts_loads}
        for target, result in results.items():
            print(f"rebalance under load, {target}: {result.as_dict()}")
        if any(result.failed for result in results.values()):
            print(_where_requests_went(cluster, (h1, h2)))
        for target, result in results.items():
            assert result.requests >= 50 and result.failed == 0, (target, result.as_dict(), result.error_messages)
        assert sorted(Counter(t["node_id"] for t in serving()).values()) == [2, 2]
        for task in stopped():
            assert task["message"] == "shutdown: moved to another node by a rebalance", task  # confirmed, not bound
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        for load in loads:
            load.close()
        with contextlib.suppress(Exception):  # every task the cluster made, whatever happened
            listed = cluster.cli("service", "ps", "web", "--all", "--format", "json")
            task_ids.extend(t["id"] for t in json.loads(listed.stdout))
        lab.destroy()
        remove_task_namespaces({*task_ids, *cluster.recorded_task_ids()})


def _where_requests_went(cluster: OverlayCluster, hosts: tuple[LabHost, ...]) -> str:
    """What a failed request is traced by: each host's connection tracking for the published
    port (a connection that never got an answer stays there, with the backend its DNAT chose),
    next to every task's address and state."""
    lines = []
    for host in hosts:
        tracked = host.run(["cat", "/proc/net/nf_conntrack"]).stdout.splitlines()
        ours = [line for line in tracked if f"dport={PORT} " in line and "TIME_WAIT" not in line]
        lines += [f"conntrack on {host.name} ({len(ours)} not in TIME_WAIT):", *ours]
    listed = cluster.cli("service", "ps", "web", "--all", "--format", "json")
    lines.append(f"tasks: {listed.stdout}")
    return "\n".join(lines)
