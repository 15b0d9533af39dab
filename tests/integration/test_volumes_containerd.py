"""Volumes and mounts on real containers (issue #13, ADR 40), on the deployment rig: a one-node
cluster in its own network namespace with its own containerd and registry.

One service mounts a named volume, a read-only bind of a host directory and a tmpfs. From inside
its container it records what it sees into the volume, which the test reads on the host: the
bind's file, the refusal to write to it, the tmpfs with its size and mode. Then the data must
survive the task being killed, a service update, and a "reboot" of the node (its agent killed
with -9, every container killed, containerd restarted, the agent started again). `volume rm` is
refused while the service exists and deletes the data once it is gone.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.fixtures.deploy_rig import DeployRig
from tests.waiting import wait_for
from warren.runtime.containerd.driver import ContainerdRuntime

pytestmark = pytest.mark.integration

# Each start appends a line to the volume, then records what the task sees of its mounts.
SCRIPT = (
    "date +%s%N >> /data/starts; "
    "cat /in/hello > /data/bind-seen; "
    "touch /in/written 2> /data/ro-error || true; "
    "grep ' /scratch ' /proc/mounts > /data/tmpfs; "
    "exec sleep 3600"
)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _running(rig: DeployRig, service: str) -> list[dict]:
    return [t for t in rig.tasks(service) if (t["state"], t["desired_state"]) == ("running", "running")]


def _restart_node(rig: DeployRig) -> None:
    """A reboot, as far as the node is concerned: its manager and agent killed with -9, every
    container killed, containerd stopped and started on the same root, then the same
    `cluster init`, which resumes the cluster and runs the agent again."""
    manager_pid = rig.lab.pids[0]
    os.kill(manager_pid, signal.SIGKILL)
    os.waitpid(manager_pid, 0)
    rig.daemon.reboot()
    host = rig.host
    rig.cluster.spawn(
        host,
        "manager.log",
        *("cluster", "init", "--data-dir", str(rig.root / "manager"), "--listen-addr", f"{host.ip}:4242"),
        *("--heartbeat-period", "1s", "--wireguard", "userspace", "--wireguard-interface", rig.lab.ifname(host)),
        *("--runtime", "containerd", "--containerd-socket", rig.daemon.socket),
        *("--cgroup-parent", rig.daemon.cgroup_parent),
    )
    wait_for(lambda: rig.cli("cluster", "info").returncode == 0, timeout=30, message="the manager again")


def test_volume_bind_and_tmpfs_in_a_container_and_the_data_outlives_kill_update_and_reboot(
    rig: DeployRig, tmp_path: Path
) -> None:
    shared = tmp_path / "in"
    shared.mkdir()
    (shared / "hello").write_text("hello from the host\n")
    data = rig.cluster.data_dir(rig.host) / "volumes" / "db-data" / "data"

    rig.ok(
        *("service", "create", "db", "--image", rig.image("v1"), "--restart-delay", "100ms"),
        *("--mount", "type=volume,source=db-data,target=/data"),
        *("--mount", f"type=bind,source={shared},target=/in,readonly"),
        *("--mount", "type=tmpfs,target=/scratch,tmpfs-size=1M,tmpfs-mode=1770"),
        *("--stop-grace-period", "1s", "--timeout", "120s", "--", "sh", "-c", SCRIPT),
    )
    wait_for(lambda: len(_lines(data / "starts")) == 1 and (data / "tmpfs").exists(), timeout=60, message="a start")
    assert (data / "bind-seen").read_text() == "hello from the host\n"
    assert "Read-only file system" in (data / "ro-error").read_text()
    assert not (shared / "written").exists()
    tmpfs = (data / "tmpfs").read_text().split()
    assert tmpfs[:3] == ["tmpfs", "/scratch", "tmpfs"] and {"size=1024k", "mode=1770"} <= set(tmpfs[3].split(","))
    volumes = json.loads(rig.ok("volume", "ls", "--format", "json"))
    assert [(v["name"], v["node_hostname"] != "", v["used_by"]) for v in volumes] == [("db-data", True, ["db"])]

    # The task killed: its replacement finds the data.
    (task,) = _running(rig, "db")
    runtime = ContainerdRuntime(rig.daemon.socket, tmp_path / "check", cgroup_parent=rig.daemon.cgroup_parent)
    try:
        os.kill(runtime.status(task["id"]).pid, signal.SIGKILL)
    finally:
        runtime.close()
    wait_for(lambda: len(_lines(data / "starts")) == 2, timeout=60, message="the restarted task")
    wait_for(lambda: [t["id"] for t in _running(rig, "db")] not in ([], [task["id"]]), timeout=30)

    # A service update: the new version's task finds it too.
    rig.ok("service", "update", "db", "--env-add", "VERSION=2", "--detach")
    wait_for(lambda: len(_lines(data / "starts")) == 3, timeout=60, message="the updated task")

    # The node "reboots": agent and containerd restarted, every container gone.
    before = _lines(data / "starts")
    _restart_node(rig)
    wait_for(lambda: len(_lines(data / "starts")) == 4, timeout=90, message="the task after the reboot")
    assert _lines(data / "starts")[:3] == before

    # Deleted only by `volume rm`, which waits for the service to go.
    refused = rig.cli("volume", "rm", "db-data")
    assert refused.returncode == 4 and "volume db-data is in use by service db" in refused.stderr
    rig.ok("service", "rm", "db")
    wait_for(lambda: rig.cli("volume", "rm", "db-data").returncode == 0, timeout=60, message="volume rm")
    wait_for(lambda: not data.parent.exists(), timeout=30, message="the agent to delete the volume's data")
