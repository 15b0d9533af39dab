"""End to end with the real containerd runtime, driven by the real CLI (issue #3).

Each test gets a manager (`cluster init --manager-only`, 1 s heartbeats, so its own node takes
no tasks) and one worker joined with `cluster join --runtime containerd` on the module's private
containerd (tests/fixtures), pulling the busybox image that the fixtures built and pushed to a
registry on 127.0.0.1. Containers, tasks and snapshots are counted through containerd's API, not
through Warren's view of them; tasks run on the host network, so the httpd answers on loopback.

Cleanup, even on failure: the agent and manager processes are stopped by PID, then every task
and container in the namespace is killed and deleted through containerd's API; the fixtures
stop containerd, its shims and the registry at module end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.fixtures.containerd import ContainerdDaemon
from tests.fixtures.images import INDEX_HTML, BusyboxImage
from tests.fixtures.registry import LocalRegistry
from tests.integration.harness import Joiner, Manager, free_port
from tests.waiting import holds, wait_for
from warren.agent.runtime import SERVICE_LABEL
from warren.runtime.containerd import api
from warren.runtime.containerd.client import Client

pytestmark = pytest.mark.integration

PAGE = INDEX_HTML.decode()
ENDED = ("complete", "shutdown", "failed", "rejected", "orphaned")


class ContainerdView:
    """What containerd itself says runs in the namespace: the ground truth the tests check."""

    def __init__(self, daemon: ContainerdDaemon) -> None:
        self.daemon = daemon
        self.client = Client(daemon.socket, daemon.namespace, timeout=10)

    def containers(self, service: str | None = None) -> set[str]:
        """Container ids (= task ids), of one service or all."""
        listed = self.client.containers.List(
            api.containers_pb2.ListContainersRequest(), metadata=self.client.md(), timeout=10
        ).containers
        return {c.id for c in listed if service is None or c.labels.get(SERVICE_LABEL) == service}

    def processes(self) -> dict[str, tuple[int, int]]:
        """container id -> (host pid, status) of every containerd task."""
        listed = self.client.tasks.List(api.tasks_pb2.ListTasksRequest(), metadata=self.client.md(), timeout=10).tasks
        return {t.container_id or t.id: (t.pid, t.status) for t in listed}

    def running(self, service: str) -> dict[str, int]:
        """container id -> host pid of the service's running tasks."""
        ids = self.containers(service)
        return {
            cid: pid for cid, (pid, status) in self.processes().items() if cid in ids and status == api.task_pb2.RUNNING
        }

    def running_all(self) -> set[str]:
        """Ids of every running container in the namespace."""
        return {cid for cid, (_, status) in self.processes().items() if status == api.task_pb2.RUNNING}

    def snapshot_exists(self, key: str) -> bool:
        request = api.snapshots_pb2.StatSnapshotRequest(snapshotter="overlayfs", key=key)
        try:
            self.client.snapshots.Stat(request, metadata=self.client.md(), timeout=10)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    def active_snapshots(self) -> list[str]:
        """Snapshot keys that are not committed image layers (`ctr snapshots ls`: our proto
        subset has no Snapshots.List)."""
        out = subprocess.run(
            self.daemon.ctr("snapshots", "ls"), capture_output=True, text=True, check=True, timeout=30
        ).stdout
        rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
        return [row[0] for row in rows if row[-1] != "Committed"]

    def close(self) -> None:
        self.client.close()


@dataclass
class Cluster:
    manager: Manager
    worker: Joiner
    view: ContainerdView
    registry: LocalRegistry

    @property
    def image(self) -> str:
        return f"{self.registry.host}/busybox:latest"

    @property
    def worker_id(self) -> str:
        return json.loads((self.worker.data_dir / "node.json").read_text())["node_id"]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.manager.cli(*args, timeout=90)

    def ok(self, *args: str) -> str:
        result = self.cli(*args)
        assert result.returncode == 0, f"warren {' '.join(args)}: {result.stderr}"
        return result.stdout

    def tasks(self, service: str, history: bool = False) -> list[dict]:
        result = self.cli("service", "ps", service, "--format", "json", *(["--all"] if history else []))
        return json.loads(result.stdout) if result.returncode == 0 else []

    def running_tasks(self, service: str) -> set[str]:
        return {t["id"] for t in self.tasks(service) if (t["state"], t["desired_state"]) == ("running", "running")}

    def converged(self, service: str, n: int) -> bool:
        """n tasks running for the manager, exactly their n containers running in containerd, and
        no other container but those of tasks that just ended (the agent removes them at once)."""
        tasks = self.tasks(service, history=True)
        running = {t["id"] for t in tasks if (t["state"], t["desired_state"]) == ("running", "running")}
        ended = {t["id"] for t in tasks if t["state"] in ENDED}
        return (
            len(running) == n
            and set(self.view.running(service)) == running
            and self.view.containers(service) <= running | ended
        )

    def stable(self, service: str, n: int, seconds: float = 2.0) -> dict[str, int]:
        """Converged, and it stays so: no duplicate appears and nothing is replaced or restarted."""
        wait_for(lambda: self.converged(service, n), timeout=30, message=f"{n} running {service} tasks")
        running = self.view.running(service)
        holds(lambda: self.view.running(service) == running, seconds, interval=0.2, message=f"{service}'s containers")
        assert self.converged(service, n)
        return running


def http_get(port: int) -> str | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/", timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return None


def _node_ready(c: Cluster) -> bool:
    if not (c.worker.data_dir / "node.json").exists():
        return False
    nodes = {n["id"]: n for n in c.manager.cli_json("node", "ls")}  # type: ignore[union-attr]
    return nodes.get(c.worker_id, {}).get("status") == "ready"


@contextlib.contextmanager
def containerd_cluster(
    root: Path, containerd: ContainerdDaemon, registry: LocalRegistry, agent_args: tuple[str, ...] = ()
) -> Iterator[Cluster]:
    """A manager (no tasks on its node) and one agent on `containerd`, pulling from `registry`
    (`agent_args`: more `cluster join` flags); everything stopped and the containers removed on
    exit, the logs printed for a failure."""
    (root / "manager").mkdir()
    (root / "worker").mkdir()
    manager = Manager(root / "manager", start_args=["--heartbeat-period", "1s"], schedule_on_manager=False)
    worker = Joiner(root / "worker", manager)
    view = ContainerdView(containerd)
    c = Cluster(manager, worker, view, registry)
    try:
        manager.start()
        worker.join(
            manager.join_token(),
            *("--runtime", "containerd", "--containerd-socket", containerd.socket),
            *("--cgroup-parent", containerd.cgroup_parent, "--insecure-registry", registry.host),
            *agent_args,
        )
        wait_for(lambda: _node_ready(c), timeout=30, message=f"the worker to register\n{worker.log()}")
        yield c
    finally:
        worker.stop_all()
        manager.stop()
        with contextlib.suppress(Exception):
            containerd.remove_all()
        view.close()
        # Shown by pytest only when the test failed.
        print("---- manager log ----\n" + manager.log()[-6000:])
        print("---- agent logs ----\n" + worker.all_logs()[-20000:])


@pytest.fixture
def cluster(tmp_path: Path, containerd: ContainerdDaemon, registry: LocalRegistry) -> Iterator[Cluster]:
    with containerd_cluster(tmp_path, containerd, registry) as c:
        yield c


def _has_logs_command(c: Cluster) -> bool:
    return c.cli("service", "logs", "--help").returncode == 0


@pytest.mark.serial  # an agent restart must beat 3 heartbeats of 1 s: alone, after the workers (ADR 41)
def test_containerd_service_runs_scales_heals_and_survives_agent_and_manager_outages(cluster: Cluster) -> None:
    c = cluster
    port = free_port()
    httpd = f"echo serving on {port}; exec httpd -f -p 127.0.0.1:{port} -h /var/www"
    # `service create` waits until the task runs (no --detach).
    c.ok("service", "create", "web", "--image", c.image, "--restart-delay", "1s", "--stop-grace-period", "1s",
         "--", "sh", "-c", httpd)  # fmt: skip
    wait_for(lambda: http_get(port) == PAGE, message="the service to answer on the host")
    c.stable("web", 1, seconds=0)
    [web_task] = c.tasks("web")
    assert web_task["node_id"] == c.worker_id
    log_file = c.worker.data_dir / "logs" / f"{web_task['id']}.log"
    wait_for(lambda: log_file.exists() and f"serving on {port}" in log_file.read_text(), message="output in the log")
    if _has_logs_command(c):
        wait_for(lambda: f"serving on {port}" in c.cli("service", "logs", "web").stdout, message="service logs")

    # Scale up and down: a service that binds no port (host network).
    c.ok("service", "create", "sleeper", "--image", c.image, "--stop-grace-period", "1s", "--", "sleep", "1000")
    c.ok("service", "scale", "sleeper=3")
    c.stable("sleeper", 3, seconds=1.0)
    c.ok("service", "scale", "sleeper=1")
    c.stable("sleeper", 1, seconds=1.0)

    # A killed container process is reported, and the task is replaced.
    [(victim, pid)] = c.view.running("web").items()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: c.converged("web", 1) and victim not in c.running_tasks("web"), message="a replacement task")
    history = {t["id"]: t for t in c.tasks("web", history=True)}
    assert (history[victim]["state"], history[victim]["error"]) == ("failed", "task exited with code 137")
    table = c.ok("service", "ps", "web", "--all")
    assert "failed" in table and "task exited with code 137" in table and "running" in table
    # The failed task's container and snapshot are gone from containerd; its record and its
    # output stay.
    wait_for(
        lambda: victim not in c.view.containers() and not c.view.snapshot_exists(victim),
        message="the failed task's container and snapshot removed",
    )
    assert history[victim]["state"] == "failed" and victim in {t["id"] for t in c.tasks("web", history=True)}
    assert f"serving on {port}" in (c.worker.data_dir / "logs" / f"{victim}.log").read_text()
    wait_for(lambda: http_get(port) == PAGE, message="the replacement to answer")
    web = c.stable("web", 1, seconds=1.0)
    sleeper = c.stable("sleeper", 1, seconds=0)

    # kill -9 the agent: the containers keep running; the restarted agent re-adopts them.
    c.worker.kill(signal.SIGKILL)
    holds(
        lambda: (c.view.running("web"), c.view.running("sleeper")) == (web, sleeper) and http_get(port) == PAGE,
        1.0,
        interval=0.2,
        message="the orphaned containers running and serving",
    )
    c.worker.start("worker", "start", "--data-dir", str(c.worker.data_dir))
    wait_for(lambda: c.worker.log().count("re-adopted running container") == 2, message="re-adoption of both tasks")
    assert c.stable("web", 1) == web, "re-adopted, not restarted"
    assert c.stable("sleeper", 1, seconds=0) == sleeper
    assert len(c.view.running_all()) == 2

    # The manager is away for longer than 3 heartbeat periods: the worker keeps serving, and a
    # task that dies meanwhile is restarted locally (same task id, a new container).
    c.manager.stop()
    holds(lambda: http_get(port) == PAGE, 4.0, interval=0.5, message="the worker serving without a manager")
    assert (c.view.running("web"), c.view.running("sleeper")) == (web, sleeper)
    [(task_id, pid)] = web.items()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: c.view.running("web").get(task_id, pid) != pid, message="a local restart")
    wait_for(lambda: http_get(port) == PAGE, message="the restarted task to answer")
    assert "restarting it locally" in c.worker.log()
    web = c.view.running("web")
    assert set(web) == {task_id}

    # The manager returns: reconciled, with the same tasks and no duplicate container. The agent
    # reconnects within the node timeout, so nothing is replaced (stable for longer than that).
    c.manager.start()
    assert c.stable("web", 1, seconds=4.0) == web
    assert c.stable("sleeper", 1, seconds=0) == sleeper
    assert len(c.view.running_all()) == 2
    assert http_get(port) == PAGE

    # Removing the services leaves no container, task or snapshot behind.
    ever = {t["id"] for name in ("web", "sleeper") for t in c.tasks(name, history=True)}
    c.ok("service", "rm", "web", "sleeper")
    wait_for(lambda: not c.view.containers() and not c.view.processes(), timeout=30, message="containers removed")
    assert not [t for t in ever if c.view.snapshot_exists(t)]
    assert c.view.active_snapshots() == []
    assert http_get(port) is None


def test_bad_input_gives_clear_task_errors_and_the_cluster_stays_healthy(cluster: Cluster) -> None:
    c = cluster
    c.ok("service", "create", "good", "--image", c.image, "--stop-grace-period", "1s", "--", "sleep", "1000")
    good = c.stable("good", 1, seconds=0)
    # The agent's --cgroup-parent: the container's cgroup is under the fixture's own parent.
    (cid, pid), parent = next(iter(good.items())), c.view.daemon.cgroup_parent
    memory = next(line.split(":", 2)[2] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                  if line.split(":", 2)[1] in ("memory", ""))  # fmt: skip
    assert memory.startswith(f"{parent}/{cid}"), memory

    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    c.ok("service", "create", "nope", "--image", f"{c.registry.host}/nope:latest", "--detach")
    c.ok("service", "create", "unreachable", "--image", f"{closed}/busybox:latest", "--detach")
    c.ok("service", "create", "sick", "--image", c.image, "--stop-grace-period", "1s", "--health-cmd", "nosuchcmd",
         "--health-interval", "1s", "--health-retries", "2", "--detach", "--", "sleep", "1000")  # fmt: skip

    def ended(service: str, state: str) -> dict | None:
        return next((t for t in c.tasks(service, history=True) if t["state"] == state), None)

    # While the agent retries the pull, `service ps` says why the task is not running yet.
    retrying = wait_for(
        lambda: next((t for t in c.tasks("unreachable") if "retrying" in t.get("message", "")), None),
        timeout=10,
        message="the retried pull to show in service ps",
    )
    assert retrying["state"] == "preparing"
    assert retrying["message"].startswith(
        f"preparing failed: registry {closed} unreachable: connection refused (retrying, attempt "
    ), retrying
    assert "(retrying, attempt " in c.ok("service", "ps", "unreachable")
    rejected = wait_for(lambda: ended("nope", "rejected"), message="the unknown image to be rejected")
    assert rejected["error"] == f"image {c.registry.host}/nope:latest not found in registry"
    unhealthy = wait_for(lambda: ended("sick", "failed"), timeout=30, message="the sick task to fail")
    assert unhealthy["error"].startswith("unhealthy: ") and "nosuchcmd" in unhealthy["error"], unhealthy
    assert unhealthy["health"] == "unhealthy"
    # A registry that refuses connections is retried (it may come back), then fails the task.
    failed = wait_for(lambda: ended("unreachable", "failed"), timeout=40, message="the unreachable registry")
    assert failed["error"] == f"preparing failed: registry {closed} unreachable: connection refused"

    for service, text in (("nope", "not found in registry"), ("sick", "unhealthy"), ("unreachable", "unreachable")):
        assert text in c.ok("service", "ps", service, "--all"), service

    # The cluster is healthy: the good service kept its container, and the managers answer.
    assert c.stable("good", 1, seconds=0) == good
    assert _node_ready(c)
    info = json.loads(c.ok("cluster", "info", "--format", "json"))
    assert info["raft_state"] == "leader"
    c.ok("service", "rm", "good", "nope", "unreachable", "sick")
    wait_for(lambda: not c.view.containers(), timeout=30, message="containers removed")


def test_image_import_runs_a_service_without_any_registry(
    cluster: Cluster, containerd: ContainerdDaemon, busybox_image: BusyboxImage, tmp_path: Path
) -> None:
    c = cluster
    # Named after a registry nobody listens on: running it proves the image was never pulled.
    name = f"127.0.0.1:{free_port()}/airgap:1"

    def image_import(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "warren.cli.main", "image", "import", *args]
        return subprocess.run(argv, capture_output=True, text=True, env=c.manager.env(), timeout=60)

    imported = image_import(str(busybox_image.archive), "--name", name, "--containerd-socket", containerd.socket)
    assert (imported.returncode, imported.stdout, imported.stderr) == (0, f"{name}\n", "")

    c.ok("service", "create", "airgap", "--image", name, "--stop-grace-period", "1s", "--", "sleep", "1000")
    c.stable("airgap", 1, seconds=0)

    # Clear errors, with the documented exit codes.
    plain = tmp_path / "plain.tar"
    subprocess.run(["tar", "-cf", str(plain), "-C", str(tmp_path), "."], check=True)
    cases = [
        ((str(tmp_path / "missing.tar"),), 2, "no such file"),
        ((str(plain),), 2, "is not an OCI archive: it has no oci-layout"),
        ((str(busybox_image.archive),), 2, "pass a full name with --name REF"),
        ((str(busybox_image.archive), "--name", "x/y:1", "--containerd-socket", str(tmp_path / "no.sock")), 5,
         "no containerd socket at"),
    ]  # fmt: skip
    for args, code, text in cases:
        sock = () if "--containerd-socket" in args else ("--containerd-socket", containerd.socket)
        result = image_import(*args, *sock)
        assert (result.returncode, result.stderr.count("\n")) == (code, 1), result.stderr
        assert text in result.stderr and "Traceback" not in result.stderr
    c.ok("service", "rm", "airgap")
    wait_for(lambda: not c.view.containers(), timeout=30, message="containers removed")
