"""Agents build the overlay mesh themselves (issue #5, ADR 17): three "hosts" (network
namespaces on a bridge the test creates), a manager in the first, an agent with
`--wireguard userspace` in each. The managers push every node's subnet, public key and endpoint
to the agents, which converge their own wireguard-go; the test then pings each node's overlay
address from every other host. Everything is torn down in `finally`, wireguard-go by the
interface names the test chose.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.overlay_lab import LabHost, OverlayLab, remove_task_namespaces
from tests.integration.harness import REPO, wait_for
from warren.network.wireguard import UserspaceDevice

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="wireguard-go is not installed (make deps)"),
]


def test_agents_converge_the_mesh_from_the_cluster_state(tmp_path: Path) -> None:
    lab = OverlayLab()
    env = {**os.environ, "WARREN_CONFIG": str(tmp_path / "config.json"), "PYTHONPATH": str(REPO)}
    env.pop("WARREN_DEBUG", None)

    def cli(host: LabHost, *args: str) -> subprocess.CompletedProcess[str]:
        argv = ["nsenter", f"--net=/run/netns/{host.netns}", sys.executable, "-m", "warren.cli.main", *args]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)

    def spawn(host: LabHost, log: str, *args: str) -> subprocess.Popen:
        argv = ["env", *(f"{k}={v}" for k, v in env.items() if k in ("WARREN_CONFIG", "PYTHONPATH"))]
        return lab.spawn(host, [*argv, sys.executable, "-m", "warren.cli.main", *args], log=tmp_path / log)

    task_ids: list[str] = []
    try:
        hosts = lab.create(3)
        first = hosts[0]
        spawn(
            first,
            "manager.log",
            "cluster",
            "init",
            "--data-dir",
            str(tmp_path / "manager"),
            "--listen-addr",
            f"{first.ip}:4242",
            "--heartbeat-period",
            "1s",
            # The first node's own agent, embedded in the manager, joins the mesh too.
            *("--runtime", "exec", "--wireguard", "userspace", "--wireguard-interface", lab.ifname(first)),
        )
        lab.stoppers.append(UserspaceDevice(lab.ifname(first), first.netns).stop)  # by the name we chose
        wait_for(lambda: cli(first, "cluster", "info").returncode == 0, timeout=30, message="the manager")
        token = cli(first, "cluster", "join-token", "worker", "-q").stdout.strip()
        agents = {}
        for host in hosts[1:]:
            ifname = lab.ifname(host)
            lab.stoppers.append(UserspaceDevice(ifname, host.netns).stop)  # by the name we chose
            agents[host.name] = spawn(
                host,
                f"agent-{host.name}.log",
                "cluster",
                "join",
                "--token",
                token,
                f"{first.ip}:4244",
                "--data-dir",
                str(tmp_path / f"agent-{host.name}"),
                "--runtime",
                "exec",
                "--advertise-addr",
                host.ip,
                "--wireguard",
                "userspace",
                "--wireguard-interface",
                ifname,
            )

        def workers() -> list[dict]:
            """Every ready node with its WireGuard endpoint known, the manager's included."""
            result = cli(first, "node", "ls", "--format", "json")
            nodes = json.loads(result.stdout) if result.returncode == 0 else []
            ready = [n for n in nodes if n["status"] == "ready"]
            details = [json.loads(cli(first, "node", "inspect", n["id"], "--format", "json").stdout) for n in ready]
            return [{**d, "addr": d["wg_endpoint"].rpartition(":")[0]} for d in details if d["wg_endpoint"]]

        wait_for(lambda: len(workers()) == 3, timeout=45, message="three nodes in the mesh")
        subnets = {node["addr"]: ipaddress.ip_network(node["overlay_subnet"]) for node in workers()}
        overlay = {h.name: str(subnets[h.ip].network_address + 1) for h in hosts}
        h1, h2, h3 = hosts

        for a, b in itertools.permutations(hosts, 2):
            wait_for(
                lambda a=a, b=b: a.ping(overlay[b.name]),
                timeout=30,
                message=f"{a.name} to reach {b.name}'s overlay address {overlay[b.name]}",
            )

        # Tasks get their own namespace and an address of their node's subnet, and are reached
        # over the overlay from the other hosts (an httpd in each, exec runtime).
        # Each task serves its own address (what `ip addr` shows in its namespace).
        www = tmp_path / "www"
        www.mkdir()
        serve = (
            'd="$WWW/$$" && mkdir -p "$d" && busybox ip -o -4 addr show eth0 > "$d/index.html"'
            ' && exec busybox httpd -f -p 8080 -h "$d"'
        )
        created = cli(
            first,
            *("service", "create", "web", "--image", "busybox", "--mode", "global", "--detach"),
            *("--env", f"WWW={www}", "--publish", "18080:8080"),
            # Aimed at the loopback, as an operator writes it: the agent dials the task's address.
            *("--health-http", "http://127.0.0.1:8080/index.html", "--health-interval", "1s"),
            *("--", "/bin/sh", "-c", serve),
        )
        assert created.returncode == 0, created.stderr

        def running_tasks() -> list[dict]:
            result = cli(first, "service", "ps", "web", "--format", "json")
            tasks = json.loads(result.stdout) if result.returncode == 0 else []
            return [t for t in tasks if t["state"] == "running" and t["overlay_address"] and t["health"] == "healthy"]

        def fetch(host: LabHost, url: str, netns: str | None = None) -> str:
            argv = ["busybox", "wget", "-q", "-O", "-", url]
            if netns:  # from inside a task's own namespace
                argv = ["nsenter", f"--net=/run/netns/{netns}", *argv]
                result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            else:
                result = host.run(argv)
            return result.stdout if result.returncode == 0 else ""

        tasks = wait_for(lambda: (t := running_tasks()) and len(t) == 3 and t, timeout=30, message="3 web tasks")
        task_ids.extend(t["id"] for t in tasks)
        for task in tasks:
            address = task["overlay_address"]
            assert any(ipaddress.ip_address(address) in net for net in subnets.values())
            for host in hosts:  # every task is reached from every host, over the overlay
                assert address in wait_for(
                    lambda host=host, address=address: fetch(host, f"http://{address}:8080/index.html"),
                    timeout=10,
                    message=f"{host.name} to fetch from {address}",
                )

        # The service's VIP spreads connections over its tasks, from a task on h1 and from h2.
        vip = json.loads(cli(first, "service", "inspect", "web", "--format", "json").stdout)["vip"]
        on_h1 = next(t for t in tasks if ipaddress.ip_address(t["overlay_address"]) in subnets[h1.ip])
        answered = set()
        for _ in range(30):
            for page in (
                fetch(h1, f"http://{vip}:8080/index.html", netns=f"wt-{on_h1['id']}"),
                fetch(h2, f"http://{vip}:8080/index.html"),
            ):
                answered |= {t["overlay_address"] for t in tasks if t["overlay_address"] in page}
            if len(answered) == 3:
                break
        assert answered == {t["overlay_address"] for t in tasks}

        # The published port answers on every node's own address, from any task (routing mesh).
        answered = set()
        for _ in range(30):
            for host, target in ((h2, h3.ip), (h1, h1.ip), (h3, h2.ip)):
                page = fetch(host, f"http://{target}:18080/index.html")
                answered |= {t["overlay_address"] for t in tasks if t["overlay_address"] in page}
            if len(answered) == 3:
                break
        assert answered == {t["overlay_address"] for t in tasks}

        # The node's embedded DNS, from inside a task: NAME is the VIP, tasks.NAME the tasks.
        def lookup(name: str) -> str:
            argv = ["nsenter", f"--net=/run/netns/wt-{on_h1['id']}", "busybox", "nslookup", name, overlay["h1"]]
            result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return result.stdout if result.returncode == 0 else ""

        assert vip in wait_for(lambda: lookup("web"), timeout=10, message="web to resolve")
        assert all(t["overlay_address"] in lookup("tasks.web") for t in tasks)

        # A task that stops leaves the VIP's backends (within a second or so).
        doomed = next(t for t in tasks if t is not on_h1)
        node_of = {n["id"]: n["addr"] for n in workers()}
        doomed_host = next(h for h in hosts if h.ip == node_of[doomed["node_id"]])
        assert cli(first, "node", "update", "--availability", "drain", doomed["node_id"]).returncode == 0
        wait_for(
            lambda: doomed["overlay_address"] not in h2.run(["nft", "list", "table", "ip", "warren"]).stdout,
            timeout=15,
            message="the drained task to leave the VIP",
        )
        for _ in range(10):
            assert doomed["overlay_address"] not in fetch(h2, f"http://{vip}:8080/index.html")
        del doomed_host
        assert cli(first, "service", "rm", "web").returncode == 0
        wait_for(
            lambda: not any((Path("/run/netns") / f"wt-{t}").exists() for t in task_ids),
            timeout=30,
            message="the tasks' namespaces to go",
        )

        # kill -9 of an agent: its wireguard-go runs on, so the overlay keeps working; the
        # restarted agent adopts it.
        agents["h2"].kill()
        agents["h2"].wait()
        assert h1.ping(overlay["h2"]) and h2.ping(overlay["h3"])
        spawn(h2, "agent-h2-again.log", "worker", "start", "--data-dir", str(tmp_path / "agent-h2"))
        wait_for(lambda: "session" in (tmp_path / "agent-h2-again.log").read_text(), timeout=30, message="h2 back")
        assert h1.ping(overlay["h2"], attempts=3)

        # A wireguard-go that dies is restarted by its agent and configured again.
        wg_pid = next(
            int(pid)
            for pid in subprocess.run(["ip", "netns", "pids", h3.netns], capture_output=True, text=True).stdout.split()
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:3]
            == [b"wireguard-go", b"-f", lab.ifname(h3).encode()]
        )
        os.kill(wg_pid, 9)
        wait_for(lambda: not h1.ping(overlay["h3"]), timeout=10, message="h3's tunnel to go down")
        wait_for(lambda: h1.ping(overlay["h3"]), timeout=20, message="h3's agent to restart its wireguard-go")

        # A node that leaves the cluster leaves the mesh: its peer goes from every other node.
        h3_id = next(n["id"] for n in workers() if n["addr"] == h3.ip)
        assert cli(first, "node", "rm", "--force", h3_id).returncode == 0
        wait_for(lambda: not h1.ping(overlay["h3"]), timeout=15, message="h3 to leave h1's mesh")
        wait_for(lambda: not h2.ping(overlay["h3"]), timeout=15, message="h3 to leave h2's mesh")
        assert h1.ping(overlay["h2"], attempts=3)  # the others still talk
    except BaseException:
        for log in sorted(tmp_path.glob("*.log")):
            print(f"---- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        with contextlib.suppress(Exception):  # every task the cluster made, whatever happened
            listed = cli(hosts[0], "service", "ps", "web", "--all", "--format", "json")
            task_ids.extend(t["id"] for t in json.loads(listed.stdout))
        lab.destroy()
        remove_task_namespaces(task_ids)  # the agents remove them; these are the test's tasks'
