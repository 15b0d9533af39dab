"""Overlay TCP throughput (issue #5): iperf3 between two network namespaces over
(a) the veth underlay (through the lab's bridge), (b) wireguard-go configured by hand with `wg`
and `ip`, and (c) wireguard-go configured by Warren's adapter from the mesh plan.

All three run in one lab, side by side: both WireGuard pairs stay up for the whole run (idle
when not measured), and the measurements alternate a, b, c for ROUNDS rounds, so drift in the
machine's load falls on all of them alike. The figures are medians; the goal is (c)/(b) >= 0.9,
i.e. Warren's configuration costs nothing the hand-made one doesn't. The namespaces, processes
and interfaces are all the lab's own (unique prefix) and are removed at the end, whatever happens.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import figure

ROUNDS = 5
SECONDS = 3
IPERF_PORT = 5201
HAND_PORT = 51830
WARREN_PORT = 51820


def run() -> dict[str, object]:
    from tests.fixtures.overlay_lab import OverlayLab
    from warren.network.mesh import converge
    from warren.network.plan import MeshNode, plan_mesh
    from warren.network.wireguard import UserspaceDevice, ensure_key_file, read_key_file

    for tool in ("wireguard-go", "wg", "iperf3", "ip", "nsenter"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (make deps)")
    tmp = Path(tempfile.mkdtemp(prefix="warren-bench-overlay-"))
    lab = OverlayLab()
    try:
        h1, h2 = lab.create(2)
        hosts = (h1, h2)
        keys = {h.name: tmp / f"{h.name}.key" for h in hosts}
        publics = {h.name: ensure_key_file(keys[h.name]) for h in hosts}

        # (b) by hand: wireguard-go, then `wg set` and `ip`, as an operator would
        hand_addr = {"h1": "10.202.0.1", "h2": "10.202.0.2"}
        for h, peer in ((h1, h2), (h2, h1)):
            ifname = lab.ifname(h, "b")
            proc = lab.spawn(h, ["wireguard-go", "-f", ifname], log=tmp / f"{ifname}.log")
            _wait_socket(ifname, proc)
            lab.stoppers.append(lambda ifname=ifname: Path(f"/var/run/wireguard/{ifname}.sock").unlink(missing_ok=True))
            h.run(
                [
                    "wg", "set", ifname, "private-key", str(keys[h.name]), "listen-port", str(HAND_PORT),
                    "peer", publics[peer.name], "endpoint", f"{peer.ip}:{HAND_PORT}",
                    "allowed-ips", f"{hand_addr[peer.name]}/32", "persistent-keepalive", "25",
                ],
                check=True,
            )  # fmt: skip
            h.run(["ip", "address", "add", f"{hand_addr[h.name]}/24", "dev", ifname], check=True)
            h.run(["ip", "link", "set", ifname, "up"], check=True)

        # (c) Warren: keys, plan, adapter
        nodes = [
            MeshNode(h.name, publics[h.name], f"{h.ip}:{WARREN_PORT}", f"10.200.{i}.0/24")
            for i, h in enumerate(hosts, start=1)
        ]
        for h in hosts:
            device = UserspaceDevice(lab.ifname(h, "c"), h.netns, log_path=tmp / f"{h.name}-warren.log")
            lab.stoppers.append(device.stop)
            converge(device, plan_mesh(nodes, h.name, private_key_ref=str(keys[h.name]), ifname=device.ifname))
        assert read_key_file(keys["h1"])  # the keys stayed in their files

        targets = {"underlay": h2.ip, "hand": hand_addr["h2"], "warren": "10.200.2.1"}
        for name, address in targets.items():  # reachable, handshakes done, server up
            if not h1.ping(address, attempts=5):
                raise RuntimeError(f"{name}: {address} unreachable from h1")
        _iperf(lab, h1, h2, targets["underlay"], 1, tmp / "iperf3.log")  # warm-up

        samples: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(ROUNDS):
            for name, address in targets.items():
                samples[name].append(_iperf(lab, h1, h2, address, SECONDS, tmp / "iperf3.log"))
        gbps = {name: statistics.median(values) / 1e9 for name, values in samples.items()}
        ratio = gbps["warren"] / gbps["hand"]
        return {
            "rounds": ROUNDS,
            "seconds_per_test": SECONDS,
            "samples_gbit_s": {name: [round(v / 1e9, 3) for v in values] for name, values in samples.items()},
            "per_round_ratio": [round(c / b, 3) for b, c in zip(samples["hand"], samples["warren"], strict=True)],
            "figures": [
                figure("Overlay TCP, veth underlay (iperf3)", round(gbps["underlay"], 3), "Gbit/s"),
                figure("Overlay TCP, wireguard-go by hand (wg)", round(gbps["hand"], 3), "Gbit/s"),
                figure("Overlay TCP, Warren mesh (wireguard-go)", round(gbps["warren"], 3), "Gbit/s"),
                figure("Warren mesh / hand-configured wireguard-go", round(ratio, 3), "x", 0.9, ">="),
            ],
        }
    finally:
        lab.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_socket(ifname: str, proc: subprocess.Popen, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    sock = Path(f"/var/run/wireguard/{ifname}.sock")
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"wireguard-go for {ifname} did not start")
        time.sleep(0.02)


def _iperf(lab, host, server_host, address: str, seconds: int, log: Path) -> float:
    """Bits per second received for one TCP test from `host` to `address`, against a fresh
    one-off server (`iperf3 -s -1`: a long-lived server refuses or resets a test that follows
    the previous one too closely). Connection errors before the test are retried."""
    server = lab.spawn(server_host, ["iperf3", "-s", "-1", "-p", str(IPERF_PORT)], log=log)
    try:
        error = ""
        for _ in range(50):
            if server.poll() is not None:
                raise RuntimeError(f"the iperf3 server exited ({error or 'before any test'})")
            argv = ["iperf3", "-c", address, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
            out = host.run(argv, timeout=seconds + 20, check=False)
            try:
                result = json.loads(out.stdout)
            except json.JSONDecodeError:
                raise RuntimeError(f"iperf3 to {address}: {out.stderr.strip() or out.stdout[:200]}") from None
            error = result.get("error", "")
            if not error:
                return float(result["end"]["sum_received"]["bits_per_second"])
            if "unable to connect" not in error and "busy" not in error:
                raise RuntimeError(f"iperf3 to {address}: {error}")
            time.sleep(0.1)  # the server is not listening yet
        raise RuntimeError(f"iperf3 to {address}: {error}")
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
