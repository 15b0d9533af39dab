"""Nothing a node's agent made for its tasks is left behind (issue #10, item 5; ADR 23).

A manager in one lab host, an agent in another running its tasks through a real containerd in
that host's namespace. A crash-looping service and one whose image cannot be pulled run for a
while and are removed: the node then holds no task namespace, veth, cgroup, mount or container
of theirs, and none accumulated meanwhile. A service is left running, the agent is killed with
kill -9, and `warren worker teardown` removes its containers, their cgroups and mounts, the task
namespaces and veths, and the node's overlay. A second node in the manager's namespace is refused.

Everything runs in namespaces the lab creates; processes are stopped by PID, containers through
the test's own containerd, wireguard-go by the lab's interface names, in `finally`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.fixtures import containerd as _containerd
from tests.fixtures.containerd import ContainerdDaemon
from tests.fixtures.images import BusyboxImage
from tests.fixtures.overlay_cluster import OverlayCluster
from tests.fixtures.overlay_lab import LabHost, OverlayLab, remove_task_namespaces
from tests.fixtures.plugin import unavailable
from tests.integration.harness import REPO
from tests.waiting import wait_for
from warren.network import links, tasknet
from warren.runtime.containerd.driver import ContainerdRuntime

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="wireguard-go is not installed (make deps)"),
]

IMAGE = "warren.test/busybox:leaks"
UNPULLABLE = "127.0.0.1:9/nothing/here:1"  # the loopback of the agent's own namespace: refused at once
ON_H2 = ("--constraint", "node.labels.leaks==yes")


def cgroup_dirs(parent: str, task_ids: set[str]) -> list[str]:
    """Cgroups named after these tasks under the daemon's cgroup parent, in every hierarchy."""
    top = Path("/sys/fs/cgroup")
    hierarchies = [top, *(d for d in top.iterdir() if d.is_dir() and not d.is_symlink())] if top.is_dir() else []
    found = (h / parent.strip("/") / t for h in hierarchies for t in task_ids)
    return [str(d) for d in found if d.exists()]


def leftovers(host: LabHost, data_dir: Path, daemon: ContainerdDaemon, task_ids: set[str]) -> dict[str, list[str]]:
    """What the node still holds of these tasks (and any task veth at all: the host is the test's)."""
    names = host.run(["ip", "-o", "link", "show"]).stdout
    veths = sorted({line.split(": ")[1].split("@")[0] for line in names.splitlines() if ": wv" in line})
    mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    runtime = ContainerdRuntime(daemon.socket, daemon.base / "check-state", cgroup_parent=daemon.cgroup_parent)
    try:
        containers = [c.runtime_id for c in runtime.list() if c.runtime_id in task_ids]
    finally:
        runtime.close()
    found = {
        "namespaces": sorted(t for t in task_ids if (links.NETNS_DIR / tasknet.netns_name(t)).exists()),
        "veths": veths,
        "ledger": tasknet.recorded(tasknet.ledger_dir(data_dir)),
        "cgroups": cgroup_dirs(daemon.cgroup_parent, task_ids),
        "mounts": [line for line in mountinfo if any(t in line for t in task_ids)],
        "containers": containers,
    }
    return {what: items for what, items in found.items() if items}


def test_task_networks_cgroups_and_mounts_go_with_their_tasks_and_with_teardown(
    tmp_path: Path, busybox_image: BusyboxImage
) -> None:
    unavailable(_containerd.missing_reason())  # fails instead under WARREN_REQUIRE_CONTAINERD=1
    lab = OverlayLab()
    cluster = OverlayCluster(lab, tmp_path)
    daemon = ContainerdDaemon(netns=f"{lab.prefix}-h2")  # h2's, the host the tasks run on
    task_ids: set[str] = set()

    def start_containerd(hosts: list[LabHost]) -> None:
        daemon.start()
        runtime = ContainerdRuntime(daemon.socket, tmp_path / "import-state")
        try:
            assert runtime.import_archive(busybox_image.archive, IMAGE) == [IMAGE]
        finally:
            runtime.close()

    def tasks_of(name: str) -> list[dict]:
        listed = cluster.cli("service", "ps", name, "--all", "--format", "json")
        tasks = json.loads(listed.stdout) if listed.returncode == 0 else []
        task_ids.update(t["id"] for t in tasks)
        return tasks

    def ended(tasks: list[dict]) -> list[dict]:
        return [t for t in tasks if t["state"] in ("failed", "rejected", "complete", "shutdown")]

    try:
        cluster.start(
            2,
            agent_args=(
                *("--runtime", "containerd", "--containerd-socket", daemon.socket),
                *("--cgroup-parent", daemon.cgroup_parent, "--label", "leaks=yes"),
            ),
            before=start_containerd,
        )
        h1, h2 = cluster.hosts
        data_dir = cluster.data_dir(h2)

        # A second node in the manager's namespace is refused before it joins or writes anything,
        # naming the node whose overlay is there; so is a second manager.
        wait_for(lambda: h1.run(["ip", "link", "show", "warren-br0"]).returncode == 0, message="h1's bridge")
        token = cluster.cli("cluster", "join-token", "worker", "-q").stdout.strip()
        intruder = tmp_path / "intruder"
        joined = cluster.cli(
            *("cluster", "join", "--token", token, f"{h1.ip}:4244", "--data-dir", str(intruder)),
            *("--runtime", "exec", "--wireguard", "userspace", "--wireguard-interface", lab.ifname(h1, "x")),
            host=h1,
        )
        assert joined.returncode == 4, joined.stdout + joined.stderr
        message = joined.stderr.strip()
        assert f"the Warren node in {cluster.data_dir(h1)}" in message and "bridge warren-br0" in message, message
        assert "one Warren node per network namespace" in message and len(message.splitlines()) == 1, message
        assert not (intruder / "certs").exists() and len(cluster.nodes()) == 2
        other_manager = cluster.cli(
            *("cluster", "init", "--data-dir", str(tmp_path / "manager2"), "--listen-addr", f"{h1.ip}:5252"),
            *("--runtime", "exec", "--wireguard", "userspace", "--wireguard-interface", lab.ifname(h1, "y")),
            host=h1,
        )
        assert other_manager.returncode != 0 and f"the Warren node in {cluster.data_dir(h1)}" in (
            other_manager.stdout + other_manager.stderr
        )
        assert not (tmp_path / "manager2" / "manager.json").exists()

        # A crash loop (each run a new task, with a container) and an image that cannot be pulled
        # (each task fails while preparing, after its retries, and never has a container).
        for name, image, command in (("crash", IMAGE, "exit 3"), ("nopull", UNPULLABLE, "true")):
            created = cluster.cli(
                *("service", "create", name, "--image", image, "--restart-delay", "1s", *ON_H2, "--detach"),
                *("--", "sh", "-c", command),
            )
            assert created.returncode == 0, created.stderr
        wait_for(
            lambda: len(ended(tasks_of("crash"))) >= 4 and len(ended(tasks_of("nopull"))) >= 2,
            timeout=120,
            interval=1.0,
            message="4 crashed tasks and 2 that could not pull their image",
        )
        # Retries do not accumulate: every ended task's namespace is gone (released as it ends).
        wait_for(
            lambda: (
                not [
                    t["id"]
                    for t in ended(tasks_of("crash")) + ended(tasks_of("nopull"))
                    if (links.NETNS_DIR / tasknet.netns_name(t["id"])).exists()
                ]
            ),
            timeout=15,
            message="the ended tasks' namespaces to go",
        )
        assert any("pull" in t["error"] or "registry" in t["error"] for t in ended(tasks_of("nopull")))
        for name in ("crash", "nopull"):
            assert cluster.cli("service", "rm", name).returncode == 0
        removed = set(task_ids)
        wait_for(lambda: not leftovers(h2, data_dir, daemon, removed), timeout=30, message="nothing left of them")

        # kill -9 of the agent with tasks running; then the node leaves: `worker teardown`.
        created = cluster.cli(
            *("service", "create", "sleeper", "--image", IMAGE, "--replicas", "2", *ON_H2, "--detach"),
            *("--limit-memory", "64M", "--stop-grace-period", "1s", "--", "sleep", "100000"),
        )
        assert created.returncode == 0, created.stderr
        wait_for(
            lambda: len([t for t in tasks_of("sleeper") if t["state"] == "running"]) == 2,
            timeout=60,
            message="2 running sleepers",
        )
        sleepers = {t["id"] for t in tasks_of("sleeper") if t["state"] == "running"}
        held = leftovers(h2, data_dir, daemon, sleepers)
        assert len(held["namespaces"]) == 2 and len(held["veths"]) == 2 and len(held["containers"]) == 2, held
        assert held["cgroups"] and held["mounts"], held  # what teardown must remove
        cluster.agents["h2"].kill()
        cluster.agents["h2"].wait()
        assert len(leftovers(h2, data_dir, daemon, sleepers)["containers"]) == 2  # tasks outlive the agent
        teardown = cluster.cli("worker", "teardown", "--data-dir", str(data_dir), host=h2)
        assert teardown.returncode == 0, teardown.stdout + teardown.stderr
        for task_id in sleepers:
            assert f"removed the container {task_id} of task {task_id}" in teardown.stdout, teardown.stdout
            assert f"removed the network namespace wt-{task_id}" in teardown.stdout, teardown.stdout
        assert not leftovers(h2, data_dir, daemon, sleepers | removed)
        assert h2.run(["ip", "link", "show", "warren-br0"]).returncode != 0
        assert h2.run(["ip", "link", "show", lab.ifname(h2)]).returncode != 0
        assert h2.run(["nft", "list", "table", "ip", "warren"]).returncode != 0
        again = cluster.cli("worker", "teardown", "--data-dir", str(data_dir), host=h2)
        assert again.returncode == 0 and again.stdout.strip() == "nothing to remove", again.stdout
    except BaseException:
        print(cluster.logs())
        print(f"---- containerd.log\n{daemon.log_tail()}")
        raise
    finally:
        with contextlib.suppress(Exception):
            for name in ("crash", "nopull", "sleeper"):
                tasks_of(name)
        lab.destroy()
        daemon.stop()  # kills and deletes what is left through the API, then by PID
        remove_task_namespaces(task_ids)


_OWNERS = """
import sys
from pathlib import Path
from warren.agent import overlay
from warren.network import lb, owner, tasknet

a, b = Path(sys.argv[1]), Path(sys.argv[2])
step = sys.argv[3]
if step == "claim":
    owner.claim(a, "wgnone0")
    tasknet.TaskNetworkManager.apply_nft(lb.ruleset([], owner=owner.tag(a)))
    try:
        owner.claim(b, "wgnone0")
    except owner.OverlayInUse as exc:
        print(exc)
else:
    print("\\n".join(overlay.teardown(a if step == "teardown-a" else b)))
"""


def test_a_teardown_leaves_another_nodes_bridge_and_table(tmp_path: Path) -> None:
    lab = OverlayLab()
    a, b = tmp_path / "node-a", tmp_path / "node-b"
    try:
        (host,) = lab.create(1)

        def run(step: str) -> str:
            argv = [sys.executable, "-c", _OWNERS, str(a), str(b), step]
            done = host.run(["env", f"PYTHONPATH={REPO}", *argv], timeout=30)
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        refused = run("claim")
        assert refused.startswith(f"this network namespace already holds the overlay of the Warren node in {a} ")
        assert "bridge warren-br0" in refused and "nftables table warren" in refused, refused
        assert run("teardown-b") == "\n".join(
            [
                f"left the task bridge warren-br0: it belongs to the Warren node in {a}",
                f"left the nftables table warren: it belongs to the Warren node in {a}",
            ]
        )
        assert f"alias warren:{a}" in host.run(["ip", "link", "show", "warren-br0"]).stdout
        assert host.run(["nft", "list", "table", "ip", "warren"]).returncode == 0
        assert run("teardown-a") == "removed the task bridge warren-br0\nremoved the nftables table warren"
        assert host.run(["ip", "link", "show", "warren-br0"]).returncode != 0
    finally:
        lab.destroy()


_EXEC_NODE = """
import json, sys
from pathlib import Path
from warren.agent import settings
from warren.agent.runtime import ContainerSpec
from warren.model import Resources
from warren.network import owner, tasknet
from warren.runtime.exec import ExecRuntime

data, task_id = Path(sys.argv[1]), sys.argv[2]
settings.save(data, settings.AgentSettings(runtime="exec", wireguard="userspace"))
networks = tasknet.TaskNetworkManager("10.200.9.0/24", tasknet.ledger_dir(data), owner.tag(data))
netns = networks.attach(task_id, "10.200.9.2")
runtime = ExecRuntime(data / "exec")
spec = ContainerSpec(
    task_id=task_id, image="exec", command=("sleep", "100000"), netns=netns,
    limits=Resources(memory_bytes=64 << 20), log_path=str(data / "task.log"),
)
runtime.start(runtime.prepare(spec))
record = json.loads((data / "exec" / task_id / "record.json").read_text())
print(json.dumps({"pid": runtime.status(task_id).pid, "cgroups": record["cgroups"]}))
"""


def test_teardown_after_the_agent_died_removes_an_exec_tasks_process_cgroup_and_namespace(tmp_path: Path) -> None:
    """The exec runtime's side of `worker teardown`: what an agent killed with kill -9 left of a
    task (its process, in its own session; its memory cgroup; its namespace and veth)."""
    lab = OverlayLab()
    data, task_id = tmp_path / "node", f"tl{os.urandom(6).hex()}"
    pid = 0
    try:
        (host,) = lab.create(1)
        made = host.run(["env", f"PYTHONPATH={REPO}", sys.executable, "-c", _EXEC_NODE, str(data), task_id], 30)
        assert made.returncode == 0, made.stderr
        left = json.loads(made.stdout)  # the process that made them is gone: as after a kill -9
        pid, cgroups = left["pid"], left["cgroups"]
        assert Path(f"/proc/{pid}").exists() and (links.NETNS_DIR / f"wt-{task_id}").exists()
        if not cgroups:
            pytest.skip("this host gives the exec runtime no cgroups")
        assert all(Path(c).is_dir() for c in cgroups)

        argv = [sys.executable, "-m", "warren.cli.main", "worker", "teardown", "--data-dir", str(data)]
        done = host.run(["env", f"PYTHONPATH={REPO}", *argv], 60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.splitlines()[:2] == [
            f"removed the container {task_id} of task {task_id}",
            f"removed the network namespace wt-{task_id} and veth wv{task_id[:13]}",
        ], done.stdout
        assert "removed the task bridge warren-br0" in done.stdout
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=10, message="the task's process to end")
        assert not any(Path(c).exists() for c in cgroups)
        assert not (links.NETNS_DIR / f"wt-{task_id}").exists()
        assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if task_id in line]
        assert "wv" not in host.run(["ip", "-o", "link", "show"]).stdout
        assert tasknet.recorded(tasknet.ledger_dir(data)) == []
    finally:
        with contextlib.suppress(OSError):  # still the test's sleep (its pid not reused): the teardown failed
            if pid and Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x00100000\x00":
                os.kill(pid, 9)
        lab.destroy()
        remove_task_namespaces([task_id])
