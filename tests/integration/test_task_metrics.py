"""Per-task metrics on a real agent's /metrics and Prometheus service discovery (ADR 60), with
real processes: one shared rig (a manager and an exec-runtime agent) runs a task that burns CPU
and one that holds memory; the figures move, `promtool check metrics` accepts the text, and an
ended task's series go. A real Prometheus given deploy/prometheus/prometheus.yml, pointed at the
manager's SD URL, finds and scrapes both. The network counters are read from a network
namespace this test makes and sends traffic into."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from bench.promserver import PrometheusServer
from tests.fixtures.containerd import ContainerdDaemon
from tests.fixtures.exec_cluster import remove_exec_leftovers
from tests.fixtures.ports import free_port
from tests.fixtures.registry import LocalRegistry
from tests.integration.harness import REPO, Manager
from tests.integration.test_agent_exec import WORKER_ID, Processes, issue_worker
from tests.waiting import wait_for
from warren import pki, tls
from warren.agent import settings as agent_settings
from warren.agent.runtime import ContainerSpec, ContainerState
from warren.agent.taskmetrics import HeldTask, TaskCollector, TaskRows
from warren.agent.taskstats import TaskStatsReader
from warren.runtime.exec.driver import ExecRuntime

pytestmark = pytest.mark.integration

# A shell variable of 20 MB ("y" lines: busybox's tr reads no "\\0", and a shell drops NULs).
HOLD = "x=$(yes | head -c 20000000); sleep 1000"
# 24 MiB in the container's own /dev/shm (a tmpfs charged to its memory cgroup): at once, where
# busybox's shell builds a 20 MB variable slowly on a loaded machine.
HOLD_SHM = "dd if=/dev/zero of=/dev/shm/fill bs=1M count=24; sleep 1000"
SERIES = re.compile(r"^(warren_task_\w+)\{([^}]*)\} (\S+)$", re.MULTILINE)


class Rig:
    def __init__(self, manager: Manager, metrics_port: int, procs: Processes, embedded_metrics_addr: str) -> None:
        self.manager = manager
        self.embedded_metrics_addr = embedded_metrics_addr  # the manager's own agent's /metrics
        self.metrics_addr = f"127.0.0.1:{metrics_port}"
        self.url = f"http://{self.metrics_addr}/metrics"
        self.procs = procs

    def scrape(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            return response.read().decode()

    def value(self, name: str, service: str) -> float | None:
        """The series' value for the service's (only) task, None while there is none."""
        for metric, labels, value in SERIES.findall(self.scrape()):
            if metric == name and f'service="{service}"' in labels:
                return float(value)
        return None

    def create(self, name: str, script: str, *flags: str) -> None:
        created = self.manager.cli(
            "service", "create", name, "--image", "exec", "--constraint", "node.role==worker", "--detach", *flags,
            "--", "sh", "-c", script, self.procs.marker.decode(),
        )  # fmt: skip
        assert created.returncode == 0, created.stderr


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("taskmetrics")
    (root / "manager").mkdir()
    (root / "agent").mkdir()
    embedded_metrics_addr = f"127.0.0.1:{free_port()}"
    manager = Manager(
        root / "manager",
        start_args=["--heartbeat-period", "1s"],
        agent_args=["--runtime", "exec", "--agent-metrics-addr", embedded_metrics_addr],
    )
    procs = Processes(f"warren-taskmetrics-{uuid.uuid4().hex[:8]}")
    port = free_port()
    agent: subprocess.Popen[bytes] | None = None
    try:
        manager.start()
        issue_worker(manager, root / "agent" / "data")
        with open(root / "agent" / "agent.log", "ab") as log:
            agent = subprocess.Popen(
                [
                    sys.executable, "-m", "warren.agent.daemon", "--data-dir", str(root / "agent" / "data"),
                    "--manager", manager.addr, "--runtime", "exec", "--hostname", "metrics-worker",
                    "--metrics-addr", f"127.0.0.1:{port}",
                ],
                stdout=log, stderr=subprocess.STDOUT, env=manager.env(), cwd=root / "agent",
            )  # fmt: skip
        rig = Rig(manager, port, procs, embedded_metrics_addr)
        wait_for(lambda: _serves(rig), message="the agent's /metrics")
        yield rig
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait(timeout=20)
        manager.stop()
        procs.kill_all()
        remove_exec_leftovers(root / "agent" / "data")
        print("---- agent log ----\n" + (root / "agent" / "agent.log").read_text(errors="replace")[-8000:])


def _serves(rig: Rig) -> bool:
    try:
        rig.scrape()
        return True
    except OSError:
        return False


def test_cpu_and_memory_of_exec_tasks_move_and_an_ended_tasks_series_go(rig: Rig) -> None:
    rig.create("burn", "while :; do :; done")
    rig.create("hold", HOLD)
    first = wait_for(
        lambda: rig.value("warren_task_cpu_seconds_total", "burn"), timeout=30, message="burn's CPU series"
    )
    wait_for(
        lambda: (rig.value("warren_task_cpu_seconds_total", "burn") or 0) > first + 0.3,
        timeout=30,
        message="burn's CPU counter to grow",
    )
    wait_for(
        lambda: (rig.value("warren_task_memory_usage_bytes", "hold") or 0) > 20_000_000,
        timeout=30,
        message="hold's memory above the 20 MB it holds",
    )
    text = rig.scrape()
    labels = dict(re.findall(r'(\w+)="([^"]*)"', SERIES.search(text).group(2)))  # type: ignore[union-attr]
    assert set(labels) == {"service", "slot", "task", "node"} and labels["slot"] == "1", labels
    assert rig.value("warren_task_memory_limit_bytes", "hold") == 0  # no --limit-memory
    assert rig.value("warren_task_restarts_total", "hold") == 0
    assert abs((rig.value("warren_task_start_time_seconds", "hold") or 0) - time.time()) < 600
    # Without an own network namespace (overlay off) no network series, rather than the node's.
    assert rig.value("warren_task_network_receive_bytes_total", "hold") is None
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr

    assert rig.manager.cli("service", "rm", "burn").returncode == 0
    wait_for(lambda: 'service="burn"' not in rig.scrape(), timeout=30, message="the removed task's series to go")
    assert rig.value("warren_task_memory_usage_bytes", "hold") is not None
    assert rig.manager.cli("service", "rm", "hold").returncode == 0


def test_health_and_restarts_of_a_slot(rig: Rig) -> None:
    rig.create("checked", "sleep 1000", "--health-cmd", "true", "--health-interval", "1s")
    rig.create("crashing", "sleep 1; exit 1", "--restart-delay", "0s")
    wait_for(lambda: rig.value("warren_task_healthy", "checked") == 1, timeout=30, message="the checked task healthy")

    def crashing_restarts() -> float:
        series = {
            metric: float(value)
            for metric, labels, value in SERIES.findall(rig.scrape())
            if 'service="crashing"' in labels
        }
        assert "warren_task_healthy" not in series  # no health check: no such series
        return series.get("warren_task_restarts_total", 0.0)

    # A failed task is replaced by a new one in slot 1 of this node: one restart of the slot.
    wait_for(lambda: crashing_restarts() >= 1, timeout=30, message="the crashing slot's restart counted")
    for name in ("checked", "crashing"):
        assert rig.manager.cli("service", "rm", name).returncode == 0


def _sd(manager: Manager) -> list[dict]:
    url = f"http://127.0.0.1:{manager.metrics_port}/v1/sd/prometheus"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"] == "application/json"
        return json.loads(response.read())


def test_prometheus_discovers_every_agent_and_manager_through_one_manager(rig: Rig) -> None:
    manager_addr = f"127.0.0.1:{rig.manager.metrics_port}"
    wanted = {
        (rig.metrics_addr, "agent", WORKER_ID),
        (rig.embedded_metrics_addr, "agent", rig.manager.node_id),  # cluster init --agent-metrics-addr
        (manager_addr, "manager", rig.manager.node_id),
    }

    def discovered() -> set[tuple[str, str, str]]:
        return {
            (g["targets"][0], g["labels"]["warren_component"], g["labels"]["warren_node_id"]) for g in _sd(rig.manager)
        }

    wait_for(lambda: discovered() >= wanted, message="the three targets in the SD answer")
    agent_group = next(g for g in _sd(rig.manager) if g["labels"]["warren_node_id"] == WORKER_ID)
    assert agent_group["labels"]["warren_hostname"] == "metrics-worker"
    assert agent_group["labels"]["warren_role"] == "worker"
    assert agent_group["labels"]["warren_availability"] == "active"

    example = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    sd_config = example["scrape_configs"][0]["http_sd_configs"][0]
    sd_config["url"] = sd_config["url"].replace("manager1.example:9323", manager_addr)
    sd_config["refresh_interval"] = "1s"
    example["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    check = subprocess.run(
        ["promtool", "check", "config", str(REPO / "deploy" / "prometheus" / "prometheus.yml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    prometheus = PrometheusServer({}, config=example)
    try:
        wait_for(
            lambda: (
                {(r["metric"]["instance"], r["metric"].get("warren_component")) for r in prometheus.query("up == 1")}
                >= {(rig.metrics_addr, "agent"), (rig.embedded_metrics_addr, "agent"), (manager_addr, "manager")}
            ),
            timeout=30,
            message="Prometheus to scrape the agent and the manager it discovered",
        )
    finally:
        prometheus.stop()


@pytest.fixture
def netns_process() -> Iterator[tuple[int, str]]:
    """A process in a network namespace of our own, reachable from the host over a veth pair."""
    suffix = uuid.uuid4().hex[:6]
    ns, host_if, addr = f"wtm-{suffix}", f"wtm{suffix}", "10.250.77.2"
    sleeper: subprocess.Popen[bytes] | None = None
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns],
            ["ip", "addr", "add", "10.250.77.1/30", "dev", host_if],
            ["ip", "link", "set", host_if, "up"],
            ["ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", "eth0"],
            ["ip", "-n", ns, "link", "set", "eth0", "up"],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
        ):
            subprocess.run(cmd, check=True)
        sleeper = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", "sleep", "300"])
        yield sleeper.pid, addr
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        subprocess.run(["ip", "link", "del", host_if], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_network_counters_come_from_the_tasks_own_namespace(netns_process: tuple[int, str]) -> None:
    pid, addr = netns_process
    reader = TaskStatsReader()
    wait_for(lambda: os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net"), message="nsenter")
    before = reader.read(pid)
    assert before is not None and before.network is not None
    ping = shutil.which("ping")
    assert ping is not None
    subprocess.run([ping, "-c", "5", "-i", "0.2", "-s", "1000", addr], check=True, capture_output=True, timeout=30)
    after = reader.read(pid)
    assert after is not None and after.network is not None
    assert after.network.rx_packets >= before.network.rx_packets + 5
    assert after.network.rx_bytes >= before.network.rx_bytes + 5 * 1000
    assert after.network.tx_packets >= before.network.tx_packets + 5  # the replies
    # The agent's own process shares the node's namespace: no network figures for it.
    own = reader.read(os.getpid())
    assert own is not None and own.network is None and own.cpu_seconds is None


def test_a_scrape_of_100_running_tasks_stays_cheap(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The collector in process over 100 real exec-runtime tasks, each in its own cgroups: the
    scrape reads ~10 small files per task and asks the runtime for each pid once."""
    runtime = ExecRuntime(tmp_path_factory.mktemp("scrape-state"), account=True)
    rows = TaskRows()
    held = []
    try:
        for i in range(100):
            rid = runtime.prepare(ContainerSpec(task_id=f"scrape{i:03}", image="exec", command=("sleep", "300")))
            runtime.start(rid)
            held.append(HeldTask(rid, "svc", "many", i + 1, "node1", rid, True, time.time(), 0, ""))
        rows.refresh(held)
        registry = CollectorRegistry()
        registry.register(TaskCollector(lambda: rows.rows, TaskStatsReader().read, lambda r: runtime.status(r).pid))
        generate_latest(registry)  # the first scrape looks the pids up
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            text = generate_latest(registry).decode()
            timings.append(time.perf_counter() - started)
        if text.count("warren_task_cpu_seconds_total{") != 100:
            pytest.skip("this host does not give the exec runtime cgroups")
        assert text.count("warren_task_memory_usage_bytes{") == 100
        print(f"scrape of 100 tasks: best {min(timings) * 1000:.1f} ms, worst {max(timings) * 1000:.1f} ms")
        assert min(timings) < 1.0, timings  # ~20-40 ms here; bounded even on a loaded machine
    finally:
        for st in runtime.list():
            with contextlib.suppress(Exception):
                runtime.remove(st.runtime_id)


def test_cpu_and_memory_of_containerd_tasks_move(
    rig: Rig, containerd: ContainerdDaemon, registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A second worker of the rig runs containerd (its tasks' cgroupsPath): busybox burning CPU,
    and busybox holding 24 MiB under a 128 MiB limit, seen on that agent's /metrics."""
    root = tmp_path_factory.mktemp("ctr-agent")
    node_id = f"ctrworker{uuid.uuid4().hex[:6]}"
    ca = rig.manager.authority()
    cert, key = ca.issue_keypair(node_id, pki.ROLE_WORKER)
    tls.save_credentials(root / "data" / "certs", ca.cert_pem, cert, key)
    (root / "data" / "node.json").write_text(json.dumps({"node_id": node_id, "managers": [rig.manager.addr]}))
    agent_settings.save(
        root / "data",
        agent_settings.AgentSettings(
            runtime="containerd",
            containerd_socket=containerd.socket,
            cgroup_parent=containerd.cgroup_parent,
            wireguard="off",
        ),
    )
    port = free_port()
    image = f"{registry.host}/busybox:latest"
    with open(root / "agent.log", "ab") as log:
        agent = subprocess.Popen(
            [
                sys.executable, "-m", "warren.agent.daemon", "--data-dir", str(root / "data"),
                "--manager", rig.manager.addr, "--runtime", "containerd", "--containerd-socket", containerd.socket,
                "--cgroup-parent", containerd.cgroup_parent, "--hostname", "ctr-worker",
                "--metrics-addr", f"127.0.0.1:{port}",
            ],
            stdout=log, stderr=subprocess.STDOUT, env=rig.manager.env(), cwd=root,
        )  # fmt: skip
    ctr = Rig(rig.manager, port, rig.procs, "")
    try:
        for name, script, *limits in (
            ("ctrburn", "while :; do :; done"),
            ("ctrhold", HOLD_SHM, "--limit-memory", "128M"),
        ):
            created = rig.manager.cli(
                "service", "create", name, "--image", image, "--constraint", f"node.id=={node_id}", "--detach",
                *limits, "--", "sh", "-c", script,
            )  # fmt: skip
            assert created.returncode == 0, created.stderr
        start = wait_for(
            lambda: _serves(ctr) and ctr.value("warren_task_cpu_seconds_total", "ctrburn"),
            timeout=60,
            message="ctrburn's CPU series",
        )
        wait_for(
            lambda: (ctr.value("warren_task_cpu_seconds_total", "ctrburn") or 0) > start + 0.3,
            timeout=30,
            message="ctrburn's CPU to grow",
        )
        wait_for(
            lambda: (ctr.value("warren_task_memory_usage_bytes", "ctrhold") or 0) > 24 << 20,
            timeout=30,
            message="ctrhold's memory above the 24 MiB it holds",
        )
        assert ctr.value("warren_task_memory_limit_bytes", "ctrhold") == 128 << 20
        assert ctr.value("warren_task_memory_limit_bytes", "ctrburn") == 0
        assert ctr.value("warren_task_blkio_read_bytes_total", "ctrhold") is not None  # its own blkio cgroup
        for name in ("ctrburn", "ctrhold"):
            assert rig.manager.cli("service", "rm", name).returncode == 0
        wait_for(
            lambda: "warren_task_cpu_seconds_total{" not in ctr.scrape(), message="the removed tasks' series to go"
        )
    finally:
        agent.kill()
        agent.wait(timeout=20)
        rig.manager.cli("node", "rm", "--force", node_id)  # the rig's other tests see their nodes only
        print("---- containerd agent log ----\n" + (root / "agent.log").read_text(errors="replace")[-6000:])


def test_two_exec_runtimes_never_share_a_tasks_cgroups(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every exec task has cgroups now: two agents on one host (or two tests) running the same
    task id must not share them, or removing one's task would kill the other's."""
    first = ExecRuntime(tmp_path_factory.mktemp("exec-a"), account=True)
    second = ExecRuntime(tmp_path_factory.mktemp("exec-b"), account=True)
    spec = ContainerSpec(task_id=f"same{uuid.uuid4().hex[:6]}", image="exec", command=("sleep", "300"))
    try:
        for runtime in (first, second):
            runtime.start(runtime.prepare(spec))
        dirs = set(first._records[spec.task_id].cgroups), set(second._records[spec.task_id].cgroups)
        if not dirs[0]:
            pytest.skip("this host does not give the exec runtime cgroups")
        assert not dirs[0] & dirs[1]
        survivor = second.status(spec.task_id).pid
        first.remove(spec.task_id)
        assert second.status(spec.task_id).state is ContainerState.RUNNING
        assert Path(f"/proc/{survivor}").exists()
    finally:
        for runtime in (first, second):
            with contextlib.suppress(Exception):
                runtime.remove(spec.task_id)
