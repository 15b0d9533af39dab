"""Agents build the overlay mesh themselves (issue #5, ADR 17): three "hosts" (network
namespaces on a bridge the test creates), a manager in the first, an agent with
`--wireguard userspace` in each. The managers push every node's subnet, public key and endpoint
to the agents, which converge their own wireguard-go; the test then pings each node's overlay
address from every other host, runs a global httpd service over it (task namespaces, VIP,
published port, DNS), kills a replica and an agent with kill -9 (the replica leaves the VIP and
its replacement joins it; a TCP connection and a ping every 0.1 s over the overlay survive the
agent's restart), kills a wireguard-go and removes a node. Everything is torn down in
`finally`, wireguard-go by the interface names the test chose, other processes by PID.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures import echo_probe
from tests.fixtures.overlay_cluster import OverlayCluster
from tests.fixtures.overlay_lab import LabHost, OverlayLab, remove_task_namespaces
from tests.integration.harness import REPO
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="wireguard-go is not installed (make deps)"),
]


def test_agents_converge_the_mesh_from_the_cluster_state(tmp_path: Path) -> None:
    lab = OverlayLab()
    cluster = OverlayCluster(lab, tmp_path)  # a manager and its agent in h1, agents in h2 and h3

    def cli(host: LabHost, *args: str) -> subprocess.CompletedProcess[str]:
        return cluster.cli(*args, host=host)

    def spawn(host: LabHost, log: str, *args: str) -> subprocess.Popen:
        return cluster.spawn(host, log, *args)

    workers = cluster.nodes
    task_ids: list[str] = []
    hosts: list[LabHost] = []
    try:
        cluster.start(3)
        hosts = cluster.hosts
        first = hosts[0]
        agents = cluster.agents
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
        # Each task serves its own address (what `ip addr` shows in its namespace) and its PID
        # (the shell's, which execs httpd), which tells a replacement from the task it replaces
        # even when it gets the same address back.
        www = tmp_path / "www"
        www.mkdir()
        serve = (
            'd="$WWW/$$" && mkdir -p "$d" && busybox ip -o -4 addr show eth0 > "$d/index.html"'
            ' && echo "pid=$$;" >> "$d/index.html" && exec busybox httpd -f -p 8080 -h "$d"'
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

        # The published port answers on every node's own address, from any task (routing mesh),
        # and on a node's loopback too (local and remote tasks alike).
        answered = set()
        for _ in range(30):
            for host, target in ((h2, h3.ip), (h1, h1.ip), (h3, h2.ip)):
                page = fetch(host, f"http://{target}:18080/index.html")
                answered |= {t["overlay_address"] for t in tasks if t["overlay_address"] in page}
            if len(answered) == 3:
                break
        assert answered == {t["overlay_address"] for t in tasks}
        from_loopback: set[str] = set()
        for _ in range(30):
            page = fetch(h2, "http://127.0.0.1:18080/index.html")
            from_loopback |= {t["overlay_address"] for t in tasks if t["overlay_address"] in page}
            if len(from_loopback) == 3:
                break
        assert from_loopback == {t["overlay_address"] for t in tasks}

        # The node's embedded DNS, from inside a task: NAME is the VIP, tasks.NAME the tasks.
        # The task resolves through its own /etc/resolv.conf (the agent mounted the node's over
        # it, in the task's mount namespace): enter the task's namespaces, name no server.
        task_pid = subprocess.run(
            ["ip", "netns", "pids", f"wt-{on_h1['id']}"], capture_output=True, text=True
        ).stdout.split()[0]

        def lookup(name: str) -> str:
            argv = ["nsenter", "--target", task_pid, "--net", "--mount", "busybox", "nslookup", name]
            result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return result.stdout if result.returncode == 0 else ""

        assert vip in wait_for(lambda: lookup("web"), timeout=10, message="web to resolve")
        assert all(t["overlay_address"] in lookup("tasks.web") for t in tasks)
        assert overlay["h1"] in lookup("web")  # the server that answered: the node's embedded DNS
        # ...and so `http://web:8080/` from the task on h1 reaches the tasks on the other hosts.
        by_name: set[str] = set()
        for _ in range(30):
            argv = ["nsenter", "--target", task_pid, "--net", "--mount", "busybox", "wget", "-q", "-O", "-"]
            page = subprocess.run([*argv, "http://web:8080/index.html"], capture_output=True, text=True, timeout=10)
            by_name |= {t["overlay_address"] for t in tasks if t["overlay_address"] in page.stdout}
            if len(by_name) == 3:
                break
        assert by_name == {t["overlay_address"] for t in tasks}

        def page_pid(page: str) -> int | None:
            found = re.search(r"pid=(\d+);", page)
            return int(found.group(1)) if found else None

        def serves(page: str, address: str) -> bool:
            return f" {address}/" in page  # `inet ADDRESS/24`, so .2 is not .20

        def in_vip_table(host: LabHost, address: str) -> bool:
            table = host.run(["nft", "list", "table", "ip", "warren"])
            assert table.returncode == 0, table.stderr
            return re.search(rf"(?<![\d.]){re.escape(address)}(?![\d.])", table.stdout) is not None

        def httpd_pids(task_id: str) -> list[int]:
            """The serving httpd processes in a task's namespace (one this test's cluster made).

            busybox httpd forks a child per connection (a health check, a fetch), with the same
            command line: a child of another httpd is a connection, not a server.
            """
            listed = subprocess.run(["ip", "netns", "pids", f"wt-{task_id}"], capture_output=True, text=True)
            parents: dict[int, int] = {}
            for pid in listed.stdout.split():
                with contextlib.suppress(OSError):  # a short-lived process that is already gone
                    if b"httpd" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                        # /proc/PID/stat: "pid (comm) state ppid ...", comm may hold spaces
                        stat = Path(f"/proc/{pid}/stat").read_text()
                        parents[int(pid)] = int(stat.rsplit(")", 1)[1].split()[1])
            return sorted(pid for pid, parent in parents.items() if parent not in parents)

        node_of = {n["id"]: n["addr"] for n in workers()}
        host_of = {t["id"]: next(h for h in hosts if h.ip == node_of[t["node_id"]]) for t in tasks}
        vip_url = f"http://{vip}:8080/index.html"

        # kill -9 of a running replica (h3's): its address leaves the VIP's backends on every
        # host, and the VIP, fetched from the other hosts, is answered by the live tasks only.
        victim = next(t for t in tasks if host_of[t["id"]] is h3)
        victim_pid = page_pid(fetch(h1, f"http://{victim['overlay_address']}:8080/index.html"))
        assert victim_pid is not None and httpd_pids(victim["id"]) == [victim_pid]
        os.kill(victim_pid, 9)
        left: set[str] = set()  # hosts seen without it (a replacement may bring the address back)

        def left_everywhere() -> bool:
            left.update(h.name for h in hosts if h.name not in left and not in_vip_table(h, victim["overlay_address"]))
            return len(left) == len(hosts)

        wait_for(left_everywhere, timeout=10, interval=0.05, message=f"the killed task to leave the VIP ({left})")
        for _ in range(10):
            for host in (h1, h2):
                page = fetch(host, vip_url)
                assert page and page_pid(page) != victim_pid, f"{host.name} fetched {page!r} from the VIP"

        # The restart policy (any, the default) replaces it on its node, and the replacement
        # (with the lowest free address of the node, so maybe the same one) joins the VIP.
        replacement = wait_for(
            lambda: next(
                (t for t in running_tasks() if t["node_id"] == victim["node_id"] and t["id"] != victim["id"]), None
            ),
            timeout=30,
            message="a healthy replacement of the killed task",
        )
        task_ids.append(replacement["id"])
        host_of[replacement["id"]] = h3
        wait_for(
            lambda: all(in_vip_table(h, replacement["overlay_address"]) for h in hosts),
            timeout=10,
            message="the replacement to join the VIP on every host",
        )
        replacement_pid = page_pid(fetch(h1, f"http://{replacement['overlay_address']}:8080/index.html"))
        assert replacement_pid is not None and replacement_pid != victim_pid
        assert httpd_pids(replacement["id"]) == [replacement_pid]
        wait_for(
            lambda: any(page_pid(fetch(h2, vip_url)) == replacement_pid for _ in range(5)),
            timeout=10,
            message="the VIP to send a connection to the replacement",
        )

        # Draining a node stops its task, which leaves the VIP's backends on every host.
        drained = next(t for t in tasks if host_of[t["id"]] is h2)
        assert cli(first, "node", "update", "--availability", "drain", drained["node_id"]).returncode == 0
        wait_for(
            lambda: not any(in_vip_table(h, drained["overlay_address"]) for h in hosts),
            timeout=15,
            message="the drained task to leave the VIP",
        )
        for _ in range(10):
            page = fetch(h3, vip_url)
            assert page and not serves(page, drained["overlay_address"]), f"h3 fetched {page!r} from the VIP"
        assert cli(first, "service", "rm", "web").returncode == 0
        wait_for(
            lambda: not any((Path("/run/netns") / f"wt-{t}").exists() for t in task_ids),
            timeout=30,
            message="the tasks' namespaces to go",
        )

        # kill -9 of an agent: its wireguard-go runs on, so the overlay keeps working, and the
        # restarted agent adopts it without touching the tunnel. A TCP connection from h2 to an
        # echo server on h1's overlay address stays up across the kill and the restart, and a
        # ping every 0.1 s from h3 to h2's overlay address loses nothing.
        python = ["env", f"PYTHONPATH={REPO}", sys.executable, "-m", "tests.fixtures.echo_probe"]
        echo_port, stop_probe, probe_result = "7007", tmp_path / "stop-probe", tmp_path / "probe.json"
        lab.spawn(h1, [*python, "serve", overlay["h1"], echo_port], log=tmp_path / "echo-server.log")
        connect = f"import socket; socket.create_connection(('{overlay['h1']}', {echo_port}), timeout=1).close()"
        wait_for(lambda: h2.run([sys.executable, "-c", connect]).returncode == 0, timeout=10, message="the server")
        ping = lab.spawn(h3, ["ping", "-n", "-i", "0.1", overlay["h2"]], log=tmp_path / "ping.log")
        pinging_since = time.monotonic()
        lab.spawn(h2, [*python, "probe", overlay["h1"], echo_port, str(stop_probe), str(probe_result)])
        wait_for(echo_probe.ready_file(probe_result).exists, timeout=10, message="the probe's first echo")
        agents["h2"].kill()
        agents["h2"].wait()
        assert h1.ping(overlay["h2"]) and h2.ping(overlay["h3"])
        again = tmp_path / "agent-h2-again.log"
        spawn(h2, again.name, "worker", "start", "--data-dir", str(cluster.data_dir(h2)))
        wait_for(lambda: "session" in again.read_text(), timeout=30, message="h2 back")
        # Its first converge and load-balancer pass after the session opened.
        wait_for(lambda: "service VIPs" in again.read_text(), timeout=15, message="h2's agent to converge")
        # and ten more pings after it (a second's worth)
        answered = len(re.findall(r"icmp_seq=", (tmp_path / "ping.log").read_text()))
        wait_for(
            lambda: len(re.findall(r"icmp_seq=", (tmp_path / "ping.log").read_text())) >= answered + 10,
            timeout=10,
            message="ten more ping replies",
        )
        os.kill(ping.pid, signal.SIGINT)  # ping prints its statistics and exits
        ping.wait(timeout=10)
        pinged_for = time.monotonic() - pinging_since
        ping_out = (tmp_path / "ping.log").read_text()
        replies = {int(seq) for seq in re.findall(r"icmp_seq=(\d+)", ping_out)}
        sent = re.search(r"(\d+) packets transmitted", ping_out)
        assert replies and sent, ping_out
        # No gap, and at most the last request unanswered (in flight when ping was stopped).
        assert replies == set(range(1, max(replies) + 1)), f"lost {sorted(set(range(1, max(replies))) - replies)}"
        assert max(replies) >= int(sent.group(1)) - 1, ping_out[-300:]
        assert max(replies) >= pinged_for * 5, f"{max(replies)} replies in {pinged_for:.1f}s"  # it kept pinging
        assert "overlay mesh: applied" not in again.read_text()  # the adopted tunnel needed nothing
        stop_probe.touch()  # the connection, one for the whole time, echoed every 50 ms throughout
        result = json.loads(wait_for(lambda: probe_result.exists() and probe_result.read_text(), timeout=35))
        assert result["error"] == "" and result["round_trips"] >= pinged_for * 5, result

        # A wireguard-go that dies is restarted by its agent and configured again.
        def argv_of(pid: str) -> list[bytes]:
            try:
                return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:  # a short-lived process of the host (a ping) that is already gone
                return []

        wg_pid = next(
            int(pid)
            for pid in subprocess.run(["ip", "netns", "pids", h3.netns], capture_output=True, text=True).stdout.split()
            if argv_of(pid)[:3] == [b"wireguard-go", b"-f", lab.ifname(h3).encode()]
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
        # The removed node's agent took its own overlay networking down before exiting.
        wait_for(
            lambda: (
                h3.run(["ip", "link", "show", lab.ifname(h3)]).returncode != 0
                and h3.run(["nft", "list", "table", "ip", "warren"]).returncode != 0
            ),
            timeout=30,
            message="h3's agent to remove its WireGuard interface and nftables table",
        )
        assert h3.run(["ip", "link", "show", "warren-br0"]).returncode != 0
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        with contextlib.suppress(Exception):  # every task the cluster made, whatever happened
            listed = cli(hosts[0], "service", "ps", "web", "--all", "--format", "json")
            task_ids.extend(t["id"] for t in json.loads(listed.stdout))
        lab.destroy()
        remove_task_namespaces({*task_ids, *cluster.recorded_task_ids()})  # the agents remove them
