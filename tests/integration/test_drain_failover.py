"""A leader failover in the middle of a drain (#12, ADR 33): the new leader still sends the stop.

The three-node deployment rig (tests/fixtures/deploy_rig.py: three lab hosts, each in its own
network namespace with its own containerd and agent, over the WireGuard overlay), with the two
agents promoted to managers: three voting managers. A web service of 2 replicas, pinned to a
node that is not the leader's, with `--stop-drain 6s` so that a task stays draining long enough
to kill the leader in the middle: a start-first update (v1 -> v2) puts the first old task
draining once its replacement is ready; the leader is then SIGKILLed (by PID). The new leader
must stop that task, and not before its drain period (the drain began under the old leader and
is in the replicated state), nor long after: the period, plus at most the bound a node that
does not confirm holds a stop (3 heartbeat periods), plus the election. The update completes.

Everything the rig starts is stopped by PID, by containerd's API or by the names it made.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.fixtures.deploy_rig import DeployRig
from tests.fixtures.images import web_page
from tests.fixtures.overlay_lab import LabHost
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

STOP_DRAIN = 6.0  # the bound (3 s) must not be what ends the wait: the check below tells them apart
POLL_SLACK = 2.0  # how late a `service ps` from the lab may see the drain begin, on a loaded machine
BOUND = 3.0  # 3 heartbeat periods of 1 s
ELECTION_SLACK = 12.0  # an election, the agents reconnecting, and a loaded machine's passes


def _leader(rig: DeployRig) -> LabHost:
    def find() -> LabHost | None:
        for host in rig.cluster.hosts:
            info = rig.cli("cluster", "info", "--format", "json", via=host)
            if info.returncode == 0 and json.loads(info.stdout).get("raft_state") == "leader":
                return host
        return None

    return wait_for(find, timeout=30, interval=0.3, message="a leader")


def _process(rig: DeployRig, host: LabHost) -> int:
    """The PID of the host's Warren process: the founder's manager, or an agent (with the
    manager it runs once promoted)."""
    return rig.lab.pids[0] if host is rig.cluster.hosts[0] else rig.cluster.agents[host.name].pid


def test_a_new_leader_stops_the_task_the_old_one_left_draining(three_node_rig: DeployRig) -> None:
    rig = three_node_rig
    began = time.monotonic()
    hosts = rig.cluster.hosts
    ids = {host.name: rig.cluster.node_of(host)["id"] for host in hosts}
    for host in hosts[1:]:
        rig.ok("node", "promote", ids[host.name])

    def voters() -> bool:
        info = rig.cli("cluster", "info", "--format", "json")
        managers = json.loads(info.stdout)["managers"] if info.returncode == 0 else []
        return len(managers) == 3 and all(m["voter"] and not m.get("error") for m in managers)

    wait_for(voters, timeout=60, interval=0.5, message="three voting managers")
    leader = _leader(rig)
    runs_tasks, survivor = [h for h in hosts if h is not leader]
    rig.create_web(
        "web", "v1", 2, "--constraint", f"node.id=={ids[runs_tasks.name]}", "--stop-drain", f"{STOP_DRAIN:g}s"
    )
    rig.wait_serving(web_page("v1"), "web", 2)
    served = time.monotonic()

    def tasks() -> list[dict]:
        listed = rig.cli("service", "ps", "web", "--all", "--format", "json", via=survivor)
        found = json.loads(listed.stdout) if listed.returncode == 0 else []
        rig.task_ids.update(t["id"] for t in found)
        return found

    rig.ok("service", "update", "web", "--image", rig.image("v2"), "--update-monitor", "1s", "--detach")
    draining = wait_for(
        lambda: [t for t in tasks() if t["message"].startswith("draining")],
        timeout=120,
        interval=0.1,
        message="an old task draining",
    )[0]
    seen_draining = time.monotonic()
    os.kill(_process(rig, leader), signal.SIGKILL)
    print(f"killed the leader on {leader.name} while {draining['id'][:12]} drained: {draining['message']}")

    def stopped() -> dict | None:
        now = next((t for t in tasks() if t["id"] == draining["id"]), None)
        return now if now is not None and now["desired_state"] == "shutdown" else None

    stop = wait_for(stopped, timeout=STOP_DRAIN + BOUND + ELECTION_SLACK + 30, interval=0.2, message="its stop")
    waited = time.monotonic() - seen_draining
    new_leader = _leader(rig)
    print(f"new leader {new_leader.name}; the stop went out {waited:.1f}s after the drain was seen: {stop['message']}")
    assert new_leader is not leader
    assert waited >= STOP_DRAIN - POLL_SLACK, waited  # the drain period held across the failover
    assert waited <= STOP_DRAIN + BOUND + ELECTION_SLACK, waited

    def completed() -> bool:
        inspected = rig.cli("service", "inspect", "web", "--format", "json", via=survivor)
        if inspected.returncode != 0:
            return False
        service = json.loads(inspected.stdout)
        running = [t for t in tasks() if (t["state"], t["desired_state"]) == ("running", "running")]
        return service["update_status"]["state"] == "completed" and sorted(t["spec_version"] for t in running) == [
            "2",
            "2",
        ]

    wait_for(completed, timeout=120, interval=0.5, message="the update to complete under the new leader")
    print(
        f"phases: promoted and served v1 by {served - began:.1f}s, the kill at {seen_draining - began:.1f}s, "
        f"completed at {time.monotonic() - began:.1f}s"
    )
