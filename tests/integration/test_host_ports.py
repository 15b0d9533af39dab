"""Host-mode published ports and UDP ingress ports, end to end (issue #14, ADR 46), on two
"hosts" (network namespaces) with wireguard-go, the exec runtime, and one module-scoped lab.

A host-mode port answers only on the nodes running a task of its service, each with its own
task; a third task on two nodes stays pending and says why; a rolling update (start-first by
default) goes stop-first and converges. A UDP ingress port answers from both nodes, reaching
both tasks. The responder (tests/fixtures/port_probe.py) answers with its task's own address.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.overlay_cluster import OverlayCluster
from tests.fixtures.overlay_lab import LabHost, OverlayLab, remove_task_namespaces
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="wireguard-go is not installed (make deps)"),
]

PROBE = str(Path(__file__).resolve().parents[1] / "fixtures" / "port_probe.py")
HOST_PORT, HOST_TARGET = 18081, 8081
UDP_PORT, UDP_TARGET = 15353, 5353


class Rig:
    def __init__(self, cluster: OverlayCluster) -> None:
        self.cluster = cluster
        self.task_ids: set[str] = set()

    def ok(self, *args: str) -> str:
        done = self.cluster.cli(*args)
        assert done.returncode == 0, f"warren {' '.join(args)}: {done.stderr}"
        return done.stdout

    def tasks(self, service: str) -> list[dict]:
        """The service's tasks desired running."""
        listed = self.cluster.cli("service", "ps", service, "--format", "json")
        found = json.loads(listed.stdout) if listed.returncode == 0 else []
        self.task_ids.update(t["id"] for t in found)
        return [t for t in found if t.get("desired_state") == "running"]

    def running(self, service: str, version: int | None = None) -> list[dict]:
        return [
            t
            for t in self.tasks(service)
            if t.get("state") == "running" and (version is None or int(t.get("spec_version", 0)) == version)
        ]

    def host_of(self, node_id: str) -> LabHost:
        return next(h for h in self.cluster.hosts if self.cluster.node_of(h)["id"] == node_id)

    def ask(self, client: LabHost, protocol: str, host: LabHost, port: int) -> str:
        """The address of the task that answered `host`'s port, asked from `client`; "" if none."""
        done = client.run([sys.executable, PROBE, "ask", protocol, host.ip, str(port)], timeout=10)
        return done.stdout.strip() if done.returncode == 0 else ""


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    cluster = OverlayCluster(OverlayLab(), tmp_path_factory.mktemp("hostports"))
    rig = Rig(cluster)
    try:
        cluster.start(2)
        yield rig
    finally:
        with contextlib.suppress(Exception):
            for service in ("hp", "udp"):
                rig.tasks(service)
        cluster.lab.destroy()
        remove_task_namespaces({*rig.task_ids, *cluster.recorded_task_ids()})


def test_a_host_mode_port_answers_only_where_its_tasks_run(rig: Rig) -> None:
    h1, h2 = rig.cluster.hosts
    rig.ok(
        *("service", "create", "hp", "--image", "none", "--no-resolve-image", "--detach"),
        *("--publish", f"mode=host,published={HOST_PORT},target={HOST_TARGET}"),
        *("--stop-grace-period", "1s", "--update-monitor", "1s"),
        *("--", sys.executable, PROBE, "serve", "tcp", str(HOST_TARGET)),
    )
    # One task: its node answers with it; the other node publishes nothing.
    (task,) = wait_for(lambda: (r := rig.running("hp")) and len(r) == 1 and r, timeout=60, message="hp running")
    home = rig.host_of(task["node_id"])
    other = h2 if home is h1 else h1
    address = task["overlay_address"]
    assert wait_for(lambda: rig.ask(other, "tcp", home, HOST_PORT) == address, timeout=20, message="home answers")
    assert all(rig.ask(home, "tcp", other, HOST_PORT) == "" for _ in range(3)), "the other node answered"
    inspect = rig.ok("service", "inspect", "hp")
    assert f"host {HOST_PORT}->{HOST_TARGET}/tcp on " in inspect, inspect

    # Two tasks: one per node, each node answering with its own.
    rig.ok("service", "scale", "hp=2", "--detach")
    both = wait_for(lambda: (r := rig.running("hp")) and len(r) == 2 and r, timeout=60, message="2 hp tasks")
    assert len({t["node_id"] for t in both}) == 2
    for t in both:
        host = rig.host_of(t["node_id"])
        peer = h2 if host is h1 else h1
        wait_for(
            lambda host=host, peer=peer, t=t: rig.ask(peer, "tcp", host, HOST_PORT) == t["overlay_address"],
            timeout=20,
            message=f"{host.name} to answer with its own task",
        )
    table = rig.ok("service", "ps", "hp")
    assert "PORTS" in table and f"{HOST_PORT}->{HOST_TARGET}/tcp" in table, table

    # Three tasks on two nodes: the third waits, and says why.
    rig.ok("service", "scale", "hp=3", "--detach")
    reason = wait_for(
        lambda: next((t["message"] for t in rig.tasks("hp") if t.get("state") == "pending" and t.get("message")), ""),
        timeout=30,
        message="a pending hp task with its reason",
    )
    assert f"host port {HOST_PORT}/tcp is taken on every eligible node" in reason, reason
    assert len(rig.running("hp")) == 2

    # A rolling update (start-first by default) runs stop-first and converges on both nodes.
    rig.ok("service", "scale", "hp=2", "--detach")
    wait_for(lambda: len(rig.tasks("hp")) == 2, timeout=30, message="back to 2 hp tasks")
    version = int(json.loads(rig.ok("service", "inspect", "hp", "--format", "json"))["version"])
    rig.ok("service", "update", "hp", "--force", "--detach")
    new = wait_for(
        lambda: (r := rig.running("hp", version + 1)) and len(r) == 2 and r, timeout=90, message="hp updated"
    )
    assert len({t["node_id"] for t in new}) == 2


def test_a_udp_ingress_port_answers_on_every_node_from_every_task(rig: Rig) -> None:
    h1, h2 = rig.cluster.hosts
    rig.ok(
        *("service", "create", "udp", "--image", "none", "--no-resolve-image", "--detach", "--replicas", "2"),
        *("--publish", f"{UDP_PORT}:{UDP_TARGET}/udp", "--stop-grace-period", "1s"),
        *("--", sys.executable, PROBE, "serve", "udp", str(UDP_TARGET)),
    )
    tasks = wait_for(lambda: (r := rig.running("udp")) and len(r) == 2 and r, timeout=60, message="2 udp tasks")
    addresses = {t["overlay_address"] for t in tasks}
    # Each node's port, asked from the other node, reaches both tasks (the routing mesh): the
    # choice is random per flow, and each ask is a new flow (a new source port).
    for client, node in ((h2, h1), (h1, h2)):
        seen: set[str] = set()
        wait_for(
            lambda client=client, node=node, seen=seen: (
                seen.add(rig.ask(client, "udp", node, UDP_PORT)) or addresses <= seen
            ),
            timeout=30,
            message=f"both udp tasks through {node.name}'s port (seen so far: {seen})",
        )
        assert seen - {""} == addresses


def test_bad_host_ports_are_refused_with_one_line_and_nothing_created(rig: Rig) -> None:
    """Through the real CLI and manager: exit 2 for bad input, 4 for a conflict; no service."""
    base = ("service", "create", "bad", "--image", "none", "--no-resolve-image", "--detach")
    cases = [
        (("--publish", "mode=host,target=80"), 2, "host-mode port 80/tcp needs a published port"),
        (("--publish", "mode=bridge,published=1,target=80"), 2, "mode must be ingress or host"),
        (("--publish", f"{HOST_PORT}:80"), 4, "in host mode; an ingress port takes the number on every node"),
        (
            ("--publish", f"mode=host,published={HOST_PORT},target=80", "--deploy-strategy", "blue-green"),
            2,
            "cannot be used with host-mode ports",
        ),
    ]
    if rig.cluster.cli("service", "inspect", "hp").returncode != 0:  # run alone: the conflict needs it
        rig.ok(
            *("service", "create", "hp", "--image", "none", "--no-resolve-image", "--detach", "--replicas", "0"),
            *("--publish", f"mode=host,published={HOST_PORT},target={HOST_TARGET}", "--", "true"),
        )
    for flags, code, text in cases:
        done = rig.cluster.cli(*base, *flags, "--", "true")
        assert (done.returncode, text in done.stderr) == (code, True), (flags, done.returncode, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert rig.cluster.cli("service", "inspect", "bad").returncode != 0
