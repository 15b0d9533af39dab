"""Networks that isolate (#14, ADR 47), for real: two netns hosts joined by wireguard-go, a Warren
node in each (the exec runtime, a namespace per task), real nftables. Services on network a, on
b, on both, and on an internal network; each check runs from inside a task's namespace.

One cluster for the module (CI time): the tests run in order and build on each other's services.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fixtures.overlay_cluster import OverlayCluster
from tests.fixtures.overlay_lab import LabHost, OverlayLab, remove_task_namespaces
from tests.waiting import wait_for
from warren.network import links

pytestmark = pytest.mark.integration

# Each task serves its own address on 8080 (an httpd in the exec runtime's namespace).
SERVE = (
    'd="$WWW/$$" && mkdir -p "$d" && busybox ip -o -4 addr show eth0 > "$d/index.html"'
    ' && exec busybox httpd -f -p 8080 -h "$d"'
)
# "Outside the cluster": a namespace of the test's own, routed from h1 only (over a veth).
OUTSIDE, OUTSIDE_GATEWAY, OUTSIDE_PORT = "10.216.0.2", "10.216.0.1", 18090


def _outside(lab: OverlayLab, root: Path) -> None:
    """A namespace beside h1 with an httpd on OUTSIDE, which routes the overlay back via h1."""
    h1, name = lab.hosts[0], f"{lab.prefix}-out"
    links.create_netns(name)
    lab.stoppers.append(lambda: links.remove_netns(name))
    links.add_veth(f"{lab.prefix}o", "eth0", h1.netns, name)
    links.add_address(f"{lab.prefix}o", f"{OUTSIDE_GATEWAY}/30", h1.netns)
    links.link_up(f"{lab.prefix}o", h1.netns)
    links.add_address("eth0", f"{OUTSIDE}/30", name)
    links.link_up("eth0", name)
    links.link_up("lo", name)
    subprocess.run(["ip", "-n", name, "route", "add", "10.0.0.0/8", "via", OUTSIDE_GATEWAY], check=True)
    www = root / "outside"
    www.mkdir()
    (www / "index.html").write_text("outside\n")
    for host in (LabHost("out", name, OUTSIDE), h1):  # and on h1's own underlay address
        lab.spawn(host, ["busybox", "httpd", "-f", "-p", f"{host.ip}:{OUTSIDE_PORT}", "-h", str(www)])


class Rig:
    def __init__(self, cluster: OverlayCluster, www: Path) -> None:
        self.cluster = cluster
        self.www = www
        self.task_ids: set[str] = set()
        self._subnets: dict[str, ipaddress.IPv4Network] = {}  # host underlay address -> its node's subnet
        self._running: dict[str, dict[str, dict]] = {}  # services' tasks stay put: each CLI call costs ~1 s
        self._vips: dict[str, str] = {}

    @property
    def hosts(self) -> list[LabHost]:
        return self.cluster.hosts

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cluster.cli(*args)

    def ok(self, *args: str) -> str:
        result = self.cli(*args)
        assert result.returncode == 0, f"warren {' '.join(args)}: {result.stderr}"
        return result.stdout

    def service(self, name: str, *flags: str) -> None:
        self.ok(
            *("service", "create", name, "--image", "busybox", "--mode", "global", "--detach"),
            *("--env", f"WWW={self.www}", *flags, "--", "/bin/sh", "-c", SERVE),
        )

    def tasks(self, service: str) -> dict[str, dict]:
        """The service's running tasks with an address, by host name (a global service: one each)."""
        result = self.cli("service", "ps", service, "--format", "json")
        listed = json.loads(result.stdout) if result.returncode == 0 else []
        running = [t for t in listed if t["state"] == "running" and t["overlay_address"]]
        if not self._subnets:
            self._subnets = {n["addr"]: ipaddress.IPv4Network(n["overlay_subnet"]) for n in self.cluster.nodes()}
        by_host = {}
        for task in running:
            address = ipaddress.IPv4Address(task["overlay_address"])
            host = next(h for h in self.hosts if address in self._subnets[h.ip])
            by_host[host.name] = task
            self.task_ids.add(task["id"])
        return by_host

    def running(self, service: str) -> dict[str, dict]:
        if service not in self._running:
            self._running[service] = wait_for(
                lambda: (t := self.tasks(service)) and len(t) == len(self.hosts) and t,
                timeout=30,
                message=f"a running {service} task on every host",
            )
        return self._running[service]

    def vip(self, service: str) -> str:
        if service not in self._vips:
            self._vips[service] = json.loads(self.ok("service", "inspect", service, "--format", "json"))["vip"]
        return self._vips[service]

    @staticmethod
    def fetch(task: dict, address: str, port: int = 8080) -> bool:
        """Whether the task reaches address:port (an HTTP GET from inside its namespace)."""
        argv = ["nsenter", f"--net=/run/netns/wt-{task['id']}", "busybox", "timeout", "2"]
        argv += ["busybox", "wget", "-q", "-O", "-", f"http://{address}:{port}/index.html"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).returncode == 0

    @staticmethod
    def fetch_by_name(task: dict, name: str) -> str:
        """The page `http://NAME:8080/` gives the task, resolved through the task's own
        resolv.conf (in its mount namespace: the node's DNS); "" if it cannot."""
        pid = subprocess.run(["ip", "netns", "pids", f"wt-{task['id']}"], capture_output=True, text=True).stdout.split()
        argv = ["nsenter", "--target", pid[0], "--net", "--mount", "busybox", "timeout", "2", "busybox", "wget"]
        result = subprocess.run(
            [*argv, "-q", "-O", "-", f"http://{name}:8080/index.html"], capture_output=True, text=True
        )
        return result.stdout if result.returncode == 0 else ""

    def resolve(self, task: dict, name: str) -> bool:
        """Whether the task's node's DNS gives `name` to the task (asked from its address)."""
        gateway = str(ipaddress.ip_interface(f"{task['overlay_address']}/24").network.network_address + 1)
        argv = ["nsenter", f"--net=/run/netns/wt-{task['id']}", "busybox", "nslookup", name, gateway]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return result.returncode == 0 and "Name:" in result.stdout


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("networks")
    lab = OverlayLab()
    cluster = OverlayCluster(lab, root)
    www = root / "www"
    www.mkdir()
    rig = Rig(cluster, www)
    try:
        cluster.start(2)
        _outside(lab, root)
        for name, flags in (("a", ()), ("b", ()), ("sealed", ("--internal",))):
            rig.ok("network", "create", name, *flags)
        rig.service("sa", "--network", "a,alias=alpha")
        rig.service("sb", "--network", "b", "--publish", "18081:8080")
        rig.service("sab", "--network", "a", "--network", "b")
        rig.service("si", "--network", "sealed")
        yield rig
    except BaseException:
        print(cluster.logs(), file=sys.stderr)
        raise
    finally:
        lab.destroy()
        remove_task_namespaces({*rig.task_ids, *cluster.recorded_task_ids()})


def test_tasks_reach_only_the_tasks_they_share_a_network_with(rig: Rig) -> None:
    sa, sb, sab = rig.running("sa"), rig.running("sb"), rig.running("sab")
    a1 = sa["h1"]
    address = {name: {h: t["overlay_address"] for h, t in tasks.items()} for name, tasks in (("sa", sa), ("sb", sb))}
    # a <-> a, by task address across hosts and by VIP; the both-service reaches a and b.
    wait_for(lambda: rig.fetch(a1, address["sa"]["h2"]), timeout=20, message="sa on h1 to reach sa on h2")
    assert rig.fetch(sa["h2"], address["sa"]["h1"])
    assert rig.fetch(a1, rig.vip("sa"))
    for tasks in (address["sa"], address["sb"]):
        for target in tasks.values():
            assert rig.fetch(sab["h1"], target) and rig.fetch(sab["h2"], target)
    assert rig.fetch(sab["h2"], rig.vip("sb")) and rig.fetch(sab["h2"], rig.vip("sa"))
    # a -/-> b: the task on the same host, on the other host, and the VIP; and back (at once:
    # each refusal is a dropped connection that waits out its timeout).
    refused = [
        (a1, address["sb"]["h1"]),
        (a1, address["sb"]["h2"]),
        (a1, rig.vip("sb")),
        (sb["h2"], address["sa"]["h2"]),
        (sb["h1"], address["sa"]["h2"]),
        (sb["h1"], rig.vip("sa")),
    ]
    with ThreadPoolExecutor(len(refused)) as pool:
        reached = list(pool.map(lambda pair: rig.fetch(*pair), refused))
    assert reached == [False] * len(refused), refused


def test_names_resolve_only_for_tasks_sharing_a_network(rig: Rig) -> None:
    sa, sb, sab = rig.running("sa"), rig.running("sb"), rig.running("sab")
    for task in (sa["h1"], sa["h2"]):
        assert wait_for(lambda task=task: rig.resolve(task, "sa"), timeout=10, message="sa to resolve sa")
        assert rig.resolve(task, "tasks.sa") and rig.resolve(task, "alpha") and rig.resolve(task, "sab")
        assert not rig.resolve(task, "sb") and not rig.resolve(task, "tasks.sb")
    assert not rig.resolve(sb["h1"], "sa") and not rig.resolve(sb["h1"], "alpha")
    assert rig.resolve(sb["h1"], "sb") and rig.resolve(sab["h2"], "sb") and rig.resolve(sab["h2"], "alpha")
    # ...and so a task connects by name to its own network's services, not to the others'.
    assert "inet 10." in rig.fetch_by_name(sa["h1"], "alpha") and "inet 10." in rig.fetch_by_name(sab["h1"], "sb")
    assert rig.fetch_by_name(sa["h1"], "sb") == "" and rig.fetch_by_name(sb["h2"], "sa") == ""


def test_an_internal_network_has_no_route_out_yet_its_tasks_reach_each_other(rig: Rig) -> None:
    si, sa = rig.running("si"), rig.running("sa")
    h1 = rig.hosts[0].ip
    for target in (OUTSIDE, h1):
        wait_for(lambda t=target: rig.fetch(sa["h1"], t, OUTSIDE_PORT), timeout=10, message=f"sa to reach {target}")
    wait_for(lambda: rig.fetch(si["h1"], si["h2"]["overlay_address"]), timeout=20, message="si on h1 to reach si on h2")
    assert not rig.fetch(si["h1"], OUTSIDE, OUTSIDE_PORT)
    assert not rig.fetch(si["h1"], h1, OUTSIDE_PORT)  # nor its node's own other addresses
    assert rig.resolve(si["h1"], "si")


def test_a_published_port_answers_on_every_node_whatever_the_network(rig: Rig) -> None:
    rig.running("sb")
    for host in rig.hosts:
        for address in (host.ip, "127.0.0.1"):
            argv = ["busybox", "timeout", "3", "busybox", "wget", "-q", "-O", "-", f"http://{address}:18081/"]
            assert wait_for(lambda host=host, argv=argv: host.run(argv).returncode == 0, timeout=15, message="18081")


def test_removing_networks_leaves_no_rule_and_no_name(rig: Rig) -> None:
    sa = rig.running("sa")
    sa_addresses = [t["overlay_address"] for t in sa.values()]
    refused = rig.cli("network", "rm", "a")
    assert refused.returncode == 4 and "in use by service sa, sab" in refused.stderr, refused.stderr
    rig.ok("service", "rm", "sa", "sab")
    wait_for(lambda: rig.cli("network", "rm", "a").returncode == 0, timeout=30, message="network a to go")
    assert "a" not in rig.ok("network", "ls", "-q").split()

    def gone(host: LabHost) -> bool:
        table = host.run(["nft", "list", "table", "ip", "warren"]).stdout
        return not any(f"{address}," in table or f"{address} " in table for address in sa_addresses)

    for host in rig.hosts:
        wait_for(lambda host=host: gone(host), timeout=20, message=f"sa's rules to leave {host.name}")
    gateway = rig.cluster.overlay_address(rig.hosts[0])
    assert "Name:" in rig.hosts[0].run(["busybox", "nslookup", "sb", gateway]).stdout  # the node sees every network
    for name in ("sa", "alpha", "tasks.sab"):  # ... and none of a's names is left
        asked = rig.hosts[0].run(["busybox", "nslookup", name, gateway])
        assert "Name:" not in asked.stdout, asked.stdout
