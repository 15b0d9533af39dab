"""`warren task exec` into a task on another node (ADR 59): a 3-host cluster, each node in its
own network namespace (tests/fixtures/overlay_cluster.py, exec runtime). The CLI talks to the
manager in h1; the task runs on h3; the command runs in the task's network namespace there, its
stdin and output relayed by the leader over h3's agent's own connection.

Every process goes by PID (the lab), every task namespace by the ids the test saw."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.overlay_cluster import OverlayCluster
from tests.fixtures.overlay_lab import OverlayLab, remove_task_namespaces
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="wireguard-go is not installed (make deps)"),
]


def test_exec_into_a_task_on_another_node(tmp_path: Path) -> None:
    cluster = OverlayCluster(OverlayLab(), tmp_path)
    task_ids: set[str] = set()
    try:
        cluster.start(3)
        h3 = cluster.hosts[2]
        far = cluster.node_of(h3)["id"]
        created = cluster.cli(
            *("service", "create", "far", "--image", "none", "--no-resolve-image", "--detach"),
            *("--constraint", f"node.id=={far}", "--", "sh", "-c", "exec sleep 3600"),
        )
        assert created.returncode == 0, created.stderr

        def running() -> dict | None:
            listed = cluster.cli("service", "ps", "far", "--format", "json")
            tasks = json.loads(listed.stdout) if listed.returncode == 0 else []
            task_ids.update(t["id"] for t in tasks)
            return next((t for t in tasks if t["state"] == "running"), None)

        wait_for(lambda: running() is not None, timeout=60, message="the task running on h3")
        task = running()
        assert task is not None and task["node_id"] == far

        # The command runs in the task's own network namespace, on h3.
        record = json.loads((cluster.data_dir(h3) / "exec" / task["id"] / "record.json").read_text())
        task_netns = os.readlink(f"/proc/{record['pid']}/ns/net")
        ran = cluster.cli("task", "exec", task["id"], "--", "sh", "-c", "readlink /proc/self/ns/net; exit 4")
        assert ran.returncode == 4, ran.stderr
        assert ran.stdout.strip() == task_netns
        assert task_netns != os.readlink("/proc/self/ns/net")

        # stdin through the leader to the other node, and back.
        argv = ["nsenter", f"--net=/run/netns/{cluster.hosts[0].netns}", sys.executable, "-m", "warren.cli.main"]
        piped = subprocess.run(
            [*argv, "task", "exec", "-i", task["id"], "--", "tr", "a-z", "A-Z"],
            input="over the overlay\n", capture_output=True, text=True, env=cluster.env, timeout=60,
        )  # fmt: skip
        assert piped.returncode == 0, piped.stderr
        assert piped.stdout == "OVER THE OVERLAY\n"
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        with contextlib.suppress(Exception):
            running()
        cluster.lab.destroy()
        remove_task_namespaces({*task_ids, *cluster.recorded_task_ids()})
