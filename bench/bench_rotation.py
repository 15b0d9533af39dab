"""How long a WireGuard key rotation stalls traffic on the overlay (issue #5: "without dropping
established traffic longer than a handshake").

Three "hosts" (tests/fixtures/overlay_cluster.py's cluster on the namespace lab, real wireguard-go):
an echo server on h1's overlay address, and one long-lived TCP connection from h2 and one from
h3 sending a line every 50 ms and waiting for its echo (tests/fixtures/echo_probe.py). Each round
rotates one node's key with `warren node rotate-key` (waiting until it is published), h1, h2
and h3 in turn, then waits 2 s. Reported: the longest stall of either connection over all rounds
(the time between two echoes, of which 50 ms is the probes' own interval), how many stalls over
100 ms there were, and the time `rotate-key` took (the agent learns of the rotation at its next
heartbeat and publishes its new key at the one after: 1 s apart here). Also reported: the
resident memory of h2's agent, idle on the overlay (mesh, load balancer, DNS, pyroute2 loaded).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import figure, latency_summary

ROUNDS = 9
PROBE_INTERVAL = 0.05
ECHO_PORT = 7007


def run() -> dict[str, object]:
    from tests.fixtures.overlay_cluster import OverlayCluster
    from tests.fixtures.overlay_lab import OverlayLab
    from tests.integration.harness import REPO
    from tests.waiting import wait_for

    for tool in ("wireguard-go", "nft", "ip", "nsenter"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (make deps)")
    tmp = Path(tempfile.mkdtemp(prefix="warren-bench-rotation-"))
    cluster = OverlayCluster(OverlayLab(), tmp)
    command_times: list[float] = []
    results: dict[str, dict] = {}
    agent_rss_mib = 0.0
    try:
        cluster.start(3)
        h1, h2, h3 = cluster.hosts
        server = cluster.overlay_address(h1)
        for host in (h2, h3):
            wait_for(lambda host=host: host.ping(server), timeout=30, message=f"{host.name} to reach h1")
        python = ["env", f"PYTHONPATH={REPO}", sys.executable, "-m", "tests.fixtures.echo_probe"]
        cluster.lab.spawn(h1, [*python, "serve", server, str(ECHO_PORT)])
        connect = f"import socket; socket.create_connection(('{server}', {ECHO_PORT}), timeout=1).close()"
        wait_for(lambda: h2.run([sys.executable, "-c", connect]).returncode == 0, timeout=10, message="the server")
        stop = tmp / "stop"
        paths = {h.name: tmp / f"probe-{h.name}.json" for h in (h2, h3)}
        for host in (h2, h3):
            cluster.lab.spawn(host, [*python, "probe", server, str(ECHO_PORT), str(stop), str(paths[host.name])])
        time.sleep(2)
        status = Path(f"/proc/{cluster.agents['h2'].pid}/status").read_text()  # idle, mesh up
        agent_rss_mib = int(status.split("VmRSS:")[1].split()[0]) / 1024
        ids = {h.name: cluster.node_of(h)["id"] for h in cluster.hosts}
        for i in range(ROUNDS):
            name = cluster.hosts[i % 3].name
            started = time.monotonic()
            rotated = cluster.cli("node", "rotate-key", ids[name])
            if rotated.returncode != 0:
                raise RuntimeError(f"rotate-key {name}: {rotated.stderr}")
            command_times.append(time.monotonic() - started)
            time.sleep(2)
        stop.touch()
        for name, path in paths.items():
            wait_for(path.exists, timeout=40, message=f"the probe from {name}")
            results[name] = json.loads(path.read_text())
    finally:
        cluster.lab.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    broken = {name: r["error"] for name, r in results.items() if r["error"]}
    if broken:
        raise RuntimeError(f"a connection broke during the rotations: {broken}")
    stalls = [gap for r in results.values() for _, gap in r["stalls"]]
    longest = max(float(r["max_gap"]) for r in results.values())
    commands = latency_summary(command_times)
    return {
        "benchmark": "key_rotation",
        "rounds": ROUNDS,
        "probe_interval_s": PROBE_INTERVAL,
        "round_trips": {name: r["round_trips"] for name, r in results.items()},
        "longest_stall_ms": round(longest * 1000, 1),
        "stalls_over_100ms": len(stalls),
        "stalls_ms": sorted(round(s * 1000, 1) for s in stalls),
        "rotate_key_command": commands,
        "agent_rss_mib_on_the_overlay": round(agent_rss_mib, 1),
        "figures": [
            # A handshake here takes ~1 ms, the probes' own interval is 50 ms; a lost handshake
            # would be retried after 5 s (WireGuard's REKEY_TIMEOUT): the goal rules that out.
            figure("longest stall of a TCP connection during a rotation", round(longest * 1000, 1), "ms", 1000),
            figure("stalls over 100 ms in all rounds", len(stalls), "count"),
            figure("rotate-key, until the new key is published, p50", commands["p50_ms"], "ms"),
            # Issue #3's goal for an idle agent (60 MB = 57.2 MiB), here with the overlay on.
            figure("agent RSS on the overlay, idle", round(agent_rss_mib, 1), "MiB", 57.2),
        ],
    }
