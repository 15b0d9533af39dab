"""Time from a task turning healthy to receiving VIP traffic (issue #5).

Two "hosts" (network namespaces on a bridge, the lab of tests/fixtures/overlay_lab.py): a manager
with its own agent in h1, an agent in h2, both on the overlay with wireguard-go (exec runtime).
A client in h2 connects to the service's VIP every few milliseconds; each task serves its own
address. Each round scales the service up by one and measures, for the new task, the time from
the health report the manager recorded (the task's `updated_at` when it turned healthy) to the
first answer the client gets from it. Both hosts share the machine's clock.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.common import figure, latency_summary

ROUNDS = 10
GOAL_S = 1.0  # the issue: VIP backends follow task changes "within a second"


def run() -> dict[str, object]:
    from tests.fixtures.overlay_cluster import OverlayCluster
    from tests.fixtures.overlay_lab import LabHost, OverlayLab, remove_task_namespaces
    from tests.waiting import wait_for

    for tool in ("wireguard-go", "nft", "ip", "nsenter", "busybox"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (make deps)")
    tmp = Path(tempfile.mkdtemp(prefix="warren-bench-vip-"))
    lab = OverlayLab()
    cluster = OverlayCluster(lab, tmp)  # a manager with its own agent in h1, an agent in h2

    def cli(host: LabHost, *args: str) -> subprocess.CompletedProcess[str]:
        return cluster.cli(*args, host=host)

    latencies: list[float] = []
    task_ids: list[str] = []
    hosts: list[LabHost] = []
    try:
        cluster.start(2)
        hosts = cluster.hosts
        h1, h2 = hosts
        www = tmp / "www"
        www.mkdir()
        serve = (
            'd="$WWW/$$" && mkdir -p "$d" && busybox ip -o -4 addr show eth0 > "$d/index.html"'
            ' && exec busybox httpd -f -p 8080 -h "$d"'
        )
        created = cli(
            h1,
            *("service", "create", "web", "--image", "busybox", "--replicas", "1", "--detach"),
            *("--env", f"WWW={www}", "--health-http", "http://127.0.0.1:8080/index.html"),
            *("--health-interval", "200ms", "--", "/bin/sh", "-c", serve),
        )
        if created.returncode != 0:
            raise RuntimeError(created.stderr)
        vip = json.loads(cli(h1, "service", "inspect", "web", "--format", "json").stdout)["vip"]

        answers: dict[str, float] = {}  # task address -> first time the client got an answer from it
        stop = threading.Event()

        def client() -> None:
            url = f"http://{vip}:8080/index.html"
            while not stop.is_set():
                out = h2.run(["busybox", "wget", "-q", "-O", "-", url], timeout=5).stdout
                now = time.time()
                for word in out.split():
                    address = word.split("/")[0]
                    if address.count(".") == 3:
                        answers.setdefault(address, now)
                        break

        def healthy() -> dict[str, dict]:
            listed = cli(h1, "service", "ps", "web", "--format", "json")
            tasks = json.loads(listed.stdout) if listed.returncode == 0 else []
            return {t["id"]: t for t in tasks if t["health"] == "healthy" and t["overlay_address"]}

        wait_for(lambda: len(healthy()) == 1, timeout=60, message="the first task")
        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        for replicas in range(2, ROUNDS + 2):
            before = set(healthy())
            assert cli(h1, "service", "scale", f"web={replicas}", "--detach").returncode == 0
            new = wait_for(
                lambda b=before: [t for i, t in healthy().items() if i not in b], timeout=60, message="a task"
            )
            task = new[0]
            task_ids.append(task["id"])
            address = task["overlay_address"]
            wait_for(lambda a=address: a in answers, timeout=30, message=f"VIP traffic to {address}")
            latencies.append(max(0.0, answers[address] - task["updated_at"]))
        stop.set()
        thread.join(timeout=10)
        with contextlib.suppress(Exception):
            task_ids.extend(healthy())
    finally:
        with contextlib.suppress(Exception):
            listed = cli(hosts[0], "service", "ps", "web", "--all", "--format", "json")
            task_ids.extend(t["id"] for t in json.loads(listed.stdout))
        lab.destroy()
        remove_task_namespaces(task_ids)  # this benchmark's own tasks
        shutil.rmtree(tmp, ignore_errors=True)
    summary = latency_summary(latencies)
    return {
        "benchmark": "vip_latency",
        "rounds": ROUNDS,
        "healthy_to_vip_traffic": summary,
        "figures": [
            figure("task healthy -> first VIP answer, p50", summary["p50_ms"], "ms"),
            figure("task healthy -> first VIP answer, max", summary["max_ms"], "ms", GOAL_S * 1000),
        ],
    }
